"""Shapes and indexing: views (free inside a kernel), slices, concatenation, integer-tensor
indexing and gather (a one-hot select and a sum: no data-dependent addresses)."""

from __future__ import annotations

import math

import torch

from .. import fallback
from .. import primitives as P
from ..graph import Builder, Var
from . import aten, lowers, prims_ops


@lowers(aten.view, aten._unsafe_view, aten.reshape, prims_ops.reshape, view=True)
def _view(b, out, x, shape):
    return b.reshape(x, out.shape)


@lowers(aten.expand, view=True)
def _expand(b, out, x, size, *, implicit=False):
    return b.broadcast_to(x, out.shape)


@lowers(prims_ops.broadcast_in_dim)
def _prims_broadcast(b, out, x, shape, dims):
    return b.emit(P.broadcast_in_dim, [x], shape=tuple(out.shape), dims=tuple(dims))


@lowers(aten.permute, view=True)
def _permute(b, out, x, dims):
    return b.transpose(x, [d % len(x.shape) for d in dims])


@lowers(aten.transpose, view=True)
def _transpose(b, out, x, d0, d1):
    perm = list(range(len(x.shape)))
    if perm:
        d0, d1 = d0 % len(perm), d1 % len(perm)
        perm[d0], perm[d1] = perm[d1], perm[d0]
    return b.transpose(x, perm)


@lowers(aten.t, view=True)
def _t(b, out, x):
    return b.transpose(x, list(range(len(x.shape)))[::-1])


@lowers(aten.unsqueeze, aten.squeeze, prims_ops.squeeze, view=True)
def _reshape_like(b, out, x, *args):
    return b.reshape(x, out.shape)


@lowers(aten.slice, view=True)
def _slice(b, out, x, dim=0, start=None, end=None, step=1):
    dim = dim % len(x.shape)
    size = x.shape[dim]
    start, end, _ = slice(start, end, step).indices(size)
    end = max(end, start)
    starts, stops, steps = [0] * len(x.shape), list(x.shape), [1] * len(x.shape)
    starts[dim], stops[dim], steps[dim] = start, end, step
    return b.emit(P.slice_, [x], start=tuple(starts), stop=tuple(stops), step=tuple(steps))


@lowers(aten.select, view=True)
def _select(b, out, x, dim, index):
    dim = dim % len(x.shape)
    index = index % x.shape[dim] if -x.shape[dim] <= index < x.shape[dim] else index
    sl = _slice(b, None, x, dim, index, index + 1, 1)
    return b.reshape(sl, out.shape)


@lowers(aten.split, aten.split_with_sizes, view=True)
def _split(b, out, x, sizes, dim=0):
    dim = dim % len(x.shape)
    pieces, start = [], 0
    for o in out:
        n = o.shape[dim]
        pieces.append(_slice(b, None, x, dim, start, start + n, 1))
        start += n
    return pieces


@lowers(aten.unbind, view=True)
def _unbind(b, out, x, dim=0):
    return [_select(b, o, x, dim, i) for i, o in enumerate(out)]


@lowers(aten.cat)
def _cat(b, out, tensors, dim=0):
    parts = [b.cast(t, out.dtype) for t in tensors if math.prod(t.shape) > 0]
    if not parts:
        return b.full(0, out.dtype, out.shape)
    if len(parts) == 1:
        return b.reshape(parts[0], out.shape)
    return b.emit(P.concatenate, parts, axis=dim % len(out.shape))


# -- gathers, as a one-hot select and a sum over the indexed axis (no data-dependent addresses) ------


def check_range(b: Builder, idx: Var, size: int, error: type, message: str, negative_ok: bool) -> None:
    """Raises `error(message)` (formatted with the bad `index`) for a captured index out of range:
    out-of-range indices raise as in torch when they are known."""
    value = b.const_value(idx)
    if isinstance(value, torch.Tensor) and value.numel():
        bad = (value >= size) | (value < (-size if negative_ok else 0))
        if bad.any():
            raise error(message.format(index=value[bad].flatten()[0].item()))


