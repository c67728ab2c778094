"""What contraction kernels fuse, checked with record_launches(): launch counts, bytes against the ideal
(every input read once, every output written once) and tl.dot in the source, on the interpreter.
Values are checked against torch.func in each test too (float32: tl.dot in fp32)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same
from helpers import TOLERANCES
from torch.utils import _pytree as pytree
from tritonfunc.kernels import contraction as templates
from vmap_helpers import make

import tritonfunc
from tritonfunc import pipeline, runtime
from tritonfunc.trace import trace

F32 = TOLERANCES[torch.float32]


def nbytes(tree) -> int:
    return sum(t.numel() * t.element_size() for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor))


def recorded(fn, *args):
    with tritonfunc.record_launches() as rec:
        out = fn(*args)
    return out, rec


def moved(rec) -> int:
    return rec.bytes_read + rec.bytes_written


def mlp_params(d_in, hidden, d_out, seed=0):
    shapes = [(hidden, d_in), (hidden,), (d_out, hidden), (d_out,)]
    w1, b1, w2, b2 = (make(*s, dtype=torch.float32, seed=seed + i) for i, s in enumerate(shapes))
    return (w1 / d_in**0.5, b1, w2 / hidden**0.5, b2)


def mlp(params, x):
    w1, b1, w2, b2 = params
    return F.linear(torch.tanh(F.linear(x, w1, b1)), w2, b2)


def test_a_linear_layer_with_bias_and_activation_is_one_gemm(interpreter):
    x, w, b = make(40, 24, dtype=torch.float32), make(18, 24, seed=1, dtype=torch.float32), make(18, seed=2)
    f = lambda x, w, b: torch.tanh(F.linear(x, w, b.float()))
    out, rec = recorded(tritonfunc.jit(f), x, w, b)
    assert_same(out, f(x, w, b), rtol=F32[0], atol=F32[1])
    (launch,) = rec.launches
    assert "tl.dot" in launch.source and "tanh" in launch.source
    assert moved(rec) <= 1.05 * nbytes((x, w, b.float(), out))


@pytest.mark.parametrize("act", [F.relu, F.silu, F.gelu], ids=lambda f: f.__name__)
def test_a_layer_stores_its_activation_alone(interpreter, act):
    """ReLU (where(z > 0, z, ...), NaN kept), SiLU and GELU read z more than once: the first GEMM
    still stores act(z) alone for the next layer, not z beside a mask or a factor of act(z)."""
    x, w1, w2 = (make(*s, seed=i, dtype=torch.float32) for i, s in enumerate([(64, 32), (32, 32), (16, 32)]))
    f = lambda x, w1, w2: act(x @ w1.T) @ w2.T
    out, rec = recorded(tritonfunc.jit(f), x, w1, w2)
    assert_same(out, f(x, w1, w2), rtol=F32[0], atol=F32[1])
    assert rec.count == 2 and rec.launches[0].bytes_written == nbytes(x @ w1.T)


def test_prologue_fuses_scale_cast_and_activation_derivative(interpreter):
    """An operand computed elementwise from inputs is computed in the k loop, never stored."""
    h, g = make(40, 32, dtype=torch.float32), make(40, 32, seed=1, dtype=torch.float32)
    w = make(32, 24, seed=2, dtype=torch.float64)
    f = lambda h, g, w: ((1 - h * h) * g * 0.5) @ w.float()
    out, rec = recorded(tritonfunc.jit(f), h, g, w)
    assert_same(out, f(h, g, w), rtol=F32[0], atol=F32[1])
    assert rec.count == 1 and "tl.dot" in rec.launches[0].source


def test_vmaps_batch_lands_on_grid_axis_1(interpreter):
    a, b = make(6, 20, 24, dtype=torch.float32), make(6, 24, 18, seed=1, dtype=torch.float32)
    out, rec = recorded(tritonfunc.vmap(torch.mm), a, b)
    assert_same(out, torch.func.vmap(torch.mm)(a, b), rtol=F32[0], atol=F32[1])
    (launch,) = rec.launches
    assert launch.grid[1] == 6 and "tl.program_id(1)" in launch.source


def test_a_vmap_over_one_operand_is_one_bigger_gemm(interpreter):
    """vmap(x @ W) over x: the batch is a free axis of x, so M = batch * rows and W is read once."""
    x, w = make(5, 8, 24, dtype=torch.float32), make(24, 18, seed=1, dtype=torch.float32)
    out, rec = recorded(tritonfunc.vmap(torch.mm, in_dims=(0, None)), x, w)
    assert_same(out, torch.func.vmap(torch.mm, in_dims=(0, None))(x, w), rtol=F32[0], atol=F32[1])
    (launch,) = rec.launches
    assert launch.grid == (2, 1) and moved(rec) == nbytes((x, w, out))


def test_a_sum_over_the_vmapped_batch_is_one_gemm(interpreter):
    """The weight gradient of a linear layer over a batch contracts the batch: K = batch."""
    x, w = make(64, 24, dtype=torch.float32), make(18, 24, seed=1, dtype=torch.float32)
    loss = lambda w, x: torch.tanh(F.linear(x, w)).sum()
    out, rec = recorded(tritonfunc.grad(loss), w, x)
    assert_same(out, torch.func.grad(loss)(w, x), rtol=F32[0], atol=F32[1])
    assert rec.count == 2 and all("tl.dot" in launch.source for launch in rec.launches)


def test_a_row_softmax_is_the_gemms_epilogue(interpreter):
    q, k = make(4, 32, 16, dtype=torch.float32), make(4, 48, 16, seed=1, dtype=torch.float32)
    f = lambda q, k: torch.softmax(q @ k.transpose(-1, -2), -1)
    out, rec = recorded(tritonfunc.jit(f), q, k)
    assert_same(out, f(q, k), rtol=F32[0], atol=F32[1])
    (launch,) = rec.launches
    assert launch.grid[1] == 4 and "tl.sum" in launch.source and moved(rec) == nbytes((q, k, out))


def test_the_jvp_of_a_product_sums_two_dots_in_one_kernel(interpreter):
    a, b = make(40, 24, dtype=torch.float32), make(24, 32, seed=1, dtype=torch.float32)
    ta, tb = make(40, 24, seed=2, dtype=torch.float32), make(24, 32, seed=3, dtype=torch.float32)
    out, rec = recorded(lambda *p: tritonfunc.jvp(torch.mm, p[:2], p[2:]), a, b, ta, tb)
    assert_same(out, torch.func.jvp(torch.mm, (a, b), (ta, tb)), rtol=F32[0], atol=F32[1])
    assert rec.count == 1 and rec.launches[0].source.count("tl.dot(") == 3


def test_a_per_sample_weight_gradient_is_written_by_the_gemm_holding_both_factors(interpreter):
    """vmap(grad) of a linear layer: dW[b] = g[b] x[b]^T, g from the forward GEMM's epilogue and x
    loaded beside it; the per-sample gradients are written once, by the one kernel."""
    w, x = make(32, 24, dtype=torch.float32), make(64, 24, seed=1, dtype=torch.float32)
    f = lambda w, x: torch.tanh(F.linear(x, w)).sum()
    out, rec = recorded(tritonfunc.vmap(tritonfunc.grad(f), in_dims=(None, 0)), w, x)
    assert_same(out, torch.func.vmap(torch.func.grad(f), in_dims=(None, 0))(w, x), rtol=F32[0], atol=F32[1])
    (launch,) = rec.launches
    assert "tl.dot" in launch.source and "e_start" in launch.source
    assert moved(rec) <= 1.05 * nbytes((w, x, out))


def xent(params, x, t):
    return F.cross_entropy(mlp(params, x)[None], t[None])


def test_per_sample_gradients_of_a_two_layer_mlp_in_three_launches(interpreter):
    """The issue's target: <= 3 launches at <= 1.5x the ideal bytes, on tensor cores."""
    params, x = mlp_params(32, 32, 16), make(64, 32, seed=5, dtype=torch.float32)
    t = torch.arange(64) % 16
    program = lambda ft: ft.vmap(ft.grad(xent), in_dims=(None, 0, 0))
    out, rec = recorded(program(tritonfunc), params, x, t)
    want = program(torch.func)(params, x, t)
    assert_same(out, want, rtol=F32[0], atol=F32[1])
    assert rec.count <= 3 and all("tl.dot" in launch.source for launch in rec.launches)
    assert moved(rec) <= 1.5 * nbytes((params, x, t, want))


