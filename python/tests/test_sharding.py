"""Sharding along the tokens (DESIGN.md §13), on the CPU over Gloo, two processes per test:
  - DTensor: the ops (through the modules, whose autograd calls the halves mhc.sharding declares)
    on activations sharded along the tokens with replicated parameters give the unsharded values
    and gradients, without a collective until the parameters' gradients are read;
  - FSDP2: a small model of hyper-connection-wrapped MLPs, fully_shard-ed, trains for 10 steps with
    the losses of a one-process run.
"""
import datetime
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mhc

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with Gloo is needed")

WORLD = 2
U64 = 2.0 ** -53  # fp64's unit roundoff


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker, *args):
    """Runs worker(rank, *args) in WORLD processes joined by a Gloo group; a failure in either
    process fails the test with its traceback."""
    mp.spawn(_join, args=(worker, free_port()) + args, nprocs=WORLD)


def _join(rank, worker, port, *args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes on a two-core host
    # A timeout, so that a rank left waiting by the other's failure ends rather than hangs.
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        worker(rank, *args)
        dist.barrier()  # neither rank leaves while the other may still be reading from it
    finally:
        dist.destroy_process_group()
    # Passed: leave without the interpreter's teardown. The device mesh keeps the Gloo group (its
    # threads) alive past destroy_process_group, and destroying it during that teardown now and
    # then aborts the process after all its Python has run ("terminate called without an active
    # exception", no Python frame; about 1 run in 10 of the FSDP2 tests here), which mp.spawn
    # reports as a failure.
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


def assert_close(name, got, want, terms, u):
    """A sum of `terms` products taken in another order (the shards' partial sums, another GEMM
    blocking) differs by at most terms·u of the sum of their magnitudes, here bounded by
    terms·u·(largest entry) per entry; 4x for the products' own rounding and the rest."""
    tol = 4 * terms * u * max(want.abs().max().item(), 1.0)
    error = (got - want).abs().max().item()
    assert error <= tol, f"{name}: error {error:.1e} > {tol:.1e}"


# ----------------------------------------------------------------------------------------- DTensor
CASES = [("residual", 1), ("hc", 2), ("mhc", 4), ("mhc-v4", 4), ("mhc-lite", 3), ("kromhc", 4), ("ihc", 2)]


class Stack(torch.nn.Module):
    """L connections around small MLPs, as one module (so that CommDebugMode, which tells modules
    apart by name, sees each MLP under its own)."""

    def __init__(self, variant, n, C, L):
        super().__init__()
        self.connections = mhc.HyperConnectionStack(variant, n, C, L)
        self.fs = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(C, C), torch.nn.Tanh()) for _ in range(L))

    def forward(self, x):
        return self.connections(x, list(self.fs))


def _dtensor_worker(rank):
    from torch.distributed.tensor import DTensor, Partial, Shard, distribute_module, distribute_tensor, init_device_mesh
    from torch.distributed.tensor.debug import CommDebugMode

    import mhc.sharding  # noqa: F401  (the strategies)

    mesh = init_device_mesh("cpu", (WORLD,))
    B, T, C, L = 2 * WORLD, 3, 8, 3
    for variant, n in CASES:
        torch.manual_seed(0)  # the same model and data on every rank
        model = Stack(variant, n, C, L).double()
        with torch.no_grad():  # off the initialisation, where the dynamic terms are 0
            for p in model.connections.parameters():
                p.add_(0.1 * torch.randn_like(p))
        x, dout = torch.randn(B, T, n, C, dtype=torch.float64), torch.randn(B, T, n, C, dtype=torch.float64)

        x_full = x.clone().requires_grad_()
        out = model(x_full)
        want = [out.detach()] + list(torch.autograd.grad(out, [x_full] + list(model.parameters()), dout))

        distribute_module(model, mesh)  # every parameter replaced by a replicated DTensor
        x_shard = distribute_tensor(x, mesh, [Shard(0)]).requires_grad_()
        dout_shard = distribute_tensor(dout, mesh, [Shard(0)])
        with CommDebugMode() as comms:
            out = model(x_shard)
            # backward(), not autograd.grad(), which CommDebugMode's hooks refuse. No
            # implicit_replication(): the ops leave an unused output's gradient (H_pre's) undefined.
            out.backward(dout_shard)
        got = [out, x_shard.grad] + [p.grad for p in model.parameters()]
        # Token-local: nothing crossed ranks; activations stay sharded, parameter gradients are
        # each rank's partial sums until read.
        assert comms.get_total_counts() == 0, (variant, comms.get_comm_counts())
        assert all(t.placements == (Shard(0),) for t in got[:2]), variant
        assert all(isinstance(g, DTensor) and g.placements == (Partial(),) for g in got[2:]), variant

        # The longest sums: a token's n·C terms (projection), and for a parameter's gradient
        # those of all B·T tokens.
        names = ["x_next", "dx"] + [f"d{name}" for name, _ in model.named_parameters()]
        for name, g, w in zip(names, got, want, strict=True):
            terms = n * C * (1 if name in ("x_next", "dx") else B * T)
            assert_close(f"{variant} {name}", g.full_tensor(), w, terms, U64)

        # Without autograd (inference mode: no Autograd kernel) DTensor sees the ops themselves:
        # the modules' (pre_joint, boundary, post), and the bare pre.
        c, tokens = model.connections.connections[0], x_shard.detach().view(-1, n, C)  # (no views of
        with torch.inference_mode():                                                  # normal tensors in there)
            assert_close(f"{variant} x_next, inference", model(x_shard).full_tensor(), want[0], n * C, U64)
            h = torch.ops.mhc.pre(tokens, c.phi, c.bias, c.alpha, variant)[0]
            full = [p.full_tensor() for p in (c.phi, c.bias, c.alpha)]
            h_full = torch.ops.mhc.pre(x.view(-1, n, C), *full, variant)[0]
            assert h.placements == (Shard(0),), variant
            assert_close(f"{variant} pre's h", h.full_tensor(), h_full, n * C, U64)


