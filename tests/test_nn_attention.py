"""Scaled dot-product attention (aten/attention.py) against torch.func on both CPU backends.

F.scaled_dot_product_attention on the CPU reaches aten._scaled_dot_product_flash_attention_for_cpu
(or torch's Python math path, for a value head size of its own, grouped-query attention or dropout),
which torch cannot differentiate in forward mode: tangents are checked against torch.func.jvp of the
attention formula written out by hand.  The CUDA ops are called directly (their meta functions give
the output shapes they would have on a GPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same, make, random_like
from nn_checks import check_op, opaque_ops
from vmap_helpers import check_vmap_error

import tritonfunc

aten = torch.ops.aten
Q, K, V = make(2, 2, 3, 4, seed=1), make(2, 2, 5, 4, seed=2), make(2, 2, 5, 4, seed=3)
BOOL_MASK = torch.tensor([[True, False, True, True, False], [False] * 5, [True, True, False, False, True]])
FLOAT_MASK = make(3, 5, seed=4)


def by_hand(q, k, v, mask=None, causal=False, scale=None):
    """softmax(q k^T * scale + mask) v, rows with every key masked giving 0 (torch's attention)."""
    scores = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, -math.inf)
    elif mask is not None:
        scores = scores + mask
    empty = (scores == -math.inf).all(-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)
    return weights @ v


SDPA = [
    ("plain", lambda q, k, v: F.scaled_dot_product_attention(q, k, v), {}),
    ("causal", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), {"causal": True}),
    ("bool_mask", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=BOOL_MASK), {"mask": BOOL_MASK}),
    ("float_mask", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=FLOAT_MASK), {"mask": FLOAT_MASK}),
    ("scale", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.3), {"scale": 0.3}),
]


@pytest.mark.parametrize("f, ref", [pytest.param(f, ref, id=n) for n, f, ref in SDPA])
def test_scaled_dot_product_attention(backend, f, ref):
    check_op(f, Q, K, V, jvp=False)
    check_forward_mode(f, lambda q, k, v: by_hand(q, k, v, **ref), second_order=f is SDPA[1][1])


def check_forward_mode(f, ref, second_order=False):
    """jvp (and, optionally, jvp of grad) of f against torch.func's of the formula written by hand."""
    tangents = random_like((Q, K, V), 1)
    assert_same(tritonfunc.jvp(f, (Q, K, V), tangents), torch.func.jvp(ref, (Q, K, V), tangents), "jvp")
    if second_order:
        weights = random_like(f(Q, K, V), 2)
        loss = lambda g: lambda q: (g(q, K, V) * weights).sum()  # noqa: E731
        got = tritonfunc.jvp(tritonfunc.grad(loss(f)), (Q,), tangents[:1])
        want = torch.func.jvp(torch.func.grad(loss(ref)), (Q,), tangents[:1])
        assert_same(got, want, "jvp(grad)")


def test_causal_attention_with_more_queries_than_keys(backend):
    check_op(lambda q, k: F.scaled_dot_product_attention(q, k, k, is_causal=True), K, Q, jvp=False)


def test_attention_with_a_value_head_size_of_its_own(backend):
    check_op(lambda q, k, v: F.scaled_dot_product_attention(q, k, v[..., :3]), Q, K, V)


def test_grouped_query_attention(backend):
    def f(q, k, v):
        return F.scaled_dot_product_attention(q.reshape(1, 4, 3, 4), k[:1], v[:1], enable_gqa=True)

    def ref(q, k, v):
        return by_hand(q.reshape(1, 4, 3, 4), k[:1].repeat_interleave(2, 1), v[:1].repeat_interleave(2, 1))

    check_op(f, Q, K, V, jvp=False)
    check_forward_mode(f, ref)


