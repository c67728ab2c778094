"""Scatters, indexed updates and embedding lookups as one-hot selects and sums: no data-dependent
addresses, so they fuse with their neighbours and run the same on every backend.

Each output position compares itself with every index (an iota against the broadcast index), sums
the values whose index hits it and counts the hits; then out = x where nothing hit, else the
reduction of what was written there.  The work is (indices x positions) along the indexed axis,
which suits the small index sets of model code, and every derivative is a select of the same form.
A plain scatter or index_put of several values whose indices may repeat runs as torch's own call:
torch writes one of the repeated values (the last, on the CPU) and its derivative hands the
gradient of that position to each of them, which a sum of the hits cannot give.  Ops or modes
without a fused form here run as torch calls (fallback.py).

Out-of-range indices raise torch's own error when they are known while tracing (a captured tensor);
an index computed inside the function cannot be checked, and then hits nothing.
"""

from __future__ import annotations

import torch

from .. import fallback
from .. import primitives as P
from ..graph import Builder, Var
from . import aten, lowers
from .shapes import check_range, one_hot_too_wide


def _wrapped(b: Builder, idx: Var, size: int) -> Var:
    """Negative indices count from the end."""
    return b.where(b.lt(idx, b.like(idx, 0)), idx + size, idx)


def _hits(b: Builder, idx: Var, axis: int, shape, idx_dims) -> Var:
    """hit = (idx == position along `axis`) over `shape`, idx laid along `idx_dims`."""
    spread = b.broadcast_in_dim(idx, shape=tuple(shape), dims=tuple(idx_dims))
    return b.eq(spread, b.iota(shape=tuple(shape), dim=axis, dtype=idx.dtype))


def _sum_hits(b: Builder, hit: Var, values: Var, axes) -> tuple[Var, Var]:
    """(sum of the values that hit, number of hits) over `axes`."""
    count_dtype = values.dtype if values.dtype.is_floating_point else torch.int64
    total = b.reduce_sum(b.where(hit, values, b.like(values, 0)), axes=tuple(axes))
    count = b.reduce_sum(b.convert(hit, dtype=count_dtype), axes=tuple(axes))
    return total, count


def _written(count: Var) -> Var:
    return P.gt(count, P.like(count, 0))


def _pad_to(b: Builder, v: Var, shape) -> Var:
    """v in the leading corner of `shape`, zeros elsewhere (an index tensor may cover less of x)."""
    if v.shape == tuple(shape):
        return v
    zeros = (0,) * len(shape)
    return b.pad(v, lo=zeros, hi=tuple(n - m for n, m in zip(shape, v.shape)), interior=zeros)


def _corner(b: Builder, v: Var, shape) -> Var:
    """The leading corner of v with `shape`."""
    if v.shape == tuple(shape):
        return v
    return b.slice(v, start=(0,) * len(shape), stop=tuple(shape), step=(1,) * len(shape))


# -- scatter: x.scatter(dim, index, src) writes src[i][j] at out[index[i][j]][j] (dim 0) -------------

_SCATTER_RANGE = "index {index} is out of bounds for dimension %d with size %d"


class _Scatter:
    """The comparisons of one scatter: `full` is index's shape with x's `dim` axis inserted after
    `dim` (axis dim: the source row, axis dim + 1: the destination), `region` the part of x that
    index reaches (index's shape with x's extent along dim)."""

    def __init__(self, b: Builder, x: Var, dim: int, index: Var, src):
        self.b, self.x = b, x
        d = self.dim = dim % len(x.shape)
        check_range(b, index, x.shape[d], RuntimeError, _SCATTER_RANGE % (d, x.shape[d]), negative_ok=False)
        ishape = index.shape
        self.full = (*ishape[: d + 1], x.shape[d], *ishape[d + 1 :])
        self.region = (*ishape[:d], x.shape[d], *ishape[d + 1 :])
        self.idx_dims = tuple(k if k <= d else k + 1 for k in range(len(ishape)))
        self.hit = _hits(b, index, d + 1, self.full, self.idx_dims)
        if isinstance(src, Var):
            self.values = b.broadcast_in_dim(
                _corner(b, b.cast(src, x.dtype), ishape), shape=self.full, dims=self.idx_dims
            )
        else:
            self.values = b.full(src, x.dtype, self.full)
        self.total, self.count = _sum_hits(b, self.hit, self.values, (d,))

    def place(self, region_value: Var) -> Var:
        """x, with `region_value` where something was written."""
        b = self.b
        written = _pad_to(b, _written(self.count), self.x.shape)
        return b.where(written, _pad_to(b, region_value, self.x.shape), self.x)

    def extremum(self, prim, include_self: bool) -> Var:
        """The max (min) of what is written at each position, and of x there with include_self, as one
        reduction: ties share the derivative evenly, as torch's scatter_reduce does."""
        b, d = self.b, self.dim
        fill = P.lowest(self.x.dtype) if prim is P.reduce_max else P.highest(self.x.dtype)
        candidates = b.where(self.hit, self.values, b.like(self.values, fill))
        x_region = _corner(b, self.x, self.region)
        if include_self:
            own = b.reshape(x_region, (*self.region[:d], 1, *self.region[d:]))
            candidates = b.concatenate(candidates, own, axis=d)
        return b.where(_written(self.count), b.reduce(prim, candidates, (d,)), x_region)


