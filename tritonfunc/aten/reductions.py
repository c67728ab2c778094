"""Reductions: sums, extrema, products, means, variances and norms."""

from __future__ import annotations

import math

import torch

from .. import fallback
from .. import primitives as P
from ..graph import Var
from ..schedule import MAX_ROW_TILE
from . import aten, lowers, prims_ops


def dims(x: Var, dim) -> tuple[int, ...]:
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return tuple(range(len(x.shape)))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(d % max(len(x.shape), 1) for d in dims) if x.shape else ()


def _reduction(prim):
    def lower(b, out, x, dim=None, keepdim=False, *, dtype=None):
        x = b.cast(x, out.dtype)
        return b.reshape(b.reduce(prim, x, dims(x, dim), keepdim), out.shape)

    return lower


lowers(aten.sum)(_reduction(P.reduce_sum))
lowers(aten.amax, aten.max.default)(_reduction(P.reduce_max))
lowers(aten.amin, aten.min.default)(_reduction(P.reduce_min))
lowers(aten.any, aten.any.default)(_reduction(P.reduce_max))
lowers(aten.all, aten.all.default)(_reduction(P.reduce_min))


@lowers(aten.prod)
def _prod(b, out, x, dim=None, keepdim=False, *, dtype=None):
    return _reduction(P.reduce_prod)(b, out, x, dim, keepdim)


@lowers(aten.mean)
def _mean(b, out, x, dim=None, keepdim=False, *, dtype=None):
    x = b.cast(x, out.dtype)
    axes = dims(x, dim)
    s = b.reshape(b.reduce(P.reduce_sum, x, axes, keepdim), out.shape)
    count = math.prod(x.shape[a] for a in axes)
    return b.emit(P.div, [s, b.full(count, out.dtype, out.shape)])


def _var_and_mean(b, dtype, x, dim, correction, keepdim) -> tuple[Var, Var]:
    """Variance (with torch's correction, default 1) and mean over `dim`."""
    x = b.cast(x, dtype)
    axes = dims(x, dim)
    count = math.prod(x.shape[a] for a in axes)
    total = b.reduce(P.reduce_sum, x, axes, keepdim=True)
    mean = total / count
    centered = x - b.broadcast_to(mean, x.shape)
    ss = b.reduce(P.reduce_sum, centered * centered, axes, keepdim)
    dof = count - (1 if correction is None else correction)
    return ss / max(dof, 0), b.reshape(mean, ss.shape)


@lowers(aten.var)
def _var(b, out, x, dim=None, *, correction=None, keepdim=False):
    var, _ = _var_and_mean(b, out.dtype, x, dim, correction, keepdim)
    return b.reshape(var, out.shape)


@lowers(aten.var_mean)
def _var_mean(b, out, x, dim=None, *, correction=None, keepdim=False):
    var, mean = _var_and_mean(b, out[0].dtype, x, dim, correction, keepdim)
    return b.reshape(var, out[0].shape), b.reshape(mean, out[1].shape)


@lowers(aten.std_mean)
def _std_mean(b, out, x, dim=None, *, correction=None, keepdim=False):
    var, mean = _var_mean(b, out, x, dim, correction=correction, keepdim=keepdim)
    return safe_sqrt(b, var), mean


lowers(prims_ops.var)(
    lambda b, out, x, dims, correction=1, *, output_dtype=None: _var(b, out, x, dims, correction=correction)
)


def safe_sqrt(b, v: Var) -> Var:
    """sqrt with torch's derivative at 0 for std and norms: 0, not 0.5 / 0 (times 0 = nan)."""
    is_zero = P.eq(v, b.like(v, 0))
    return P.where(is_zero, b.like(v, 0), P.sqrt(P.where(is_zero, b.like(v, 1), v)))


@lowers(aten.std)
def _std(b, out, x, dim=None, **kw):
    return safe_sqrt(b, _var(b, out, x, dim, **kw))