def test_an_ensemble_forward_is_one_launch_per_layer(interpreter):
    models = [mlp_params(32, 32, 16, seed=10 * i) for i in range(4)]
    stacked = tuple(torch.stack(p) for p in zip(*models))
    x = make(64, 32, seed=3, dtype=torch.float32)
    program = lambda ft: ft.vmap(mlp, in_dims=(0, None))
    out, rec = recorded(program(tritonfunc), stacked, x)
    assert_same(out, program(torch.func)(stacked, x), rtol=F32[0], atol=F32[1])
    assert rec.count == 2 and all("tl.dot" in launch.source for launch in rec.launches)
    assert rec.launches[1].grid[1] == 4  # the second layer: one model per grid row


def test_an_hvp_of_a_batch_loss_is_one_launch_per_gemm_level(interpreter):
    """jvp(grad(loss)) in the parameters: every bias gradient is summed in its weight gradient's
    kernel, every softmax statistic in its logits' kernel, and the hidden layer's gradient through
    the 16 logits (an inner dot) is recomputed inside its weight gradient's kernel instead of being
    stored: four GEMM launches, nothing else, at most 4.1x the ideal bytes (5 launches at 4.97x
    before the inner dot)."""
    params, x = mlp_params(32, 32, 16), make(64, 32, seed=5, dtype=torch.float32)
    t, v = torch.arange(64) % 16, mlp_params(32, 32, 16, seed=20)
    loss = lambda p, x, t: F.cross_entropy(mlp(p, x), t)
    program = lambda ft: lambda p, v, x, t: ft.jvp(lambda q: ft.grad(loss)(q, x, t), (p,), (v,))
    out, rec = recorded(program(tritonfunc), params, v, x, t)
    want = program(torch.func)(params, v, x, t)
    assert_same(out, want, rtol=1e-4, atol=1e-5)
    assert rec.count == 4 and all("tl.dot" in launch.source for launch in rec.launches)
    assert "tl.static_range(16)" in rec.launches[-1].source  # the inner dot
    assert moved(rec) <= 4.1 * (nbytes((params, v, x, t)) + nbytes(want))


