"""Hugging Face's DeepSeek-V4 (transformers, pinned in scripts/setup.sh) as oracle and as host
(DESIGN.md §9, §13): its DeepseekV4HyperConnection, DeepseekV4HyperHead and DeepseekV4DecoderLayer
against our modules given the same fn/base/scale, then a small random DeepseekV4ForCausalLM patched
by mhc.hf.apply_to_deepseek_v4 against itself unpatched, in training and in generation. All fp32 on
the CPU: HF computes the coefficients in fp32 by design, so the comparisons are fp32 against fp32.

The tolerances are first-order worst-case rounding bounds, not measurements. A chain of m fp32
roundings (a sum of m terms, m successive divisions) is off by at most m·u relative to the
magnitudes it combines, u = 2⁻²⁴ (Higham, γ_m). One connection's longest chains, n streams of
width C, K = n·C:
    the RMS (a mean of K squares) and the projection (K products)      2K
    softmax and the Sinkhorn–Knopp normalisations, 2·iters sums of n    2·iters·(n + 1)
    the collapse Σ_j pre_j·x_j and the mix post·y + combᵀ·x             n + 1
The backward pass walks the same chains; a parameter's gradient then sums over the N tokens (N
more). Two implementations each within m·u of the exact result differ by at most 2·m·u.
"""
import collections
import copy
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mhc

transformers = pytest.importorskip("transformers")
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as v4  # noqa: E402

import mhc.hf  # noqa: E402

U = torch.finfo(torch.float32).eps / 2
N_STREAMS, WIDTH, LAYERS, VOCAB = 4, 64, 3, 128
BATCH, SEQ = 2, 16


def tiny_config(**overrides):
    """A DeepSeek-V4 of hidden 64 and 4 streams with one layer of each attention kind (sliding,
    compressed sparse, heavily compressed) and both MoE routers (hash, top-k)."""
    settings = dict(vocab_size=VOCAB, hidden_size=WIDTH, moe_intermediate_size=32, num_hidden_layers=LAYERS,
                    num_attention_heads=4, num_key_value_heads=1, head_dim=32, q_lora_rank=32, num_experts_per_tok=2,
                    n_routed_experts=4, n_shared_experts=1, hc_mult=N_STREAMS, sliding_window=8, o_groups=2,
                    o_lora_rank=16, index_n_heads=2, index_head_dim=16, index_topk=4,
                    compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
                    layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"],
                    mlp_layer_types=["hash_moe", "moe", "moe"], max_position_embeddings=256,
                    num_nextn_predict_layers=0, pad_token_id=0)
    return transformers.DeepseekV4Config(**dict(settings, **overrides))


def connection_rounding(tokens):
    """2·m·u for one connection (the module note's chains), its parameter gradients summed over
    `tokens` tokens."""
    cfg = tiny_config()
    K = cfg.hc_mult * cfg.hidden_size
    return 2 * U * (2 * K + 2 * cfg.hc_sinkhorn_iters * (cfg.hc_mult + 1) + cfg.hc_mult + 1 + tokens)