FUSED_OPS = [
    (
        "flash_cpu_outputs",
        lambda q, k, v: aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=FLOAT_MASK),
    ),
    (
        "flash_cpu_masked_rows",
        lambda q, k, v: aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, attn_mask=torch.zeros(3, 5, dtype=torch.float64).masked_fill(~BOOL_MASK, -math.inf)
        ),
    ),
    ("math_op_bool_mask_added", lambda q, k, v: aten._scaled_dot_product_attention_math(q, k, v, BOOL_MASK)),
    (
        "math_op_dropout_mask",
        lambda q, k, v: aten._scaled_dot_product_attention_math(q, k, v, None, 0.5, dropout_mask=BOOL_MASK),
    ),
    (
        "safe_softmax_masked_rows",
        lambda q, k, v: aten._safe_softmax(
            q @ k.transpose(-1, -2) + torch.zeros(3, 5, dtype=torch.float64).masked_fill(~BOOL_MASK, -math.inf), -1
        ),
    ),
]


@pytest.mark.parametrize("f", [pytest.param(f, id=n) for n, f in FUSED_OPS])
def test_attention_ops_and_their_outputs(backend, f):
    """Every output (logsumexp included, 0 on fully masked rows as torch's CPU kernel gives)."""
    check_op(f, Q, K, V, jvp=f is not FUSED_OPS[0][1] and f is not FUSED_OPS[1][1])


CUDA_OPS = [
    ("efficient", lambda q, k, v: aten._scaled_dot_product_efficient_attention(q, k, v, None, True, is_causal=True), 4),
    ("efficient_no_lse", lambda q, k, v: aten._scaled_dot_product_efficient_attention(q, k, v, FLOAT_MASK, False), 4),
    ("flash", lambda q, k, v: aten._scaled_dot_product_flash_attention(q, k, v, scale=0.5), 9),
    ("cudnn", lambda q, k, v: aten._scaled_dot_product_cudnn_attention(q, k, v, None, True), 9),
]


@pytest.mark.parametrize("f, n_out", [pytest.param(f, n, id=name) for name, f, n in CUDA_OPS])
def test_cuda_attention_ops_give_their_outputs_in_their_shapes(f, n_out):
    """Each CUDA op (traced on the CPU) gives as many outputs as it has, in the shapes of its meta
    function; output and logsumexp agree with the CPU op's."""
    outs = tritonfunc.jit(f)(Q, K, V)
    metas = f(*(t.to("meta") for t in (Q, K, V)))
    assert len(outs) == n_out
    for got, meta in zip(outs, metas):
        if isinstance(meta, torch.Tensor):
            assert got.shape == meta.shape and got.dtype == meta.dtype
        else:
            assert got == meta
    assert not opaque_ops(f, Q, K, V)


def test_attention_dropout_through_torchs_math_path():
    """dropout_p > 0 takes torch's math path, whose draw is lowered: vmap refuses it in randomness
    "error" mode as torch.func does, and dropping everything (p = 1) gives zeros."""
    f = lambda q: F.scaled_dot_product_attention(q, K[0], V[0], dropout_p=0.5)  # noqa: E731
    check_vmap_error(f, Q)
    out = tritonfunc.vmap(f, randomness="different")(Q)
    assert out.shape == (2, 2, 3, 4) and out.isfinite().all()
    with pytest.raises(
        NotImplementedError, match="tritonfunc: _scaled_dot_product_flash_attention_for_cpu with dropout_p"
    ):
        tritonfunc.jit(lambda q: aten._scaled_dot_product_flash_attention_for_cpu(q, K, V, 0.5))(Q)


def test_attention_under_vmap_of_grad(backend):
    """Per-sample gradients through attention: vmap(grad) against torch.func."""
    weights = random_like(Q[0], 5)

    def loss(q, k, v):
        return (F.scaled_dot_product_attention(q, k, v, is_causal=True) * weights).sum()

    got = tritonfunc.vmap(tritonfunc.grad(loss, argnums=(0, 1, 2)))(Q, K, V)
    want = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2)))(Q, K, V)
    assert_same(got, want, "vmap(grad)")
