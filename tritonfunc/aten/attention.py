"""Scaled dot-product attention: the fused attention ops torch's dispatcher picks (flash for the CPU;
efficient, flash and cuDNN on CUDA) and its math op, all as the math formula

    out = safe_softmax(q @ k^T * scale + mask) @ v,    logsumexp = log(sum(exp(q @ k^T * scale + mask)))

with each op's outputs in its own shapes.  Rows whose every key is masked give 0 (and a logsumexp of
0 from the CPU flash kernel, as it does).  The scores and the weighted sum are contractions
(dot_general: tensor-core GEMMs where they are large enough), the softmax between them fuses with
what surrounds it, and every transform applies.  Dropout is not fused
here: torch takes its Python math path for dropout_p > 0, whose random draws are lowered elsewhere.
"""

from __future__ import annotations

import math

import torch

from .. import primitives as P
from ..graph import DTYPES, Builder, Var
from . import aten, lowers
from .nn import safe_softmax


def _contract(b: Builder, a: Var, c: Var) -> Var:
    """[..., M, K] x [..., N, K] -> [..., M, N]: one contraction over the shared last axis, batched over
    the leading axes (broadcast to one shape first)."""
    *batch_a, m, k = a.shape
    *batch_c, n, _ = c.shape
    batch = tuple(max(x, y) for x, y in zip(batch_a, batch_c))
    a, c = b.broadcast_to(a, (*batch, m, k)), b.broadcast_to(c, (*batch, n, k))
    nb = len(batch)
    return P.dot_general(a, c, contract=((nb + 1,), (nb + 1,)), batch=(tuple(range(nb)), tuple(range(nb))))


def _repeat_heads(b: Builder, x: Var, heads: int) -> Var:
    """Grouped-query attention: each of x's heads serves heads // x_heads query heads (a view)."""
    *batch, h, s, e = x.shape
    if h == heads:
        return x
    group = heads // h
    nb = len(batch)
    spread = b.broadcast_in_dim(x, shape=(*batch, h, group, s, e), dims=(*range(nb), nb, nb + 2, nb + 3))
    return b.reshape(spread, (*batch, heads, s, e))


def _transposed(b: Builder, v: Var) -> Var:
    return b.transpose(v, (*range(len(v.shape) - 2), len(v.shape) - 1, len(v.shape) - 2))


def attention(b: Builder, q, k, v, mask=None, is_causal=False, scale=None, additive_bool=False, dropped=None):
    """(out, logsumexp, weights) of softmax(q k^T scale + mask) v, computed in q's dtype (float32 for
    half).  A boolean mask keeps the keys where it is True; with `additive_bool` it is added as 0/1
    instead, as torch's math op does with a boolean mask it is handed directly.  `dropped(weights)`
    applies a dropout to the weights before they meet v."""
    dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q, k, v = b.cast(q, dtype), b.cast(k, dtype), b.cast(v, dtype)
    heads = q.shape[-3] if len(q.shape) >= 3 else None
    if heads is not None and len(k.shape) >= 3 and k.shape[-3] != heads:
        k, v = _repeat_heads(b, k, heads), _repeat_heads(b, v, heads)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = _contract(b, q, k) * scale
    shape = scores.shape
    length, keys = shape[-2], shape[-1]
    if is_causal:  # query i sees keys j <= i (the top-left triangle, as torch's causal mask)
        rows = b.iota(shape=(length, keys), dim=0, dtype=torch.int64)
        causal = b.broadcast_to(b.ge(rows, b.iota(shape=(length, keys), dim=1, dtype=torch.int64)), shape)
        scores = b.where(causal, scores, b.like(scores, -math.inf))
    if mask is not None:
        if mask.dtype == torch.bool and not additive_bool:
            scores = b.where(b.broadcast_to(mask, shape), scores, b.like(scores, -math.inf))
        else:
            scores = scores + b.broadcast_to(b.cast(mask, dtype), shape)
    weights = safe_softmax(b, scores, len(shape) - 1)
    if dropped is not None:
        weights = dropped(weights)
    out = _contract(b, weights, _transposed(b, v))
    m = b.stop_gradient(b.reduce_max(scores, axes=(len(shape) - 1,)))
    masked = b.eq(m, b.like(m, -math.inf))
    m = b.where(masked, b.like(m, 0), m)
    total = b.reduce_sum(
        b.exp(scores - b.broadcast_in_dim(m, shape=shape, dims=tuple(range(len(shape) - 1)))), axes=(len(shape) - 1,)
    )
    lse = b.where(masked, b.like(m, 0), b.log(total) + m)
    return out, lse, weights


def _no_dropout(op: str, dropout_p: float) -> None:
    if dropout_p > 0:
        raise NotImplementedError(
            f"tritonfunc: {op} with dropout_p={dropout_p} is not supported (attention dropout is not fused); "
            "use dropout_p=0, or F.scaled_dot_product_attention on the CPU, which takes torch's math path for dropout"
        )


