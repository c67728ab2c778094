"""Neural-network composites with lowerings of their own: the normalizations (layer, RMS, group and
batch norm), the softmax family and nll_loss."""

from __future__ import annotations

import math

import torch

from .. import primitives as P
from ..graph import Var
from . import Updates, aten, lowers
from .reductions import dims

# -- normalizations -------------------------------------------------------------------------------
# Statistics are computed in float32 for half inputs (as torch does), and in two passes (mean, then
# the mean of squared deviations).  A row whose variance overflows gets NaN, never 0: torch's Welford
# updates give NaN or 0 for such rows depending on the order of its updates, and a silent 0 would
# hide the overflow.


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _moments(b, x: Var, axes, eps: float) -> tuple[Var, Var, Var, Var]:
    """(mean, x - mean, rstd, biased variance) over `axes`; the statistics keep x's rank."""
    count = math.prod(x.shape[a] for a in axes)
    mean = b.reduce(P.reduce_sum, x, axes, keepdim=True) / count
    centered = x - b.broadcast_to(mean, x.shape)
    var = b.reduce(P.reduce_sum, centered * centered, axes, keepdim=True) / count
    rstd = b.where(b.eq(var, b.like(var, math.inf)), b.like(var, math.nan), b.rsqrt(var + eps))
    return mean, centered, rstd, var


def _affine(b, y: Var, weight, bias, dims) -> Var:
    """y * weight + bias, the parameters laid along `dims` of y."""
    if weight is not None:
        y = y * b.broadcast_in_dim(b.cast(weight, y.dtype), shape=y.shape, dims=dims)
    if bias is not None:
        y = y + b.broadcast_in_dim(b.cast(bias, y.dtype), shape=y.shape, dims=dims)
    return y


@lowers(aten.native_layer_norm)
def _layer_norm(b, out, x, normalized_shape, weight, bias, eps):
    xc = b.cast(x, _compute_dtype(x.dtype))
    axes = tuple(range(len(x.shape) - len(normalized_shape), len(x.shape)))
    mean, centered, rstd, _ = _moments(b, xc, axes, eps)
    y = _affine(b, centered * b.broadcast_to(rstd, x.shape), weight, bias, axes)
    return b.cast(y, out[0].dtype), *_saved(b, (mean, rstd), out[1:])


def _saved(b, stats, metas) -> tuple[Var, ...]:
    """Statistics returned beside the result, which torch does not differentiate."""
    return tuple(b.stop_gradient(b.cast(v, m.dtype)) for v, m in zip(stats, metas))


@lowers(aten._fused_rms_norm)
def _rms_norm(b, out, x, normalized_shape, weight, eps):
    dtype = _compute_dtype(x.dtype)
    if eps is None:
        eps = torch.finfo(torch.float32 if dtype == torch.float32 else torch.float64).eps
    xc = b.cast(x, dtype)
    axes = tuple(range(len(x.shape) - len(normalized_shape), len(x.shape)))
    mean_square = b.reduce(P.reduce_sum, xc * xc, axes, keepdim=True) / math.prod(x.shape[a] for a in axes)
    rstd = b.rsqrt(mean_square + eps)
    y = _affine(b, xc * b.broadcast_to(rstd, x.shape), weight, None, axes)
    return b.cast(y, out[0].dtype), b.cast(rstd, out[1].dtype)


