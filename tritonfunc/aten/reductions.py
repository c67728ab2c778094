"""Reductions: sums, extrema, products, means, variances and norms."""

from __future__ import annotations

import math

from .. import primitives as P
from ..graph import Var
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


@lowers(aten.var)
def _var(b, out, x, dim=None, *, correction=None, keepdim=False):
    dtype = out.dtype
    x = b.cast(x, dtype)
    axes = dims(x, dim)
    count = math.prod(x.shape[a] for a in axes)
    total = b.reduce(P.reduce_sum, x, axes, keepdim=True)
    mean = b.emit(P.div, [total, b.full(count, dtype, total.shape)])
    centered = b.emit(P.sub, [x, b.broadcast_to(mean, x.shape)])
    ss = b.reshape(b.reduce(P.reduce_sum, b.emit(P.mul, [centered, centered]), axes, keepdim), out.shape)
    dof = count - (1 if correction is None else correction)
    var = b.emit(P.div, [ss, b.full(max(dof, 0), dtype, out.shape)])
    return var


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