def _lse_as(b: Builder, lse: Var, meta, fill=math.inf) -> Var:
    """The logsumexp in the op's own shape: [..., L], padded ([..., L padded to 32] for the efficient
    kernel; its padding holds no values, `fill` here), or [..., L, 1] (cuDNN); empty when not computed."""
    lse = b.stop_gradient(b.cast(lse, meta.dtype))  # torch does not differentiate it
    if 0 in meta.shape:
        return b.full(0, meta.dtype, meta.shape)
    if meta.shape[-1] == 1 and len(meta.shape) == len(lse.shape) + 1:
        return b.reshape(lse, meta.shape)
    extra = meta.shape[-1] - lse.shape[-1]
    if extra:
        lse = b.concatenate(lse, b.full(fill, lse.dtype, (*lse.shape[:-1], extra)), axis=len(lse.shape) - 1)
    return lse


def _placeholder(b: Builder, meta):
    """An output these formulas have no use for (random-state, debug mask): zeros of its shape, None
    and ints as the op gives them."""
    if isinstance(meta, torch.Tensor) and meta.dtype in DTYPES:
        return b.full(0, meta.dtype, tuple(meta.shape))
    if isinstance(meta, torch.Tensor):  # flash's uint64 random state: a constant, no kernel writes it
        return b.const(torch.zeros(meta.shape, dtype=meta.dtype, device=b.device))
    return meta


def _refuse_bool_bias(mask) -> None:
    if mask is not None and mask.dtype == torch.bool:
        raise RuntimeError(
            "scaled_dot_product_attention_flash_attention: Attention mask is the same data type as query"
        )


@lowers(aten._scaled_dot_product_flash_attention_for_cpu)
def _flash_cpu(b, out, q, k, v, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
    _no_dropout("_scaled_dot_product_flash_attention_for_cpu", dropout_p)
    _refuse_bool_bias(attn_mask)
    o, lse, _ = attention(b, q, k, v, attn_mask, is_causal, scale)
    return b.cast(o, out[0].dtype), _lse_as(b, lse, out[1])


@lowers(aten._scaled_dot_product_efficient_attention)
def _efficient(b, out, q, k, v, attn_bias, compute_log_sumexp, dropout_p=0.0, is_causal=False, *, scale=None):
    _no_dropout("_scaled_dot_product_efficient_attention", dropout_p)
    o, lse, _ = attention(b, q, k, v, attn_bias, is_causal, scale)
    return b.cast(o, out[0].dtype), _lse_as(b, lse, out[1]), _placeholder(b, out[2]), _placeholder(b, out[3])


def _flash_like(b, out, q, k, v, attn_bias, dropout_p, is_causal, scale, op):
    _no_dropout(op, dropout_p)
    o, lse, _ = attention(b, q, k, v, attn_bias, is_causal, scale)
    return (b.cast(o, out[0].dtype), _lse_as(b, lse, out[1]), *[_placeholder(b, m) for m in out[2:]])


@lowers(aten._scaled_dot_product_flash_attention.default)
def _flash(b, out, q, k, v, dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None):
    return _flash_like(b, out, q, k, v, None, dropout_p, is_causal, scale, "_scaled_dot_product_flash_attention")


@lowers(aten._scaled_dot_product_cudnn_attention)
def _cudnn(
    b,
    out,
    q,
    k,
    v,
    attn_bias,
    compute_log_sumexp,
    dropout_p=0.0,
    is_causal=False,
    return_debug_mask=False,
    *,
    scale=None,
):
    return _flash_like(b, out, q, k, v, attn_bias, dropout_p, is_causal, scale, "_scaled_dot_product_cudnn_attention")


@lowers(aten._scaled_dot_product_fused_attention_overrideable)
def _overrideable(
    b, out, q, k, v, attn_bias=None, dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None
):
    op = "_scaled_dot_product_fused_attention_overrideable"
    return _flash_like(b, out, q, k, v, attn_bias, dropout_p, is_causal, scale, op)


@lowers(aten._scaled_dot_product_attention_math)
def _math(
    b, out, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, dropout_mask=None, *, scale=None, enable_gqa=False
):
    """(out, attention weights); a dropout only through a given dropout_mask (nothing is drawn)."""
    if dropout_p > 0 and dropout_mask is None:
        _no_dropout("_scaled_dot_product_attention_math", dropout_p)

    def dropped(weights):
        if dropout_p == 0:
            return weights
        kept = b.where(b.broadcast_to(dropout_mask, weights.shape), weights, b.like(weights, 0))
        return kept * (1 / (1 - dropout_p))

    o, _, weights = attention(b, q, k, v, attn_mask, is_causal, scale, additive_bool=True, dropped=dropped)
    return b.cast(o, out[0].dtype), b.cast(weights, out[1].dtype)