def _scalar_rank(lower):
    """Runs a scatter lowering on 0-d tensors as 1-element ones (torch allows dim 0 of a scalar)."""

    def run(b, out, x, dim, index, *args, **kwargs):
        if len(x.shape) > 0:
            return lower(b, out, x, dim, index, *args, **kwargs)
        args = [b.reshape(a, (1,)) if isinstance(a, Var) else a for a in args]
        return b.reshape(lower(b, out, b.reshape(x, (1,)), 0, b.reshape(index, (1,)), *args, **kwargs), ())

    return run


@lowers(aten.scatter.src, aten.scatter.value)
@_scalar_rank
def _scatter(b, out, x, dim, index, src):
    if index.numel == 0:
        return b.copy(x)
    d = dim % len(x.shape)
    if isinstance(src, Var) and _scatter_may_repeat(b, index, d):  # torch's choice among repeats
        return fallback.emit_aten(aten.scatter.src, (x, dim, index, src), {}, out)
    s = _Scatter(b, x, dim, index, src)
    return s.place(s.total if isinstance(src, Var) else b.full(src, x.dtype, s.region))


@lowers(aten.scatter_add)
@_scalar_rank
def _scatter_add(b, out, x, dim, index, src):
    if index.numel == 0:
        return b.copy(x)
    s = _Scatter(b, x, dim, index, src)
    return x + _pad_to(b, s.total, x.shape)


@lowers(aten.scatter.reduce, aten.scatter.value_reduce)
def _scatter_with_reduce(b, out, x, dim, index, src, *, reduce):
    if reduce == "add":
        return _scatter_add(b, out, x, dim, index, src)
    func = aten.scatter.reduce if isinstance(src, Var) else aten.scatter.value_reduce
    return fallback.emit_aten(func, (x, dim, index, src), {"reduce": reduce}, out)


@lowers(aten.scatter_reduce.two)
def _scatter_reduce(b, out, x, dim, index, src, reduce, *, include_self=True):
    fused = reduce in ("sum", "amax", "amin") or (reduce == "mean" and x.dtype.is_floating_point)
    if not fused or len(x.shape) == 0:  # prod's derivative through zeros, integer means: torch's own
        return fallback.emit_aten(
            aten.scatter_reduce.two, (x, dim, index, src, reduce), {"include_self": include_self}, out
        )
    if index.numel == 0:
        return b.copy(x)
    s = _Scatter(b, x, dim, index, src)
    if reduce in ("amax", "amin"):
        return s.place(s.extremum(P.reduce_max if reduce == "amax" else P.reduce_min, include_self))
    total, count = _pad_to(b, s.total, x.shape), _pad_to(b, s.count, x.shape)
    if reduce == "sum":
        return x + total if include_self else b.where(_written(count), total, x)
    if include_self:  # where nothing was written this is x / 1
        return (x + total) / (count + 1)
    return b.where(_written(count), total / b.where(_written(count), count, b.like(count, 1)), x)


# -- index_put: x[i1, i2, ...] = values (or += with accumulate) ----------------------------------------