@lowers(aten.native_group_norm)
def _group_norm(b, out, x, weight, bias, n, c, hw, groups, eps):
    dtype = _compute_dtype(x.dtype)
    grouped = b.reshape(b.cast(x, dtype), (n, groups, (c // groups) * hw))
    mean, centered, rstd, _ = _moments(b, grouped, (2,), eps)
    y = b.reshape(centered * b.broadcast_to(rstd, grouped.shape), (n, c, hw))
    y = b.reshape(_affine(b, y, weight, bias, (1,)), x.shape)
    stats = (n, groups)
    return (
        b.cast(y, out[0].dtype),
        b.cast(b.reshape(mean, stats), out[1].dtype),
        b.cast(b.reshape(rstd, stats), out[2].dtype),
    )


def _batch_norm(b, out, x, weight, bias, running_mean, running_var, training, momentum, eps):
    """(y, saved mean, saved rstd, new running mean, new running var) as torch's batch norm gives
    them; the new running statistics are None without running statistics.  Running statistics
    carry no derivative, as in torch (which refuses to differentiate them)."""
    dtype = _compute_dtype(x.dtype)
    xc = b.cast(x, dtype)
    channel = (1,)
    c = x.shape[1]
    if training:
        axes = (0, *range(2, len(x.shape)))
        mean, centered, rstd, var = _moments(b, xc, axes, eps)
        y = centered * b.broadcast_to(rstd, x.shape)
        saved_mean, saved_rstd = b.reshape(mean, (c,)), b.reshape(rstd, (c,))
        new_mean = new_var = None
        if running_mean is not None:
            new_mean = momentum * b.stop_gradient(saved_mean) + (1 - momentum) * b.cast(running_mean, dtype)
        if running_var is not None:
            n = x.numel // c
            unbiased = b.stop_gradient(b.reshape(var, (c,))) * (n / (n - 1))
            new_var = momentum * unbiased + (1 - momentum) * b.cast(running_var, dtype)
    else:
        mean, var = b.cast(running_mean, dtype), b.cast(running_var, dtype)
        rstd = 1 / b.sqrt(var + eps)
        y = (xc - b.broadcast_in_dim(mean, shape=x.shape, dims=channel)) * b.broadcast_in_dim(
            rstd, shape=x.shape, dims=channel
        )
        # torch's CPU kernel saves nothing in eval mode (its meta function says otherwise); other
        # devices save the statistics used.
        cpu = b.device is not None and b.device.type == "cpu"
        saved_mean, saved_rstd = (b.full(0, dtype, (0,)),) * 2 if cpu else (mean, rstd)
        new_mean, new_var = running_mean, running_var
    y = _affine(b, y, weight, bias, channel)
    return b.cast(y, out[0].dtype), *_saved(b, (saved_mean, saved_rstd), out[1:3]), new_mean, new_var


def _updating(result, running_mean, running_var, new_mean, new_var, positions):
    """The result of a batch norm that updates its running statistics in place (train mode)."""
    if running_mean is None:
        return result
    return Updates(result, {positions[0]: new_mean, positions[1]: new_var})


@lowers(aten.native_batch_norm, aten._native_batch_norm_legit.default)
def _native_batch_norm(b, out, x, weight, bias, running_mean, running_var, training, momentum, eps):
    y, mean, rstd, new_mean, new_var = _batch_norm(
        b, out, x, weight, bias, running_mean, running_var, training, momentum, eps
    )
    if not training:
        return y, mean, rstd
    return _updating((y, mean, rstd), running_mean, running_var, new_mean, new_var, (3, 4))


@lowers(aten._native_batch_norm_legit.no_stats)
def _batch_norm_no_stats(b, out, x, weight, bias, training, momentum, eps):
    return _batch_norm(b, out, x, weight, bias, None, None, training, momentum, eps)[:3]


@lowers(aten._native_batch_norm_legit_no_training)
def _batch_norm_no_training(b, out, x, weight, bias, running_mean, running_var, momentum, eps):
    return _batch_norm(b, out, x, weight, bias, running_mean, running_var, False, momentum, eps)[:3]


@lowers(aten._native_batch_norm_legit_functional)
def _batch_norm_functional(b, out, x, weight, bias, running_mean, running_var, training, momentum, eps):
    y, mean, rstd, new_mean, new_var = _batch_norm(
        b, out, x, weight, bias, running_mean, running_var, training, momentum, eps
    )
    return y, mean, rstd, b.cast(new_mean, out[3].dtype), b.cast(new_var, out[4].dtype)


def _reserve(b, meta) -> Var:
    return b.full(0, meta.dtype, meta.shape)  # cuDNN's workspace: nothing to keep here


@lowers(aten._batch_norm_with_update)
def _batch_norm_with_update(b, out, x, weight, bias, running_mean, running_var, momentum, eps):
    y, mean, rstd, new_mean, new_var = _batch_norm(
        b, out, x, weight, bias, running_mean, running_var, True, momentum, eps
    )
    return _updating((y, mean, rstd, _reserve(b, out[3])), running_mean, running_var, new_mean, new_var, (3, 4))


@lowers(aten._batch_norm_with_update_functional)
def _batch_norm_with_update_functional(b, out, x, weight, bias, running_mean, running_var, momentum, eps):
    y, mean, rstd, new_mean, new_var = _batch_norm(
        b, out, x, weight, bias, running_mean, running_var, True, momentum, eps
    )
    return y, mean, rstd, _reserve(b, out[3]), b.cast(new_mean, out[4].dtype), b.cast(new_var, out[5].dtype)


@lowers(aten._batch_norm_no_update)
def _batch_norm_no_update(b, out, x, weight, bias, running_mean, running_var, momentum, eps):
    y, mean, rstd, _, _ = _batch_norm(b, out, x, weight, bias, running_mean, running_var, False, momentum, eps)
    return y, mean, rstd, _reserve(b, out[3])


# -- the softmax family ------------------------------------------------------------------------------
# The row maximum is subtracted for stability and wrapped in stop_gradient: the result does not
# depend on it mathematically, so its derivative (a tie-sharing mask and two more reductions) would
# only add work and rounding.  Rows holding +inf give NaN, as torch's kernels do (inf - inf); rows of
# -inf only give what torch gives: NaN for softmax and log_softmax, 0 for _safe_softmax, -inf for
# logsumexp.


def _shifted(b, x: Var, axes, also_plus_inf: bool = False) -> tuple[Var, Var]:
    """(x - max, max) over `axes`, the maximum kept with keepdim shape and no gradient.  A maximum of
    -inf (and of +inf, for logsumexp) is replaced by 0, as torch does."""
    m = b.stop_gradient(b.reduce(P.reduce_max, x, axes, keepdim=True))
    infinite = b.eq(b.abs(m) if also_plus_inf else m, b.like(m, math.inf if also_plus_inf else -math.inf))
    m = b.where(infinite, b.like(m, 0), m)
    return x - b.broadcast_to(m, x.shape), m


def _softmax_parts(b, x: Var, dim: int) -> tuple[Var, Var]:
    """(exp(x - max), its sum over `dim`, keepdim)."""
    z, _ = _shifted(b, x, (dim,))
    e = b.exp(z)
    return e, b.reduce(P.reduce_sum, e, (dim,), keepdim=True)


def _softmax_dtype(out, x: Var, dtype=None) -> torch.dtype:
    return _compute_dtype(out.dtype if dtype is None else dtype)


@lowers(aten._softmax)
def _softmax(b, out, x, dim, half_to_float):
    e, total = _softmax_parts(b, b.cast(x, _softmax_dtype(out, x)), dim)
    return b.cast(e / b.broadcast_to(total, e.shape), out.dtype)


@lowers(aten._log_softmax)
def _log_softmax(b, out, x, dim, half_to_float):
    xc = b.cast(x, _softmax_dtype(out, x))
    z, _ = _shifted(b, xc, (dim,))
    lse = b.log(b.reduce(P.reduce_sum, b.exp(z), (dim,), keepdim=True))
    return b.cast(z - b.broadcast_to(lse, xc.shape), out.dtype)


# softmax.int and log_softmax.int reach the trace from inside torch's decompositions.
lowers(aten.softmax.int)(lambda b, out, x, dim, dtype=None: _softmax(b, out, x, dim % max(len(x.shape), 1), False))
lowers(aten.log_softmax.int)(
    lambda b, out, x, dim, dtype=None: _log_softmax(b, out, x, dim % max(len(x.shape), 1), False)
)


def safe_softmax(b, x: Var, dim: int) -> Var:
    """softmax, with 0 (and a zero derivative) on rows that are -inf throughout, such as attention
    rows whose every key is masked: only there is the sum of exponentials 0 (the maximum gives 1)."""
    e, total = _softmax_parts(b, x, dim)
    empty = b.eq(total, b.like(total, 0))
    return e / b.broadcast_to(b.where(empty, b.like(total, 1), total), e.shape)


@lowers(aten._safe_softmax)
def _safe_softmax(b, out, x, dim, dtype=None):
    xc = b.cast(x, _softmax_dtype(out, x))
    return b.cast(safe_softmax(b, xc, dim % max(len(x.shape), 1)), out.dtype)


@lowers(aten.logsumexp)
def _logsumexp(b, out, x, dim, keepdim=False):
    x = b.cast(x, _compute_dtype(out.dtype))
    axes = dims(x, dim)
    z, m = _shifted(b, x, axes, also_plus_inf=True)
    lse = b.log(b.reduce(P.reduce_sum, b.exp(z), axes, keepdim=True)) + m
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
