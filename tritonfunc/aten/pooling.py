"""Average pooling and nearest resampling as views, strided slices and small sums, so they fuse with
their neighbours and their derivatives are pads and slices (no scatter).

- avg_pool: the sum of kernel-many strided slices of the zero-padded input, divided by each window's
  element count (counted at trace time, per axis: windows are products of per-axis ranges).
- adaptive_avg_pool: an avg_pool when the size divides evenly; otherwise, per axis, a sum over the
  input weighted by a window mask built from iota (window i covers [floor(i n / o), ceil((i+1) n / o))).
- nearest upsampling: integer factors are a broadcast and a reshape (a view), integer downsampling a
  strided slice; other sizes pick source rows with a one-hot select, the source index computed in the
  kernel with torch's own float32 formula.
Max pooling and convolution run as torch calls (trace.TORCH_CALLS).
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import torch

from ..graph import Builder, Var
from . import aten, lowers


def _per_axis(value, nd: int) -> tuple[int, ...]:
    value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    return value * nd if len(value) == 1 else value


def _static_vector(b: Builder, values: list, dtype: torch.dtype) -> Var:
    """A vector of values known while tracing, built in the kernel: the most common value, with the
    few others (pooling windows at the borders) selected by position."""
    common = Counter(values).most_common(1)[0][0]
    vec = b.full(common, dtype, (len(values),))
    position = b.iota(shape=(len(values),), dim=0, dtype=torch.int64)
    for i, v in enumerate(values):
        if v != common:
            vec = b.where(b.eq(position, b.like(position, i)), b.like(vec, v), vec)
    return vec


def _window_counts(n: int, o: int, k: int, s: int, p: int, include_pad: bool) -> list[int]:
    """The number of elements each of the o windows of one axis averages (torch's divisor)."""
    counts = []
    for i in range(o):
        start = i * s - p
        end = min(start + k, n + p)
        counts.append(end - start if include_pad else min(end, n) - max(start, 0))
    return counts


def avg_pool(b: Builder, x: Var, out_shape, kernel, stride, padding, include_pad=True, divisor=None) -> Var:
    """Average pooling over the trailing len(kernel) axes of x."""
    nd = len(kernel)
    lead = len(x.shape) - nd
    spatial, outs = x.shape[lead:], tuple(out_shape[lead:])
    hi = [max(0, (o - 1) * s + k - n - p) for n, o, k, s, p in zip(spatial, outs, kernel, stride, padding)]
    padded = x
    if any(padding) or any(hi):
        zeros = (0,) * lead
        padded = b.pad(x, lo=(*zeros, *padding), hi=(*zeros, *hi), interior=(0,) * len(x.shape))
    total = None
    for offsets in itertools.product(*[range(k) for k in kernel]):
        stop = [off + (o - 1) * s + 1 for off, o, s in zip(offsets, outs, stride)]
        piece = b.slice(
            padded,
            start=(0,) * lead + offsets,
            stop=(*x.shape[:lead], *stop),
            step=(1,) * lead + tuple(stride),
        )
        total = piece if total is None else total + piece
    if divisor is not None:
        return total / divisor
    for axis, (n, o, k, s, p) in enumerate(zip(spatial, outs, kernel, stride, padding)):
        counts = _window_counts(n, o, k, s, p, include_pad)
        total = total / b.broadcast_in_dim(_static_vector(b, counts, x.dtype), shape=total.shape, dims=(lead + axis,))
    return total


def _avg_pool_lowering(nd: int):
    def lower(
        b, out, x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None
    ):
        kernel = _per_axis(kernel_size, nd)
        stride = _per_axis(stride, nd) if stride else kernel
        return avg_pool(b, x, out.shape, kernel, stride, _per_axis(padding, nd), count_include_pad, divisor_override)

    return lower


lowers(aten.avg_pool2d)(_avg_pool_lowering(2))
lowers(aten.avg_pool3d)(_avg_pool_lowering(3))


def _adaptive_axis(b: Builder, x: Var, axis: int, o: int) -> Var:
    """The adaptive average along one axis: window i is [floor(i n / o), ceil((i + 1) n / o))."""
    n = x.shape[axis]
    grid = (o, n)
    i = b.iota(shape=grid, dim=0, dtype=torch.int64)
    h = b.iota(shape=grid, dim=1, dtype=torch.int64)
    start = b.floordiv(i * n, b.like(i, o))
    end = b.floordiv((i + 1) * n + (o - 1), b.like(i, o))
    inside = b.logical_and(b.ge(h, start), b.lt(h, end))
    weights = b.convert(inside, dtype=x.dtype) / b.convert(end - start, dtype=x.dtype)
    shape = (*x.shape[:axis], o, n, *x.shape[axis + 1 :])
    spread = b.broadcast_in_dim(x, shape=shape, dims=(*range(axis), *range(axis + 1, len(shape))))
    return b.reduce_sum(spread * b.broadcast_in_dim(weights, shape=shape, dims=(axis, axis + 1)), axes=(axis + 1,))


def _adaptive_avg_pool(b, out, x, output_size):
    nd = len(output_size)
    lead = len(x.shape) - nd
    spatial = x.shape[lead:]
    if all(n % o == 0 for n, o in zip(spatial, output_size)):
        kernel = tuple(n // o for n, o in zip(spatial, output_size))
        return avg_pool(b, x, out.shape, kernel, kernel, (0,) * nd)
    y = x
    for axis, o in enumerate(output_size):
        y = _adaptive_axis(b, y, lead + axis, o)
    return y


lowers(aten._adaptive_avg_pool2d, aten._adaptive_avg_pool3d, aten.adaptive_avg_pool1d)(_adaptive_avg_pool)


# -- nearest upsampling ------------------------------------------------------------------------------


def _source_scale(n: int, o: int, scale) -> np.float32:
    """torch's compute_scales_value: 1 / scale_factor when one was given, else n / o, in float32."""
    if scale is not None and scale > 0:
        return np.float32(1.0 / scale)
    return np.float32(n) / np.float32(o)


def _source_rows(n: int, o: int, scale, exact: bool) -> list[int]:
    """The input row each output row copies, as torch's nearest_idx computes it."""
    if o == n and not exact:
        return list(range(o))
    if o == 2 * n and not exact:
        return [i >> 1 for i in range(o)]
    r = _source_scale(n, o, scale)
    shift = np.float32(0.5 if exact else 0.0)
    return [min(int(np.floor((np.float32(i) + shift) * r)), n - 1) for i in range(o)]


def _nearest_axis(b: Builder, x: Var, axis: int, o: int, scale, exact: bool) -> Var:
    n = x.shape[axis]
    rows = _source_rows(n, o, scale, exact)
    if rows == list(range(n)):
        return x
    if o % n == 0 and rows == [i // (o // n) for i in range(o)]:  # each row repeated: a view
        factor = o // n
        spread = b.broadcast_in_dim(
            x,
            shape=(*x.shape[: axis + 1], factor, *x.shape[axis + 1 :]),
            dims=(*range(axis + 1), *range(axis + 2, len(x.shape) + 1)),
        )
        return b.reshape(spread, (*x.shape[:axis], o, *x.shape[axis + 1 :]))
    step = rows[1] - rows[0] if o > 1 else 1
    if step > 0 and rows == [rows[0] + i * step for i in range(o)]:  # every step-th row: a strided slice
        start = [0] * len(x.shape)
        stop, steps = list(x.shape), [1] * len(x.shape)
        start[axis], stop[axis], steps[axis] = rows[0], rows[0] + (o - 1) * step + 1, step
        return b.slice(x, start=tuple(start), stop=tuple(stop), step=tuple(steps))
    # Any other size: the source row computed in the kernel, float32 as torch does, and picked.
    position = b.convert(b.iota(shape=(o,), dim=0, dtype=torch.int64), dtype=torch.float32)
    if exact:
        position = position + 0.5
    source = b.floor(position * float(_source_scale(n, o, scale)))
    source = b.convert(source, dtype=torch.int64)
    source = b.where(b.gt(source, b.like(source, n - 1)), b.like(source, n - 1), source)
    shape = (*x.shape[:axis], o, n, *x.shape[axis + 1 :])
    hit = b.eq(
        b.broadcast_in_dim(source, shape=shape, dims=(axis,)), b.iota(shape=shape, dim=axis + 1, dtype=torch.int64)
    )
    spread = b.broadcast_in_dim(x, shape=shape, dims=(*range(axis), *range(axis + 1, len(shape))))
    return b.reduce_sum(b.where(hit, spread, b.like(spread, 0)), axes=(axis + 1,))


def _nearest_lowering(nd: int, exact: bool):
    def lower(b, out, x, output_size, *scales):
        if len(scales) == 1 and (scales[0] is None or isinstance(scales[0], (list, tuple))):  # .vec
            scales = tuple(scales[0]) if scales[0] is not None else (None,) * nd
        scales = (tuple(scales) + (None,) * nd)[:nd]
        lead = len(x.shape) - nd
        y = x
        for axis, (o, scale) in enumerate(zip(out.shape[lead:], scales)):
            y = _nearest_axis(b, y, lead + axis, o, scale, exact)
        return y if y is not x else b.copy(x)

    return lower


for _nd, _ops in [
    (1, (aten.upsample_nearest1d, aten._upsample_nearest_exact1d)),
    (2, (aten.upsample_nearest2d, aten._upsample_nearest_exact2d)),
    (3, (aten.upsample_nearest3d, aten._upsample_nearest_exact3d)),
]:
    lowers(_ops[0])(_nearest_lowering(_nd, exact=False))
    lowers(_ops[1])(_nearest_lowering(_nd, exact=True))