def _index_put_parts(b: Builder, x: Var, indices, values: Var, range_error: tuple | None = None):
    """(sum of the values written at each position of x, number of writes) for x[indices] = values,
    or None when the indices are not adjacent integer tensors.  `range_error` (error type, message)
    replaces index_put's own out-of-range error."""
    positions = [d for d, i in enumerate(indices) if i is not None]
    if not positions or positions != list(range(positions[0], positions[-1] + 1)):
        return None
    if any(indices[d].dtype == torch.bool for d in positions):
        return None
    idx_shape = tuple(torch.broadcast_shapes(*[indices[d].shape for d in positions]))
    first, last, n = positions[0], positions[-1], len(idx_shape)
    pre, post = x.shape[:first], x.shape[last + 1 :]
    full = (*pre, *idx_shape, *[x.shape[d] for d in positions], *post)
    written_shape = (*pre, *idx_shape, *post)  # the shape of x[indices]
    values = b.broadcast_to(b.cast(values, x.dtype), written_shape)
    kept = (*range(len(pre) + n), *range(len(pre) + n + len(positions), len(full)))
    values = b.broadcast_in_dim(values, shape=full, dims=kept)
    hit = None
    for k, d in enumerate(positions):
        size = x.shape[d]
        error, message = range_error or (
            IndexError,
            f"index {{index}} is out of bounds for dimension {k} with size {size}",
        )
        check_range(b, indices[d], size, error, message, negative_ok=True)
        idx = _wrapped(b, indices[d], size)
        lead = n - len(idx.shape)
        this = _hits(b, idx, len(pre) + n + k, full, range(len(pre) + lead, len(pre) + n))
        hit = this if hit is None else b.logical_and(hit, this)
    return _sum_hits(b, hit, values, range(len(pre), len(pre) + n))


def _mask_put(b: Builder, x: Var, indices, values: Var, accumulate: bool) -> Var | None:
    """x[mask] = v for one boolean mask and a single value (the only form whose shapes do not depend
    on how many elements the mask selects)."""
    masks = [(d, i) for d, i in enumerate(indices) if i is not None]
    if len(masks) != 1 or masks[0][1].dtype != torch.bool or values.numel != 1:
        return None
    d, mask = masks[0]
    mask = b.broadcast_in_dim(mask, shape=x.shape, dims=tuple(range(d, d + len(mask.shape))))
    v = b.broadcast_to(b.reshape(b.cast(values, x.dtype), ()), x.shape)
    return b.where(mask, x + v if accumulate else v, x)


@lowers(aten.index_put, aten._unsafe_index_put)
def _index_put(b, out, x, indices, values, accumulate=False):
    indices = list(indices)
    masked = _mask_put(b, x, indices, values, accumulate)
    if masked is not None:
        return masked
    # One value written however many times an index repeats: exact, when no derivative flows to it
    # (torch's would count each repeat).
    one_value = values.numel == 1 and _fixed(b, values)
    if not accumulate and not one_value and _may_repeat(b, x, indices):  # torch's choice among repeats
        return fallback.emit_aten(aten.index_put.default, (x, indices, values, accumulate), {}, out)
    parts = _index_put_parts(b, x, indices, b.reshape(values, ()) if one_value and not accumulate else values)
    if parts is None:  # index tensors apart, or a mask selecting several values
        return fallback.emit_aten(aten.index_put.default, (x, indices, values, accumulate), {}, out)
    total, count = parts
    if accumulate:
        return x + total
    if one_value:  # every write is the same value, however many land on one place
        return b.where(_written(count), b.broadcast_to(b.cast(b.reshape(values, ()), x.dtype), x.shape), x)
    return b.where(_written(count), total, x)


def _fixed(b: Builder, v: Var) -> bool:
    """Whether v is a captured (or lifted: `x[i] = 0.0`) tensor that does not require grad."""
    value = b.const_value(v)
    return isinstance(value, torch.Tensor) and not value.requires_grad


def _made(b: Builder, v: Var) -> torch.Tensor | None:
    """v's value when the function made it from Python data (`torch.tensor([0, 2])` inside it): fixed
    by its code, unlike a captured tensor's, which is read anew at each call."""
    value = b.const_value(v)
    local = getattr(b, "local", {})
    return value if isinstance(value, torch.Tensor) and local.get(id(value)) is value else None


def _scatter_may_repeat(b: Builder, index: Var, d: int) -> bool:
    """Whether two entries of index along d (the others fixed) may be equal."""
    if index.shape[d] <= 1:
        return False
    known = _made(b, index)
    if known is None:
        return True
    ordered = known.sort(dim=d).values
    n = index.shape[d]
    return bool((ordered.narrow(d, 1, n - 1) == ordered.narrow(d, 0, n - 1)).any())