def randomize_connections(module, seed=0):
    """V4's connection parameters drawn away from HF's initialisation (base = 0 makes comb nearly
    uniform, hence nearly symmetric, which would hide a transposed comb): fn ~ N(0, 1/(nC)), the
    logit biases spread over ±4, scales in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("fn", "hc_fn"):
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            elif leaf in ("base", "hc_base"):
                p.copy_(4 * torch.randn(p.shape, generator=g))
            elif leaf in ("scale", "hc_scale"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = transformers.DeepseekV4ForCausalLM(tiny_config()).float()
    randomize_connections(model, seed)
    return model


def assert_close(name, got, want, tol):
    error, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert error <= tol * scale, f"{name}: max |difference| {error:.3g} > {tol:.3g} × max |HF| {scale:.3g}"


def weighted_sum(outputs, seed=1):
    """A loss that weighs every output entry differently, so every gradient path is exercised."""
    g = torch.Generator().manual_seed(seed)
    return sum((o.float() * torch.randn(o.shape, generator=g)).sum() for o in outputs)


def streams(seed=2):
    return torch.randn(BATCH, SEQ, N_STREAMS, WIDTH, generator=torch.Generator().manual_seed(seed), requires_grad=True)


def as_v4_gradients(connection):
    """Our connection's gradients in V4's layout: phi is a permutation of fn (likewise bias, alpha),
    so the gradients map by the same permutation."""
    return mhc.to_deepseek_v4(connection.phi.grad, connection.bias.grad, connection.alpha.grad)


def ours_like(theirs):
    """An mhc-v4 HyperConnection holding HF's connection's fn/base/scale."""
    ours = mhc.HyperConnection("mhc-v4", N_STREAMS, WIDTH, sinkhorn_iters=theirs.hc_sinkhorn_iters)
    with torch.no_grad():
        for p, value in zip((ours.phi, ours.bias, ours.alpha), mhc.from_deepseek_v4(theirs.fn, theirs.base, theirs.scale)):
            p.copy_(value)
    return ours


def test_hyper_connection_matches_hf():
    theirs = v4.DeepseekV4HyperConnection(tiny_config())
    randomize_connections(theirs)
    ours = ours_like(theirs)
    x = streams()
    y = torch.randn(BATCH, SEQ, WIDTH, generator=torch.Generator().manual_seed(3), requires_grad=True)

    post, comb, collapsed = theirs(x)
    mixed = post.unsqueeze(-1) * y.unsqueeze(-2) + comb.transpose(-1, -2) @ x  # the decoder layer's mixing
    weighted_sum([post, comb, collapsed, mixed]).backward()
    want = [post, comb, collapsed, mixed, x.grad, y.grad, theirs.fn.grad, theirs.base.grad, theirs.scale.grad]

    x.grad = y.grad = None
    h, mix = ours.pre(x)
    out = ours.post(mix.x_post, y, mix)
    comb_ours = mix.H_res.transpose(-1, -2)  # H_res = combᵀ
    weighted_sum([mix.H_post, comb_ours, h, out]).backward()
    got = [mix.H_post, comb_ours, h, out, x.grad, y.grad, *as_v4_gradients(ours)]

    tol = connection_rounding(BATCH * SEQ)
    for name, a, b in zip(["post", "comb", "collapsed", "mixed", "dx", "dy", "dfn", "dbase", "dscale"], got, want):
        assert_close(name, a.detach(), b.detach(), tol)


def test_hyper_head_matches_hf():
    theirs = v4.DeepseekV4HyperHead(tiny_config())
    randomize_connections(theirs)
    ours = mhc.HyperHead(N_STREAMS, WIDTH)
    with torch.no_grad():
        ours.phi.copy_(theirs.hc_fn.t()), ours.bias.copy_(theirs.hc_base), ours.alpha.copy_(theirs.hc_scale)
    x = streams()
    want = theirs(x)
    weighted_sum([want]).backward()
    want = [want, x.grad, theirs.hc_fn.grad, theirs.hc_base.grad, theirs.hc_scale.grad]
    x.grad = None
    got = ours(x)
    weighted_sum([got]).backward()
    got = [got, x.grad, ours.phi.grad.t(), ours.bias.grad, ours.alpha.grad]
    # The head's chains: the RMS and projection (2K), the weighted sum of n streams, N tokens.
    tol = 2 * U * (2 * N_STREAMS * WIDTH + N_STREAMS + 1 + BATCH * SEQ)
    for name, a, b in zip(["out", "dx", "dfn", "dbase", "dscale"], got, want):
        assert_close(name, a.detach(), b.detach(), tol)


def test_decoder_layer_matches_hf():
    """HF's layer against its own attention and MoE sublayers wrapped by our two connections
    (mhc.HyperConnectionStack: pre, the fused boundary, post)."""
    model = tiny_model()
    layer = model.model.layers[0]  # sliding-window attention, hash-routed MoE
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(4))
    positions = torch.arange(SEQ).unsqueeze(0)
    embeddings = torch.zeros(BATCH, SEQ, WIDTH)
    rope = {kind: model.model.rotary_emb(embeddings, position_ids=positions, layer_type=kind)
            for kind in ("main", "compress")}
    attention_args = dict(position_embeddings=rope, position_ids=positions, attention_mask=None)
    x = streams()

    want = layer(x, input_ids=ids, **attention_args)
    weighted_sum([want]).backward()
    connections = (layer.attn_hc, layer.ffn_hc)
    want = [want, x.grad] + [p.grad for c in connections for p in (c.fn, c.base, c.scale)]

    x.grad = None
    stack = mhc.HyperConnectionStack("mhc-v4", N_STREAMS, WIDTH, 2)
    for ours, theirs in zip(stack.connections, connections):
        ours.load_state_dict(ours_like(theirs).state_dict())
    sublayers = [lambda h: layer.self_attn(layer.input_layernorm(h), **attention_args)[0],
                 lambda h: layer.mlp(layer.post_attention_layernorm(h), input_ids=ids)]
    got = stack(x, sublayers)
    weighted_sum([got]).backward()
    got = [got, x.grad] + [g for c in stack.connections for g in as_v4_gradients(c)]

    # Two connections in sequence; the sublayers run the same code on inputs that differ by the
    # first connection's rounding, their RMSNorm keeping its relative size.
    tol = 2 * connection_rounding(BATCH * SEQ)
    names = ["out", "dx"] + [f"{c}.d{p}" for c in ("attn_hc", "ffn_hc") for p in ("fn", "base", "scale")]
    for name, a, b in zip(names, got, want):
        assert_close(name, a.detach(), b.detach(), tol)


# ---- the drop-in: mhc.hf.apply_to_deepseek_v4 on a whole model --------------------------------

def model_rounding():
    """2L + 1 connections (the head counted as one) in sequence, each adding its rounding to the
    stream, which passes on without growth: combᵀ is doubly stochastic (max-norm 1) and every
    sublayer reads an RMS-normalised input. Then the final norm and the LM head (C terms each) and,
    for parameter gradients, the sum over N tokens."""
    return (2 * LAYERS + 1) * connection_rounding(0) + 2 * U * (2 * WIDTH + BATCH * SEQ)


class OpCounter(TorchDispatchMode):
    """Counts the calls of torch.ops.mhc.* (after autograd: the forward and backward halves)."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "mhc":
            self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def train_step(model, ids, forward=None):
    """forward: model itself, or model compiled."""
    model.zero_grad()
    out = (model if forward is None else forward)(ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {name: p.grad for name, p in model.named_parameters()}


def assert_same_training(unpatched, patched, ids, patched_forward=None):
    logits_want, grads_want = train_step(unpatched, ids)
    logits_got, grads_got = train_step(patched, ids, patched_forward)
    tol = model_rounding()
    assert_close("logits", logits_got, logits_want, tol)
    # A gradient below tol·G (G the largest of all) is zero at this precision, the rounding of
    # terms that cancel (the hash router's gate weight: ~5e-11); those are held to tol·G.
    scale = max(g.abs().max().item() for g in grads_want.values() if g is not None)
    for name, want in grads_want.items():
        got = grads_got[name]
        if want is None and patched_forward is not None and got is not None:
            # A compiled backward returns zeros for a parameter the loss does not reach (the
            # indexer's position_bias at these sizes), where eager leaves None.
            assert not got.any(), name
            continue
        assert (got is None) == (want is None), name
        if want is not None:
            error, bound = (got - want).abs().max().item(), tol * max(want.abs().max().item(), tol * scale)
            assert error <= bound, f"d{name}: max |difference| {error:.3g} > {bound:.3g}"


def test_patched_model_trains_the_same():
    unpatched = tiny_model()
    patched = copy.deepcopy(unpatched)
    before = patched.state_dict()
    values = {name: t.clone() for name, t in before.items()}
    mhc.hf.apply_to_deepseek_v4(patched)
    after = patched.state_dict()
    assert list(after) == list(before)  # same names, same order: checkpoints load and save as they are
    for name, t in after.items():
        assert t.data_ptr() == before[name].data_ptr() and torch.equal(t, values[name]), name

    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(5))
    with OpCounter() as ops:
        assert_same_training(unpatched, patched, ids)
    # The fused path ran: one pre, a fused boundary at each of the 2L − 1 meetings of sublayers,
    # one post, forward and backward.
    assert ops.calls == {"pre_fwd": 1, "pre_bwd": 1, "boundary_fwd": 2 * LAYERS - 1, "boundary_bwd": 2 * LAYERS - 1,
                         "post": 1, "post_bwd": 1}, ops.calls

    # A patched connection keeps the module's contract, (post, comb, collapsed).
    x = streams().detach()
    for name, a, b in zip(["post", "comb", "collapsed"], patched.model.layers[1].attn_hc(x),
                          unpatched.model.layers[1].attn_hc(x)):
        assert_close(name, a, b, connection_rounding(0))