@lowers(aten.linalg_vector_norm)
def _vector_norm(b, out, x, ord=2, dim=None, keepdim=False, *, dtype=None):
    """Norms with torch's derivative at zero: 0, not 0/0 (the root is taken of a value kept away from
    zero, then replaced by 0 where the sum is 0)."""
    x = b.cast(x, out.dtype)
    axes = dims(x, dim)
    ax = b.abs(x)
    if ord == math.inf or ord == -math.inf:
        return b.reshape(b.reduce(P.reduce_max if ord > 0 else P.reduce_min, ax, axes, keepdim), out.shape)
    if ord == 0:
        return b.reshape(
            b.reduce(P.reduce_sum, b.convert(b.ne(x, b.like(x, 0)), dtype=x.dtype), axes, keepdim), out.shape
        )
    if ord == 1:
        return b.reshape(b.reduce(P.reduce_sum, ax, axes, keepdim), out.shape)
    powered = b.mul(x, x) if ord == 2 else b.pow(ax, b.like(ax, ord))
    total = b.reshape(b.reduce(P.reduce_sum, powered, axes, keepdim), out.shape)
    zero = b.like(total, 0)
    is_zero = b.eq(total, zero)
    safe = b.where(is_zero, b.like(total, 1), total)
    root = b.sqrt(safe) if ord == 2 else b.pow(safe, b.like(safe, 1.0 / ord))
    return b.where(is_zero, zero, root)


# -- arg-extrema: the extremum, then the first index that attains it (NaN counts as the extremum,
#    as in torch).  Two reductions of one row kernel; max.dim/min.dim pick the value at that index,
#    so the whole derivative goes to it (torch's), not shared among ties as amax shares it.


def _first_index_of(b, x: Var, axis: int, prim) -> tuple[Var, Var]:
    """(the extremum with keepdim shape, the first index along `axis` attaining it, int64)."""
    extremum = b.reduce(prim, x, (axis,), keepdim=True)
    spread = b.broadcast_to(extremum, x.shape)
    hit = b.eq(x, spread)
    if x.dtype.is_floating_point:
        hit = b.logical_or(hit, b.logical_and(b.ne(x, x), b.ne(spread, spread)))
    n = x.shape[axis]
    position = b.iota(shape=x.shape, dim=axis, dtype=torch.int64)
    return extremum, b.reduce(P.reduce_min, b.where(hit, position, b.full(n, torch.int64, x.shape)), (axis,), True)


def _along(b, x: Var, dim) -> tuple[Var, int]:
    """x and the axis to reduce: all of x flattened when dim is None, a 0-d x as one element."""
    if dim is None or not x.shape:
        return b.reshape(x, (x.numel,)), 0
    return x, dim % len(x.shape)


def _arg_extremum(prim):
    def lower(b, out, x, dim=None, keepdim=False):
        x, axis = _along(b, x, dim)
        return b.reshape(_first_index_of(b, x, axis, prim)[1], out.shape)

    return lower


def _extremum_with_index(prim):
    def lower(b, out, x, dim, keepdim=False):
        x, axis = _along(b, x, dim)
        extremum, index = _first_index_of(b, x, axis, prim)
        if x.dtype.is_floating_point:  # the value at the index, so that its derivative goes there
            at_index = b.eq(b.iota(shape=x.shape, dim=axis, dtype=torch.int64), b.broadcast_to(index, x.shape))
            extremum = b.reduce(P.reduce_sum, b.where(at_index, x, b.like(x, 0)), (axis,), True)
        return b.reshape(extremum, out[0].shape), b.reshape(index, out[1].shape)

    return lower


lowers(aten.argmax)(_arg_extremum(P.reduce_max))
lowers(aten.argmin)(_arg_extremum(P.reduce_min))
lowers(aten.max.dim)(_extremum_with_index(P.reduce_max))
lowers(aten.min.dim)(_extremum_with_index(P.reduce_min))


# -- scans --------------------------------------------------------------------------------------


@lowers(aten.cumsum.default)
def _cumsum(b, out, x, dim, *, dtype=None):
    x = b.cast(x, out.dtype)
    if not x.shape or x.shape[dim % len(x.shape)] <= 1:
        return b.copy(x)
    axis = dim % len(x.shape)
    if x.shape[axis] > MAX_ROW_TILE:  # a scan keeps the whole row in registers: longer rows go to torch
        return fallback.emit_aten(aten.cumsum.default, (x, axis), {}, out)
    return b.cumsum(x, axis=axis, reverse=False)


def _torch_call(op):
    return lambda b, out, *args, **kwargs: fallback.emit_aten(op, args, kwargs, out)


# No fused scan for these: cumprod's derivative through zeros and logcumsumexp's rescaling along the
# row are torch's.  The op runs whole (not its decomposition into prims) so torch.func differentiates it.
lowers(aten.cumprod.default)(_torch_call(aten.cumprod.default))
lowers(aten.logcumsumexp.default)(_torch_call(aten.logcumsumexp.default))