def test_dtensor_token_sharding_equals_unsharded():
    spawn(_dtensor_worker)


# ------------------------------------------------------------------------------------------ FSDP2
class TinyLM(torch.nn.Module):
    """Embedding -> n copies -> L hyper-connection-wrapped MLPs -> sum of the streams -> RMSNorm -> head."""

    def __init__(self, variant, n, C, vocab, L):
        super().__init__()
        self.n = n
        self.embed = torch.nn.Embedding(vocab, C)
        self.connections = torch.nn.ModuleList(mhc.HyperConnection(variant, n, C, l) for l in range(L))
        self.mlps = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.RMSNorm(C), torch.nn.Linear(C, 2 * C), torch.nn.GELU(),
                                torch.nn.Linear(2 * C, C))
            for _ in range(L))
        self.norm, self.head = torch.nn.RMSNorm(C), torch.nn.Linear(C, vocab)

    def forward(self, tokens):
        x = mhc.expand_streams(self.embed(tokens), self.n)
        for connection, mlp in zip(self.connections, self.mlps):
            x = connection(x, mlp)
        return self.head(self.norm(mhc.reduce_streams(x)))


STEPS, BATCH, SEQ, VOCAB = 10, 4, 8, 32


def train(model, tokens, targets):
    """STEPS of AdamW on a fixed batch; returns each step's loss (on this batch)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(STEPS):
        loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def _fsdp_worker(rank, variant, n):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import init_device_mesh

    torch.manual_seed(0)
    model = TinyLM(variant, n, 16, VOCAB, 3)
    tokens, targets = torch.randint(VOCAB, (2, BATCH, SEQ))
    reference = TinyLM(variant, n, 16, VOCAB, 3)  # the one-process run, on the whole batch (each rank runs it)
    reference.load_state_dict(model.state_dict())
    want = train(reference, tokens, targets)

    mesh = init_device_mesh("cpu", (WORLD,))
    for mlp in model.mlps:
        fully_shard(mlp, mesh=mesh)
    fully_shard(model, mesh=mesh)
    half = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)  # data parallel: each rank its half
    got = train(model, tokens[half], targets[half])
    dist.all_reduce(got, op=dist.ReduceOp.AVG)  # equal halves: the mean of the means is the batch's
    # fp32 losses of 2 to 4, whose gradients' sums over tokens (and the loss's mean) are taken in
    # another order: 1e-5 is about 40 units in the last place, for that reassociation compounding
    # over 10 AdamW steps (measured: 1 unit, 2.4e-7).
    error = (got - want).abs().max().item()
    assert error <= 1e-5, f"{variant}: losses differ by {error:.1e}\n{got}\n{want}"


@pytest.mark.parametrize("variant,n", [("mhc", 4), ("hc", 2)])
def test_fsdp2_training_matches_one_process(variant, n):
    spawn(_fsdp_worker, variant, n)