def test_patched_model_trains_the_same_under_gradient_checkpointing():
    unpatched = tiny_model(seed=1)
    patched = copy.deepcopy(unpatched)
    mhc.hf.apply_to_deepseek_v4(patched)
    patched.activation_checkpointing_enable()
    patched.train()
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(6))
    assert_same_training(unpatched, patched, ids)


def test_patched_model_generates_the_same():
    unpatched = tiny_model(seed=2).eval()
    patched = copy.deepcopy(unpatched)
    mhc.hf.apply_to_deepseek_v4(patched)
    prompt = torch.randint(1, VOCAB, (BATCH, 5), generator=torch.Generator().manual_seed(7))
    settings = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    want, got = unpatched.generate(prompt, **settings), patched.generate(prompt, **settings)
    assert torch.equal(got.sequences, want.sequences)
    for step, (a, b) in enumerate(zip(got.logits, want.logits)):
        assert_close(f"logits of token {step}", a, b, model_rounding())


def test_patched_model_compiles_whole_and_trains_the_same():
    """torch.compile(fullgraph=True) traces the patched model whole (the ops' fake implementations,
    the layers' hand-over through their links) and its training step (loss, logits, gradients)
    matches the eager patched model's. python/bench_hf.py --compile times it with inductor; here
    the aot_eager backend (dynamo and AOTAutograd's forward/backward split, no code generation)
    keeps the test to seconds."""
    eager = tiny_model(seed=4)
    mhc.hf.apply_to_deepseek_v4(eager)
    patched = copy.deepcopy(eager)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(9))
    torch._dynamo.reset()
    try:
        compiled = torch.compile(patched, fullgraph=True, backend="aot_eager")
        loss_want = eager(ids, labels=ids).loss.item()
        loss_got = compiled(ids, labels=ids).loss.item()
        assert abs(loss_got - loss_want) <= model_rounding() * abs(loss_want), (loss_got, loss_want)
        assert_same_training(eager, patched, ids, patched_forward=compiled)
    finally:
        torch._dynamo.reset()


