"""Shapes and indexing: views (free inside a kernel), slices, concatenation, integer-tensor
indexing and gather (a one-hot select and a sum: no data-dependent addresses)."""

from __future__ import annotations

import math

import torch

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


def _check_index_range(idx: Var, size: int, builder: Builder) -> None:
    """Out-of-range indices raise as in torch when they are known (a captured tensor)."""
    for value, var in zip(builder.const_values, builder.const_vars.values()):
        if var is idx and value.numel() and ((value >= size) | (value < -size)).any():
            bad = value[(value >= size) | (value < -size)].flatten()[0].item()
            raise IndexError(f"index {bad} is out of bounds for dimension with size {size}")


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
    x_dims = tuple(rank if k == dim else k for k in range(rank))
    return _one_hot_pick(b, x, rank, idx, full_shape, x_dims, tuple(range(rank)))
