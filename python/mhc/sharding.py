"""DTensor sharding strategies for the ops (DESIGN.md §13): every variant is token-local, so the ops
run on each rank's shard of the tokens (DTensor `Shard(0)` of the flattened [N, ...] activations)
with replicated parameters, without communication; the parameters' gradients come out `Partial`
(each rank's sum over its own tokens), which DTensor reduces when they are redistributed or read
(`.full_tensor()`). Fully replicated inputs are accepted too.

    import mhc, mhc.sharding                      # registers the strategies
    x = distribute_tensor(x, mesh, [Shard(0)])   # [B, T, n, C], sharded on B
    hc = distribute_module(mhc.HyperConnection("mhc", 4, C), mesh)
    out = hc(x, f)                                # Shard(0), no collective
    out.backward(dout)                            # dx Shard(0), parameters' grads Partial

The ops' autograd leaves the gradient of an output nothing used (H_pre, which post does not read)
undefined rather than plain zeros, which DTensor would refuse beside DTensors.

Importing this module registers them. `import mhc` imports it when torch.distributed.tensor is
loaded by then: with torch 2.13 always, as torch._dynamo (which mhc.modules' torch.compiler
decorator loads) imports it; where it is not, loading DTensor only for this would add a second or
more to every `import mhc`, and `import mhc.sharding` is the way. The strategies
cover the ops the Python modules call (pre_joint, boundary, post), the bare pre, and the halves the
ops' autograd calls (pre_fwd, pre_bwd, post_bwd, boundary_fwd, boundary_bwd): DTensor sits below
autograd, so it sees those, not the differentiable op.

Sharding C instead would need an all-reduce inside the RMS and the projection: not offered, so
DTensor redistributes such an input to one of the strategies here.
"""
import torch
from torch.distributed.tensor import Partial, Replicate, Shard
from torch.distributed.tensor.experimental import register_sharding

# Each op's tensor arguments by role: "token" (a tensor whose dim 0 is the token), "param"
# (replicated everywhere), None for the non-tensors (variant, sinkhorn_iters); and its outputs:
# "token", or "grad" (a parameter's gradient: Partial under token sharding).
_ROLES = {
    "pre": (("token", "param", "param", "param", None, None), ("token",) * 4),
    "pre_joint": (("token", "param", "param", "param", None, None), ("token",) * 5),
    "post": (("token",) * 4, ("token",)),
    "pre_fwd": (("token", "param", "param", "param", None, None), ("token",) * 6),
    "pre_bwd": (("token",) * 5 + ("param",) * 3 + ("token", "token", None, None, "token"),
                ("token", "grad", "grad", "grad")),
    "post_bwd": (("token",) * 5, ("token",) * 4),
    "boundary": (("token",) * 4 + ("param",) * 3 + (None, None), ("token",) * 5),
    "boundary_fwd": (("token",) * 4 + ("param",) * 3 + (None, None), ("token",) * 7),
    "boundary_bwd": (("token",) * 10 + ("param",) * 3 + ("token", "token", None, None),
                     ("token",) * 4 + ("grad",) * 3),
}


def _strategies(inputs, outputs):
    sharded = {"token": Shard(0), "param": Replicate(), "grad": Partial()}
    replicated = {"token": Replicate(), "param": Replicate(), "grad": Replicate()}

    def strategy(*args, **kwargs):  # kwargs: the arguments passed by name, in the schema's order
        # Optional tensors (the backward ops' Tensor? arguments) that are None take no placement.
        roles = [role if arg is not None else None for role, arg in zip(inputs, args + tuple(kwargs.values()))]
        return [([placements[r] for r in outputs], [placements[r] if r else None for r in roles])
                for placements in (sharded, replicated)]

    return strategy


def register():
    """Registers the strategies with DTensor (again: the latest registration wins)."""
    for name, (inputs, outputs) in _ROLES.items():
        # register_sharding keys its cache on the tensors' specs and the integer arguments, not on
        # the variant string: harmless, as the strategies are the same for every variant.
        register_sharding(getattr(torch.ops.mhc, name).default)(_strategies(inputs, outputs))


register()