# g @ w over 10 logits (schedule.INNER_DOT_K), needed summed over the batch or as the operand of a
# bigger dot: computed inside the kernel that needs it, never stored.
INNER_DOT_CASES = {
    "summed over the batch": lambda g, w, h: (torch.tanh(g @ w) * h).sum(0),
    "a bigger dot's operand": lambda g, w, h: ((g @ w) * (1 - h * h)).T @ h,
    "both": lambda g, w, h: (((g @ w) * h).T @ h, ((g @ w) * h).sum(0)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", INNER_DOT_CASES)
def test_a_small_dot_is_recomputed_in_the_kernel_that_needs_it(interpreter, case, dtype):
    g, w, h = make(64, 10, dtype=dtype), make(10, 48, seed=1, dtype=dtype), make(64, 48, seed=2, dtype=dtype)
    f = INNER_DOT_CASES[case]
    out, rec = recorded(tritonfunc.jit(f), g, w, h)
    if dtype in (torch.float16, torch.bfloat16):  # against float32, within a few roundings of the result
        want = pytree.tree_map(lambda t: t.to(dtype), f(g.float(), w.float(), h.float()))
        scale = max(t.abs().max().item() for t in pytree.tree_leaves(want))
        assert_same(out, want, rtol=2e-2, atol=2e-2 * scale)
    else:
        assert_same(out, f(g, w, h))
    (launch,) = rec.launches
    assert "tl.static_range(10)" in launch.source
    assert rec.bytes_written == nbytes(out)


def test_a_small_dot_is_recomputed_per_vmapped_example(interpreter):
    g, w, h = make(3, 64, 10, dtype=torch.float32), make(10, 48, seed=1, dtype=torch.float32), make(3, 64, 48, seed=2)
    f = INNER_DOT_CASES["a bigger dot's operand"]
    program = lambda ft: ft.vmap(f, in_dims=(0, None, 0))
    out, rec = recorded(program(tritonfunc), g, w, h.float())
    assert_same(out, program(torch.func)(g, w, h.float()), rtol=F32[0], atol=F32[1])
    (launch,) = rec.launches
    assert launch.grid[1] == 3 and "tl.static_range(10)" in launch.source


def test_per_example_jacobians_recompute_the_cotangent_basis_in_the_prologue(interpreter):
    """vmap(jacrev(mlp)): the one-hot cotangents times the output layer's weight (16 outputs) are an
    inner dot in the k loop of the input layer's Jacobian, beside that loop's own accumulator."""
    params, x = mlp_params(32, 32, 16), make(64, 32, seed=5, dtype=torch.float32)
    program = lambda ft: ft.vmap(ft.jacrev(mlp, argnums=1), in_dims=(None, 0))
    out, rec = recorded(program(tritonfunc), params, x)
    assert_same(out, program(torch.func)(params, x), rtol=F32[0], atol=F32[1])
    assert rec.count == 2 and "tl.static_range(16)" in rec.launches[1].source


def test_small_contractions_stay_in_the_fused_row_kernels(interpreter):
    """K < 16 (or M, N < 16): a dot product is a row reduction fused with what surrounds it."""
    x, w = make(40, 8, dtype=torch.float32), make(8, seed=1, dtype=torch.float32)
    f = lambda x, w: torch.softmax(x * (x @ w)[:, None], -1)
    out, rec = recorded(tritonfunc.jit(f), x, w)
    assert_same(out, f(x, w), rtol=F32[0], atol=F32[1])
    assert rec.count == 1 and "tl.dot" not in rec.launches[0].source


def test_float32_follows_torchs_tf32_setting(interpreter):
    x, w = make(32, 32, dtype=torch.float32), make(32, 32, seed=1, dtype=torch.float32)
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        for allowed, precision in [(False, "ieee"), (True, "tf32")]:
            torch.backends.cuda.matmul.allow_tf32 = allowed
            out, rec = recorded(tritonfunc.jit(torch.mm), x, w)
            assert f'input_precision="{precision}"' in rec.launches[0].source
            assert_same(out, x @ w, rtol=F32[0], atol=F32[1])  # the interpreter is exact fp32 either way
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("setting", ["matmul", "global"])
def test_float32_follows_torchs_fp32_precision_setting(interpreter, setting):
    """torch's newer switch (after which reading the legacy allow_tf32 flag raises): every call
    reads it, through the cache key, so no call may fail once it is used."""
    x, w = make(32, 32, dtype=torch.float32), make(32, 32, seed=1, dtype=torch.float32)
    owner = torch.backends.cuda.matmul if setting == "matmul" else torch.backends
    torch.backends.cuda.matmul.fp32_precision = "none"  # "none": the global setting decides
    try:
        for precision in ["tf32", "ieee"]:
            owner.fp32_precision = precision
            out, rec = recorded(tritonfunc.jit(torch.mm), x, w)
            assert f'input_precision="{precision}"' in rec.launches[0].source
            assert_same(out, x @ w, rtol=F32[0], atol=F32[1])
            assert_same(tritonfunc.vmap(torch.sin)(x), torch.sin(x))
    finally:
        torch.backends.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "none"  # the defaults


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_the_h100_tiles_compile_for_sm90(dtype):
    """The sm_90 configurations (128 x 128 tiles, pipelined k loops) of a linear layer and of a
    per-sample weight gradient compile, and fit the H100's shared memory, in every dtype."""
    w, x = torch.empty(512, 768, dtype=dtype, device="meta"), torch.empty(4096, 768, dtype=dtype, device="meta")
    f = lambda w, x: torch.tanh(F.linear(x, w)).sum()
    for fn in (lambda w, x: torch.tanh(F.linear(x, w)), tritonfunc.vmap(tritonfunc.grad(f), in_dims=(None, 0))):
        graph = trace(fn, (w, x), {}).graph
        program = runtime.program_for(graph, [w, x], "sm90")
        assert any("tl.dot" in step.source.source for step in program.kernel_steps)
        for step in program.kernel_steps:
            meta = runtime.compile_for_sm90(step.source)
            assert meta["shared"] <= 232448, (step.source.name, meta)


def test_tile_table_shrinks_to_the_problem():
    tiles = templates.choose_tiles(20, 300, 8, torch.float16, "sm90", whole_rows=False, outer=False)
    assert (tiles.bm, tiles.bn, tiles.bk) == (32, 128, 16)
    tiles = templates.choose_tiles(4096, 200, 512, torch.float32, "sm90", whole_rows=True, outer=False)
    assert tiles.bn == 256 and tiles.bm * tiles.bn <= 128 * 128
    tiles = templates.choose_tiles(4096, 128, 512, torch.float32, "sm90", whole_rows=False, outer=True)
    assert tiles.bm * tiles.bn * templates.MIN_OUTER_BLOCK <= templates.OUTER_TILE
    assert math.log2(tiles.bm).is_integer() and math.log2(tiles.bn).is_integer()


def test_an_epilogue_writes_through_views_where_the_output_lies(interpreter):
    """vmap over the second operand puts the batch axis in front of the first operand's axes (a
    permutation of three axes): the kernel stores its tile there, no copy follows."""
    a, w = make(4, 6, 24, dtype=torch.float32), make(5, 24, 18, seed=1, dtype=torch.float32)
    f = lambda w: torch.tanh(torch.einsum("ijk,kl->ijl", a, w))
    out, rec = recorded(tritonfunc.vmap(f), w)
    assert_same(out, torch.func.vmap(f)(w), rtol=F32[0], atol=F32[1])
    assert rec.count == 1 and moved(rec) == nbytes((a, w, out))


def test_an_unfused_contraction_can_run_as_a_torch_call(interpreter, monkeypatch):
    """The hook for the GPU measurement (schedule.UNFUSED_DOT_AS_TORCH_CALL): a bare product runs as
    torch's matmul, a fused one stays a kernel."""
    from tritonfunc import schedule

    monkeypatch.setattr(schedule, "UNFUSED_DOT_AS_TORCH_CALL", True)
    a, b = make(40, 24, dtype=torch.float32), make(24, 32, seed=1, dtype=torch.float32)
    out, rec = recorded(tritonfunc.jit(torch.mm), a, b)
    assert_same(out, a @ b, rtol=F32[0], atol=F32[1])
    assert [launch.kind for launch in rec.launches] == ["torch"]
    out, rec = recorded(tritonfunc.jit(lambda a, b: torch.tanh(a @ b)), a, b)
    assert_same(out, torch.tanh(a @ b), rtol=F32[0], atol=F32[1])
    assert [launch.kind for launch in rec.launches] == ["kernel"]


def test_large_problems_compile_for_sm90():
    """More batches than grid axis 1 holds fold into axis 0; outputs of 2^31 elements index in int64."""
    for shapes, wide in [(((70000, 16, 16), (70000, 16, 16)), False), (((65536, 64), (64, 32768)), True)]:
        a, b = (torch.empty(s, device="meta") for s in shapes)
        graph = trace(torch.matmul, (a, b), {}).graph
        (step,) = runtime.program_for(graph, [a, b], "sm90").kernel_steps
        assert step.source.grid[1] == 1 and ("tl.int64" in step.source.source) == wide
        assert runtime.compile_for_sm90(step.source)["shared"] > 0


def clipping_norms(ft, loss):
    """DP-SGD's per-sample gradient norms over all parameters."""

    def norms(params, *batch):
        grads = ft.vmap(ft.grad(loss), in_dims=(None,) + (0,) * len(batch))(params, *batch)
        return torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)

    return norms


def test_clipping_norms_never_form_the_per_sample_gradients(interpreter):
    """|g x^T| = |g| |x| (ghost norms): the norms of an MLP's per-sample gradients come from the
    layers' inputs and output gradients alone, in the GEMM kernels of the backward pass."""
    params, x = mlp_params(32, 32, 16), make(64, 32, seed=5, dtype=torch.float32)
    t = torch.arange(64) % 16
    norms = clipping_norms(tritonfunc, xent)
    out, rec = recorded(tritonfunc.jit(norms), params, x, t)
    assert_same(out, clipping_norms(torch.func, xent)(params, x, t), rtol=F32[0], atol=F32[1])
    assert rec.count <= 3
    per_sample_grads = 4 * 64 * (32 * 32 + 32 + 16 * 32 + 16)
    assert rec.bytes_written < per_sample_grads / 20


def token_loss(params, x):
    """A linear layer over a sequence: its per-sample weight gradient contracts the tokens."""
    (w,) = params
    return torch.tanh(x @ w.T).pow(2).mean()


@pytest.mark.parametrize("tokens", [4, 40])
def test_ghost_norms_over_tokens(backend, tokens):
    """|G^T X|^2 = <G G^T, X X^T>: Gram matrices of the tokens when they are few (4 tokens of 32),
    the per-sample gradients themselves when they are not (40)."""
    params, x = (make(32, 32, seed=1),), make(8, tokens, 32, seed=2)
    norms = clipping_norms(tritonfunc, token_loss)
    assert_same(tritonfunc.jit(norms)(params, x), clipping_norms(torch.func, token_loss)(params, x))
    graph = pipeline.optimize(trace(norms, (params, x), {}).graph)
    grams = [n for n in graph.nodes if n.out.shape == (8, tokens, tokens)]
    assert bool(grams) == (tokens == 4)


def attention_block(params, x):
    wq, wk, wv, wo = params
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    weights = torch.softmax(q @ k.T / q.shape[-1] ** 0.5, -1)
    return ((weights @ v) @ wo.T).pow(2).mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_per_sample_gradients_of_an_attention_block_in_one_launch(interpreter, dtype):
    """Every sample a few 16 x 32 matrices: one program per sample computes the whole block and its
    gradient in registers (15 tl.dot per sample), reading each input once and writing the gradients."""
    params = tuple(make(32, 32, seed=i, dtype=dtype) / 32**0.5 for i in range(4))
    x = make(8, 16, 32, seed=9, dtype=dtype)
    program = lambda ft: ft.vmap(ft.grad(attention_block), in_dims=(None, 0))
    out, rec = recorded(program(tritonfunc), params, x)
    tol = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-9, 1e-12), torch.float16: (2e-2, 2e-3)}[dtype]
    want = (
        program(torch.func)(params, x)
        if dtype != torch.float16
        else program(torch.func)(tuple(p.float() for p in params), x.float())
    )
    assert_same(tuple(o.to(want[0].dtype) for o in out), want, rtol=tol[0], atol=tol[1])
    (launch,) = rec.launches
    assert launch.name.startswith("samples") and launch.grid == (8,) and launch.source.count("tl.dot(") == 15
    assert moved(rec) == nbytes((params, x, out))


def mixed_per_sample(params, x):
    """Per sample: Gram matrices, a softmax, a pooled vector through a weight, column sums."""
    w1, w2 = params
    a = x @ x.T / 16
    h = torch.tanh((a @ x).mean(0) @ w1)
    return (h * (x @ w2).sum(0)).sum() + (a.softmax(-1) * a).sum()


@pytest.mark.parametrize("weights", ["shared", "per_sample"])
def test_a_samples_kernel_handles_vectors_weights_and_both_orientations(interpreter, weights):
    params = tuple(make(32, 32, seed=i) / 6 for i in range(2))
    in_dims = (None, 0)
    if weights == "per_sample":
        params, in_dims = tuple(torch.stack([p, p * 0.5, -p]) for p in params), (0, 0)
    x = make(3, 16, 32, seed=7)
    program = lambda ft: ft.vmap(ft.grad(mixed_per_sample, argnums=(0, 1)), in_dims=in_dims)
    out, rec = recorded(program(tritonfunc), params, x)
    assert_same(out, program(torch.func)(params, x))
    assert [launch.name.split("_")[0] for launch in rec.launches] == ["samples"]