def _may_repeat(b: Builder, x: Var, indices) -> bool:
    """Whether x[indices] may name one element twice."""
    positions = [d for d, i in enumerate(indices) if i is not None]
    if not positions or any(indices[d].dtype == torch.bool for d in positions):
        return True
    shape = torch.broadcast_shapes(*[indices[d].shape for d in positions])
    if torch.Size(shape).numel() <= 1:
        return False
    known = [_made(b, indices[d]) for d in positions]
    if any(k is None for k in known):
        return True
    key = torch.zeros(shape, dtype=torch.int64)
    for d, k in zip(positions, known):  # the element's offset among the indexed axes
        key = key * x.shape[d] + torch.where(k < 0, k + x.shape[d], k).expand(shape)
    return key.flatten().unique().numel() < key.numel()


def _along(dim: int, index: Var, rank: int) -> list:
    """index_put's indices for index along `dim`."""
    return [None] * dim + [index] + [None] * (rank - dim - 1)


@lowers(aten.index_add)
def _index_add(b, out, x, dim, index, source, *, alpha=1):
    if len(x.shape) == 0:
        return fallback.emit_aten(aten.index_add.default, (x, dim, index, source), {"alpha": alpha}, out)
    dim = dim % len(x.shape)
    message = f"index {{index}} is out of bounds for dimension {dim} with size {x.shape[dim]}"
    check_range(b, index, x.shape[dim], RuntimeError, message, negative_ok=False)
    source = b.cast(source, x.dtype)
    if alpha != 1:
        source = source * alpha
    total, _ = _index_put_parts(b, x, _along(dim, index, len(x.shape)), source)
    return x + total


@lowers(aten.index_fill.int_Scalar, aten.index_fill.int_Tensor)
def _index_fill(b, out, x, dim, index, value):
    if len(x.shape) == 0 or len(index.shape) > 1:
        func = aten.index_fill.int_Tensor if isinstance(value, Var) else aten.index_fill.int_Scalar
        return fallback.emit_aten(func, (x, dim, index, value), {}, out)
    dim = dim % len(x.shape)
    message = f"index {{index}} is out of bounds for dimension {dim} with size {x.shape[dim]}"
    check_range(b, index, x.shape[dim], IndexError, message, negative_ok=True)
    if index.numel == 0:
        return b.copy(x)
    index = b.reshape(_wrapped(b, index, x.shape[dim]), (index.numel,))
    hits = b.convert(_hits(b, index, dim + 1, (index.numel, *x.shape), (0,)), dtype=torch.int32)
    return b.where(_written(b.reduce_sum(hits, axes=(0,))), b.operand(value, x.dtype, x.shape), x)


# -- embedding ----------------------------------------------------------------------------------------


@lowers(aten.embedding)
def _embedding(b, out, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    """weight[indices].  torch's derivative skips the rows of padding_idx in reverse mode only (its
    forward-mode derivative is the plain lookup's): the padding lookups are recomputed in a no_grad
    node, which reverse mode treats as constant and forward mode differentiates, as torch does."""
    if scale_grad_by_freq or sparse:  # gradients scaled by counts, or sparse: torch's own
        args = (weight, indices, padding_idx, scale_grad_by_freq, sparse)
        return fallback.emit_aten(aten.embedding.default, args, {}, out)
    rows = weight.shape[0]
    check_range(b, indices, rows, IndexError, "index out of range in self", negative_ok=False)
    full = (*indices.shape, rows, weight.shape[1])
    if one_hot_too_wide(full, weight):  # a large vocabulary: torch's lookup by address
        args = (weight, indices, padding_idx, scale_grad_by_freq, sparse)
        return fallback.emit_aten(aten.embedding.default, args, {}, out)
    rank = len(indices.shape)
    hit = _hits(b, indices, rank, full, range(rank))
    table = b.broadcast_in_dim(weight, shape=full, dims=(rank, rank + 1))
    picked = b.reduce_sum(b.where(hit, table, b.like(table, 0)), axes=(rank,))
    if padding_idx is None or padding_idx < 0:
        return picked
    is_padding = b.eq(indices, b.like(indices, padding_idx))
    is_padding = b.broadcast_in_dim(is_padding, shape=picked.shape, dims=tuple(range(rank)))
    return b.where(is_padding, b.emit(P.copy, [picked], no_grad=True), picked)