def _check_index_range(idx: Var, size: int, b: Builder) -> None:
    message = f"index {{index}} is out of bounds for dimension with size {size}"
    check_range(b, idx, size, IndexError, message, negative_ok=True)


# A one-hot select compares every index with every position along the indexed axis.  Where each
# table element meets few indices (cross-entropy's pick of one class per row) that costs what
# reading the table costs; where many indices meet a large table (a 50K-word embedding looked up
# by thousands of tokens) it is a cliff.  There the op is torch's own call, which loads by address.
ONE_HOT_LIMIT = 1 << 24  # comparisons
ONE_HOT_REUSE = 64  # comparisons per table element


def one_hot_too_wide(full_shape, table: Var) -> bool:
    work = math.prod(full_shape)
    return work > ONE_HOT_LIMIT and work > ONE_HOT_REUSE * max(table.numel, 1)


def _one_hot_pick(b: Builder, x: Var, axis: int, idx: Var, full_shape, x_dims, idx_dims) -> Var:
    """sum_k where(k == idx, x, 0) over `axis` of `full_shape`."""
    size = full_shape[axis]
    _check_index_range(idx, size, b)
    idx = b.where(b.lt(idx, b.like(idx, 0)), b.add(idx, b.like(idx, size)), idx)  # negative indices wrap
    xb = b.broadcast_in_dim(x, shape=full_shape, dims=x_dims)
    ib = b.broadcast_in_dim(idx, shape=full_shape, dims=idx_dims)
    hit = b.eq(b.iota(shape=full_shape, dim=axis, dtype=idx.dtype), ib)
    return b.reduce_sum(b.where(hit, xb, b.full(0, x.dtype, full_shape)), axes=(axis,))


@lowers(aten.index)
def _index(b, out, x, indices):
    """x[..., i1, i2, ...] with adjacent integer index tensors (broadcast together): a one-hot
    select over the indexed axes, summed."""
    positions = [d for d, i in enumerate(indices) if i is not None]
    if any(indices[d].dtype == torch.bool for d in positions) or positions != list(
        range(positions[0], positions[-1] + 1)
    ):
        raise NotImplementedError(
            "tritonfunc: indexing with a boolean mask, or with index tensors separated by a slice "
            "(aten.index.Tensor), is not supported"
        )
    first, last = positions[0], positions[-1]
    idx_shape = tuple(torch.broadcast_shapes(*[indices[d].shape for d in positions]))
    pre, post, n = x.shape[:first], x.shape[last + 1 :], len(idx_shape)
    picked_axes = tuple(range(len(pre) + n, len(pre) + n + len(positions)))
    full_shape = (*pre, *idx_shape, *[x.shape[d] for d in positions], *post)
    if one_hot_too_wide(full_shape, x):
        return fallback.emit_aten(aten.index.Tensor, (x, indices), {}, out)
    x_dims = (*range(len(pre)), *picked_axes, *range(picked_axes[-1] + 1, len(full_shape)))
    xb = b.broadcast_in_dim(x, shape=full_shape, dims=x_dims)
    hit = None
    for d, axis in zip(positions, picked_axes):
        idx = indices[d]
        size = x.shape[d]
        _check_index_range(idx, size, b)
        idx = b.where(b.lt(idx, b.like(idx, 0)), b.add(idx, b.like(idx, size)), idx)  # negative indices wrap
        lead = len(idx_shape) - len(idx.shape)
        ib = b.broadcast_in_dim(idx, shape=full_shape, dims=tuple(range(len(pre) + lead, len(pre) + n)))
        this = b.eq(b.iota(shape=full_shape, dim=axis, dtype=idx.dtype), ib)
        hit = this if hit is None else b.logical_and(hit, this)
    return b.reduce_sum(b.where(hit, xb, b.full(0, x.dtype, full_shape)), axes=picked_axes)


