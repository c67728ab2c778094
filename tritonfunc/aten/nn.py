"""Neural-network composites with lowerings of their own: layer_norm, the softmax family, nll_loss."""

from __future__ import annotations

import math

import torch

from .. import primitives as P
from ..graph import Var
from . import aten, lowers
from .reductions import dims


@lowers(aten.native_layer_norm)
def _layer_norm(b, out, x, normalized_shape, weight, bias, eps):
    dtype = out[0].dtype
    x = b.cast(x, dtype)
    axes = tuple(range(len(x.shape) - len(normalized_shape), len(x.shape)))
    count = math.prod(x.shape[a] for a in axes)
    stat_shape = out[1].shape
    mean = b.emit(P.div, [b.reduce(P.reduce_sum, x, axes, keepdim=True), b.full(count, dtype, stat_shape)])
    centered = b.emit(P.sub, [x, b.broadcast_to(mean, x.shape)])
    var = b.emit(
        P.div,
        [
            b.reduce(P.reduce_sum, b.emit(P.mul, [centered, centered]), axes, keepdim=True),
            b.full(count, dtype, stat_shape),
        ],
    )
    rstd = b.emit(P.rsqrt, [b.emit(P.add, [var, b.full(eps, dtype, stat_shape)])])
    y = b.emit(P.mul, [centered, b.broadcast_to(rstd, x.shape)])
    if weight is not None:
        y = b.emit(P.mul, [y, b.operand(weight, dtype, x.shape)])
    if bias is not None:
        y = b.emit(P.add, [y, b.operand(bias, dtype, x.shape)])
    return y, mean, rstd


# Softmax-family lowerings subtract the row maximum for stability.  The maximum is wrapped in
# stop_gradient: the result does not depend on it mathematically, so its derivative (a tie-sharing
# mask and two more reductions) would only add work and rounding.


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _shifted(b, x: Var, axes) -> tuple[Var, Var]:
    """(x - max, max) over `axes`, the maximum kept with keepdim shape and no gradient."""
    m = b.stop_gradient(b.reduce(P.reduce_max, x, axes, keepdim=True))
    inf = b.like(m, math.inf)
    m = b.where(b.eq(b.abs(m), inf), b.like(m, 0), m)  # all -inf rows: keep them -inf, not nan
    return b.sub(x, b.broadcast_to(m, x.shape)), m


@lowers(aten._softmax)
def _softmax(b, out, x, dim, half_to_float):
    x = b.cast(x, _compute_dtype(out.dtype))
    z, _ = _shifted(b, x, (dim,))
    e = b.exp(z)
    return b.cast(b.div(e, b.broadcast_to(b.reduce(P.reduce_sum, e, (dim,), keepdim=True), x.shape)), out.dtype)


@lowers(aten._log_softmax)
def _log_softmax(b, out, x, dim, half_to_float):
    x = b.cast(x, _compute_dtype(out.dtype))
    z, _ = _shifted(b, x, (dim,))
    lse = b.log(b.reduce(P.reduce_sum, b.exp(z), (dim,), keepdim=True))
    return b.cast(b.sub(z, b.broadcast_to(lse, x.shape)), out.dtype)


@lowers(aten.logsumexp)
def _logsumexp(b, out, x, dim, keepdim=False):
    x = b.cast(x, _compute_dtype(out.dtype))
    axes = dims(x, dim)
    z, m = _shifted(b, x, axes)
    lse = b.add(b.log(b.reduce(P.reduce_sum, b.exp(z), axes, keepdim=True)), m)
    return b.cast(b.reshape(lse, out.shape), out.dtype)


@lowers(aten.nll_loss_forward)
def _nll_loss(b, out, x, target, weight, reduction, ignore_index):
    """Picks -x[n, target[n]] with a one-hot mask (a gather that fuses with the softmax before it)."""
    dtype = x.dtype
    batched = len(x.shape) == 2
    if not batched:
        x, target = b.reshape(x, (1, x.shape[0])), b.reshape(target, (1,))
    n, c = x.shape
    classes = b.iota(shape=(n, c), dim=1, dtype=target.dtype)
    onehot = b.eq(classes, b.emit(P.broadcast_in_dim, [target], shape=(n, c), dims=(0,)))
    zero = b.full(0, dtype, (n, c))
    picked = b.reduce_sum(b.where(onehot, x, zero), axes=(1,))
    valid = b.ne(target, b.full(ignore_index, target.dtype, (n,)))
    if weight is None:
        w = b.convert(valid, dtype=dtype)
    else:  # torch.func does not differentiate the class weights
        wc = b.emit(P.broadcast_in_dim, [b.stop_gradient(b.cast(weight, dtype))], shape=(n, c), dims=(1,))
        w = b.where(valid, b.reduce_sum(b.where(onehot, wc, zero), axes=(1,)), b.full(0, dtype, (n,)))
    losses = b.neg(b.mul(picked, w))
    total_weight = b.reduce_sum(w, axes=(0,))
    if reduction == 0:
        result = losses if batched else b.reshape(losses, ())
    elif reduction == 2:
        result = b.reduce_sum(losses, axes=(0,))
    else:
        result = b.div(b.reduce_sum(losses, axes=(0,)), total_weight)
    return result, total_weight