def test_patched_base_model_matches():
    """A bare DeepseekV4Model (no LM head) is patched too; its output is the head's, normed."""
    torch.manual_seed(3)
    unpatched = transformers.DeepseekV4Model(tiny_config()).float()
    randomize_connections(unpatched, seed=3)
    patched = copy.deepcopy(unpatched)
    mhc.hf.apply_to_deepseek_v4(patched)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert_close("last_hidden_state", patched(ids).last_hidden_state, unpatched(ids).last_hidden_state,
                     model_rounding())


def test_only_deepseek_v4_models_are_patched():
    with pytest.raises(TypeError, match=r"^mhc.hf.apply_to_deepseek_v4: got torch.nn.modules.linear.Linear; accepted: "
                                        r"DeepseekV4Model, DeepseekV4ForCausalLM \(transformers.models.deepseek_v4\)$"):
        mhc.hf.apply_to_deepseek_v4(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"got transformers.models.deepseek_v4.modeling_deepseek_v4.DeepseekV4DecoderLayer"):
        mhc.hf.apply_to_deepseek_v4(tiny_model().model.layers[0])
    with pytest.raises(ValueError, match=r"^mhc.hf.apply_to_deepseek_v4: config.rms_norm_eps is 1e-05, but the fused ops "
                                         r"compute DeepSeek-V4's mHC with 1e-06 \(the released models' value\)$"):
        mhc.hf.apply_to_deepseek_v4(transformers.DeepseekV4Model(tiny_config(rms_norm_eps=1e-5)))


def test_mhc_imports_without_transformers():
    """transformers stays optional: `import mhc` does not load it, and without it mhc.hf is a
    one-line ImportError."""
    check = ("import sys, mhc; assert 'transformers' not in sys.modules\n"
             "sys.modules['transformers'] = None  # as if it were not installed\n"
             "try:\n    mhc.hf\nexcept ImportError as e:\n    print(e)")
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("mhc.hf needs transformers with DeepSeek-V4 (transformers==5.23.0): "), run.stdout
    assert len(run.stdout.strip().splitlines()) == 1, run.stdout