@lowers(aten.gather)
def _gather(b, out, x, dim, idx, *, sparse_grad=False):
    dim = dim % max(len(x.shape), 1)
    if any(i != s for k, (i, s) in enumerate(zip(idx.shape, x.shape)) if k != dim):
        x = b.slice(
            x,
            start=(0,) * len(x.shape),
            stop=tuple(s if k == dim else i for k, (i, s) in enumerate(zip(idx.shape, x.shape))),
            step=(1,) * len(x.shape),
        )
    rank = len(idx.shape)
    full_shape = (*idx.shape, x.shape[dim])
    if one_hot_too_wide(full_shape, x):
        return fallback.emit_aten(aten.gather.default, (x, dim, idx), {"sparse_grad": sparse_grad}, out)
    x_dims = tuple(rank if k == dim else k for k in range(rank))
    return _one_hot_pick(b, x, rank, idx, full_shape, x_dims, tuple(range(rank)))


# -- flips, rolls, pads and diagonals: views (index rules), so they fuse with what reads them -------


@lowers(aten.flip)
def _flip(b, out, x, dims):
    axes = tuple(sorted({d % len(x.shape) for d in dims})) if x.shape else ()
    return b.rev(x, axes=axes) if axes else b.copy(x)


@lowers(aten.roll)
def _roll(b, out, x, shifts, dims=()):
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    if not dims:  # over the flattened tensor
        return b.reshape(_roll(b, None, b.reshape(x, (x.numel,)), shifts, (0,)), x.shape)
    y = x
    for shift, dim in zip(shifts, [dims] if isinstance(dims, int) else dims):
        dim = dim % len(x.shape)
        n = x.shape[dim]
        s = shift % n if n else 0
        if s:  # the last s elements, then the rest
            y = b.concatenate(_slice(b, None, y, dim, n - s, n), _slice(b, None, y, dim, 0, n - s), axis=dim)
    return y if y is not x else b.copy(x)


def _pairs(x: Var, padding) -> list[tuple[int, int, int]]:
    """torch's pad list (last axis first, (before, after) each) as (axis, before, after)."""
    return [(len(x.shape) - 1 - i, padding[2 * i], padding[2 * i + 1]) for i in range(len(padding) // 2)]


@lowers(aten.constant_pad_nd)
def _constant_pad(b, out, x, pad, value=0):
    for axis, before, after in _pairs(x, pad):  # negative padding crops
        if before < 0 or after < 0:
            x = _slice(b, None, x, axis, max(-before, 0), x.shape[axis] - max(-after, 0))
    lo, hi = [0] * len(x.shape), [0] * len(x.shape)
    for axis, before, after in _pairs(x, pad):
        lo[axis], hi[axis] = max(before, 0), max(after, 0)
    zeros = (0,) * len(x.shape)
    padded = b.pad(x, lo=tuple(lo), hi=tuple(hi), interior=zeros)
    if value == 0:
        return padded
    inside = b.pad(b.full(True, torch.bool, x.shape), lo=tuple(lo), hi=tuple(hi), interior=zeros)
    return b.where(inside, padded, b.like(padded, value))


def _edge_pad(mode: str):
    """reflection_padNd / replication_padNd: each padded axis as a concatenation of views of x."""

    def lower(b, out, x, padding):
        y = x
        for axis, before, after in _pairs(x, padding):
            n = x.shape[axis]
            if before < 0 or after < 0 or (mode == "reflect" and max(before, after) >= n):
                raise NotImplementedError(f"tritonfunc: {mode} padding by {padding} of a size-{n} axis")
            pieces = [_edge(b, y, axis, before, mode, first=True), y, _edge(b, y, axis, after, mode, first=False)]
            pieces = [p for p in pieces if p is not None]
            y = b.concatenate(*pieces, axis=axis) if len(pieces) > 1 else y
        return y if y is not x else b.copy(x)

    return lower


def _edge(b, x: Var, axis: int, width: int, mode: str, first: bool) -> Var | None:
    """The `width` elements that pad one end of `axis`: mirrored (reflect) or repeated (replicate)."""
    if width == 0:
        return None
    n = x.shape[axis]
    if mode == "reflect":  # x[width:0:-1] before, x[n-2:n-2-width:-1] after
        start = 1 if first else n - 1 - width
        return b.rev(_slice(b, None, x, axis, start, start + width), axes=(axis,))
    edge = _slice(b, None, x, axis, 0 if first else n - 1, 1 if first else n)
    shape = tuple(width if d == axis else s for d, s in enumerate(x.shape))
    return b.broadcast_in_dim(edge, shape=shape, dims=tuple(range(len(shape))))


for _op in (aten.reflection_pad1d, aten.reflection_pad2d, aten.reflection_pad3d):
    lowers(_op)(_edge_pad("reflect"))
for _op in (aten.replication_pad1d, aten.replication_pad2d, aten.replication_pad3d):
    lowers(_op)(_edge_pad("replicate"))


def _diagonal_layout(n1: int, n2: int, offset: int) -> tuple[int, int, int]:
    """(first flat position, step, length) of a diagonal in an n1 x n2 row-major matrix."""
    length = max(0, min(n1, n2 - offset) if offset >= 0 else min(n1 + offset, n2))
    return (offset if offset >= 0 else -offset * n2), n2 + 1, length


@lowers(aten.diagonal, view=True)
def _diagonal(b, out, x, offset=0, dim1=0, dim2=1):
    """The diagonal as a strided slice of the matrix axes flattened (moved last first)."""
    dim1, dim2 = dim1 % len(x.shape), dim2 % len(x.shape)
    rest = [d for d in range(len(x.shape)) if d not in (dim1, dim2)]
    n1, n2 = x.shape[dim1], x.shape[dim2]
    flat = b.reshape(b.transpose(x, rest + [dim1, dim2]), (*[x.shape[d] for d in rest], n1 * n2))
    start, step, length = _diagonal_layout(n1, n2, offset)
    if length == 0:
        return b.full(0, x.dtype, (*flat.shape[:-1], 0))
    return _slice(b, None, flat, len(rest), start, start + (length - 1) * step + 1, step)


lowers(aten.diagonal_copy)(lambda b, out, *args, **kwargs: b.copy(_diagonal(b, out, *args, **kwargs)))


@lowers(aten.diag_embed)
def _diag_embed(b, out, x, offset=0, dim1=-2, dim2=-1):
    """The last axis of x on a diagonal of two new axes: a pad (the adjoint of _diagonal's slice)."""
    ndim = len(x.shape) + 1
    dim1, dim2 = dim1 % ndim, dim2 % ndim
    length = x.shape[-1]
    n = length + abs(offset)
    start, step, _ = _diagonal_layout(n, n, offset)
    lo = (0,) * (len(x.shape) - 1) + (start,)
    hi = (0,) * (len(x.shape) - 1) + (n * n - start - max(length - 1, 0) * step - min(length, 1),)
    flat = b.pad(x, lo=lo, hi=hi, interior=(0,) * (len(x.shape) - 1) + (step - 1,))
    matrix = b.reshape(flat, (*x.shape[:-1], n, n))
    rest = iter(range(ndim - 2))
    perm = [ndim - 2 if d == dim1 else ndim - 1 if d == dim2 else next(rest) for d in range(ndim)]
    return b.transpose(matrix, perm)


@lowers(aten.diag)
def _diag(b, out, x, diagonal=0):
    if len(x.shape) == 1:
        return _diag_embed(b, out, x, diagonal, 0, 1)
    return b.copy(_diagonal(b, out, x, diagonal))


@lowers(aten.trace)
def _trace(b, out, x):
    return b.reduce_sum(_diagonal(b, None, x), axes=(0,))
