"""Elementwise ATen ops: math, comparisons, selects, casts and fills."""

from __future__ import annotations

import math

import torch

from .. import fallback
from .. import primitives as P
from ..graph import Var
from . import aten, lowers, prims_ops


def _unary(prim):
    return lambda b, out, x: b.emit(prim, [b.cast(x, out.dtype)])


for _op, _prim in [
    (aten.neg, P.neg),
    (aten.abs, P.abs_),
    (aten.exp, P.exp),
    (aten.log, P.log),
    (aten.log1p, P.log1p),
    (aten.expm1, P.expm1),
    (aten.sin, P.sin),
    (aten.cos, P.cos),
    (aten.tan, P.tan),
    (aten.tanh, P.tanh),
    (aten.sigmoid, P.sigmoid),
    (aten.sqrt, P.sqrt),
    (aten.rsqrt, P.rsqrt),
    (aten.reciprocal, P.reciprocal),
    (aten.erf, P.erf),
    (aten.floor, P.floor),
    (aten.ceil, P.ceil),
    (aten.sign, P.sign),
    (aten.logical_not, P.logical_not),
    (aten.exp2, P.exp2),
    (aten.log2, P.log2),
    (aten.log10, P.log10),
    (aten.sinh, P.sinh),
    (aten.cosh, P.cosh),
    (aten.asin, P.asin),
    (aten.acos, P.acos),
    (aten.atan, P.atan),
    (aten.asinh, P.asinh),
    (aten.acosh, P.acosh),
    (aten.atanh, P.atanh),
    (aten.erfc, P.erfc),
    (aten.erfinv, P.erfinv),
    (aten.lgamma, P.lgamma),
]:
    lowers(_op)(_unary(_prim))


@lowers(aten.digamma)
def _digamma(b, out, x):
    return b.polygamma(b.cast(x, out.dtype), n=0)


@lowers(aten.polygamma.default)
def _polygamma(b, out, n, x):
    if n > P.FUSED_POLYGAMMA:  # no kernel for the higher orders: torch's own
        return fallback.emit_aten(aten.polygamma.default, (n, x), {}, out)
    return b.polygamma(b.cast(x, out.dtype), n=n)


@lowers(aten.trunc)
def _trunc(b, out, x):
    return P.trunc(x) if x.dtype.is_floating_point else b.copy(x)


@lowers(aten.frac)
def _frac(b, out, x):
    return x - P.trunc(x)


@lowers(aten.round)
def _round(b, out, x, *, decimals=0):
    if not x.dtype.is_floating_point:
        return b.copy(x)
    if decimals == 0:
        return b.round(x)
    # torch scales by 10^|decimals| (one rounding), rounds half to even, and scales back.
    scale = 10.0 ** abs(decimals)
    return b.round(x * scale) / scale if decimals > 0 else b.round(x / scale) * scale


@lowers(aten.signbit)
def _signbit(b, out, x):
    if x.dtype == torch.bool:
        return b.full(False, torch.bool, out.shape)
    return b.signbit(x) if x.dtype.is_floating_point else b.lt(x, b.like(x, 0))


@lowers(aten.copysign)
def _copysign(b, out, x, sign):
    magnitude = b.abs(b.operand(x, out.dtype, out.shape))  # its derivative, sign(x), is torch's
    if not isinstance(sign, Var):
        return magnitude if math.copysign(1.0, sign) > 0 else -magnitude
    negative = _signbit(b, None, b.broadcast_to(sign, out.shape))
    return b.where(negative, -magnitude, magnitude)


@lowers(aten.nan_to_num)
def _nan_to_num(b, out, x, nan=None, posinf=None, neginf=None):
    if not x.dtype.is_floating_point:
        return b.copy(x)
    info = torch.finfo(x.dtype)
    fill = [(b.ne(x, x), 0.0 if nan is None else nan)]
    fill += [(b.eq(x, b.like(x, math.inf)), info.max if posinf is None else posinf)]
    fill += [(b.eq(x, b.like(x, -math.inf)), info.min if neginf is None else neginf)]
    y = x
    for hit, value in fill:  # selects: the derivative is 1 where x is finite, 0 elsewhere (torch's)
        y = b.where(hit, b.like(x, value), y)
    return y


@lowers(aten.isnan)
def _isnan(b, out, x):
    return b.ne(x, x) if x.dtype.is_floating_point else b.full(False, torch.bool, out.shape)


@lowers(aten.logical_xor)
def _logical_xor(b, out, a, c):
    shape = out.shape
    xor = b.ne(b.operand(a, torch.bool, shape), b.operand(c, torch.bool, shape))
    return b.cast(xor, out.dtype)


@lowers(aten.sinc)
def _sinc(b, out, x):
    # sin(pi x) / (pi x), 1 at 0; the quotient sees 1 there, so its derivative is finite (0 * nan).
    a = b.cast(x, out.dtype) * math.pi
    at_zero = b.eq(a, b.like(a, 0))
    safe = b.where(at_zero, b.like(a, 1), a)
    return b.where(at_zero, b.like(a, 1), b.sin(safe) / safe)


@lowers(aten.heaviside)
def _heaviside(b, out, x, values):
    # 0 below zero (and at NaN), 1 above, `values` at zero.  torch has no derivative for it; this
    # one is the mathematical one: none in x, 1 in `values` where x == 0.
    x, values = b.operand(x, out.dtype, out.shape), b.operand(values, out.dtype, out.shape)
    step = b.convert(b.gt(x, b.like(x, 0)), dtype=out.dtype)
    return b.where(b.eq(x, b.like(x, 0)), values, step)


@lowers(aten.relu)
def _relu(b, out, x):
    # where, not maximum: torch's derivative at 0 is 0 (maximum would share it), and NaN stays NaN.
    zero = b.like(x, 0)
    return b.where(b.gt(x, zero), x, b.where(b.ne(x, x), x, zero))


@lowers(aten.real, aten.lift_fresh, aten.contiguous)
def _identity(b, out, x, *args, **kwargs):
    return x


@lowers(aten.alias, view=True)
def _alias(b, out, x):
    return x


@lowers(aten.clone)
def _clone(b, out, x, *, memory_format=None):
    return b.copy(x)  # a fresh tensor, never the input itself


@lowers(aten.detach, view=True)
def _detach(b, out, x):
    return b.emit(P.stop_gradient, [x])


def _binary(prim, compare=False):
    def lower(b, out, a, c, *, alpha=1):
        if out.dtype == torch.bool and prim in (P.add, P.mul):  # torch: logical or / and on booleans
            prim_ = P.logical_or if prim is P.add else P.logical_and
            return b.emit(prim_, [b.operand(a, torch.bool, out.shape), b.operand(c, torch.bool, out.shape)])
        dtype = torch.result_type(_scalar_or_meta(a), _scalar_or_meta(c)) if compare else out.dtype
        if alpha != 1:
            c = b.emit(P.mul, [b.operand(c, dtype, out.shape), b.full(alpha, dtype, out.shape)])
        return b.emit(prim, [b.operand(a, dtype, out.shape), b.operand(c, dtype, out.shape)])

    return lower


def _scalar_or_meta(x):
    return torch.empty(x.shape, dtype=x.dtype, device="meta") if isinstance(x, Var) else x


for _op, _prim in [
    (aten.hypot, P.hypot),
    (aten.xlogy, P.xlogy),
    (aten.add, P.add),
    (aten.sub, P.sub),
    (aten.mul, P.mul),
    (aten.maximum, P.maximum),
    (aten.minimum, P.minimum),
    (aten.atan2, P.atan2),
    (aten.logical_and, P.logical_and),
    (aten.logical_or, P.logical_or),
]:
    lowers(_op)(_binary(_prim))
for _op, _prim in [
    (aten.eq, P.eq),
    (aten.ne, P.ne),
    (aten.lt, P.lt),
    (aten.le, P.le),
    (aten.gt, P.gt),
    (aten.ge, P.ge),
]:
    lowers(_op)(_binary(_prim, compare=True))


def _boolean(prim):
    def lower(b, out, a, c):
        if out.dtype != torch.bool:
            raise NotImplementedError(f"tritonfunc: bitwise {prim.name} on {out.dtype} tensors is not supported")
        return b.emit(prim, [b.operand(a, torch.bool, out.shape), b.operand(c, torch.bool, out.shape)])

    return lower


lowers(aten.bitwise_and)(_boolean(P.logical_and))
lowers(aten.bitwise_or)(_boolean(P.logical_or))
lowers(aten.bitwise_xor)(_boolean(P.ne))


@lowers(aten.bitwise_not)
def _bitwise_not(b, out, x):
    if out.dtype != torch.bool:
        raise NotImplementedError(f"tritonfunc: bitwise not on {out.dtype} tensors is not supported")
    return b.logical_not(x)


@lowers(aten.rsub)
def _rsub(b, out, a, c, *, alpha=1):
    return (
        _binary(P.sub)(b, out, c, a, alpha=1)
        if alpha == 1
        else _binary(P.sub)(b, out, c, _binary(P.mul)(b, out, a, alpha))
    )


def _float_floor_divide(b, a: Var, c: Var) -> Var:
    """torch's div_floor for floats: from fmod, so that e.g. 1.0 // 0.1 is 9 (as in Python)."""
    zero, one = b.like(a, 0), b.like(a, 1)
    mod = b.fmod(a, c)
    div = b.div(b.sub(a, mod), c)
    signs_differ = b.logical_and(b.ne(mod, zero), b.ne(b.lt(c, zero), b.lt(mod, zero)))
    div = b.where(signs_differ, b.sub(div, one), div)
    floor = b.floor(div)
    floor = b.where(b.gt(b.sub(div, floor), b.like(a, 0.5)), b.add(floor, one), floor)
    signed_zero = b.mul(b.sign(b.div(a, c)), zero)  # copysign(0, a / b), a NaN stays NaN
    result = b.where(b.ne(div, zero), floor, signed_zero)
    return b.where(b.eq(c, zero), b.div(a, c), result)


@lowers(aten.div, aten.true_divide)
def _div(b, out, a, c, *, rounding_mode=None):
    if rounding_mode == "floor":
        return _floor_divide(b, out, a, c)
    ftype = out.dtype if out.dtype.is_floating_point else torch.float64
    q = b.emit(P.div, [b.operand(a, ftype, out.shape), b.operand(c, ftype, out.shape)])
    if rounding_mode == "trunc":
        zero = b.full(0, ftype, out.shape)
        q = b.emit(P.where, [b.emit(P.lt, [q, zero]), b.emit(P.ceil, [q]), b.emit(P.floor, [q])])
    return b.cast(q, out.dtype)


@lowers(aten.floor_divide)
def _floor_divide(b, out, a, c):
    a, c = b.operand(a, out.dtype, out.shape), b.operand(c, out.dtype, out.shape)
    return _float_floor_divide(b, a, c) if out.dtype.is_floating_point else b.floordiv(a, c)


@lowers(aten.remainder)
def _remainder(b, out, a, c):
    a, c = b.operand(a, out.dtype, out.shape), b.operand(c, out.dtype, out.shape)
    if not out.dtype.is_floating_point:
        return b.mod(a, c)
    mod = b.fmod(a, c)  # then shifted by c where the signs of mod and c differ, as torch does
    zero = b.like(mod, 0)
    return b.where(b.logical_and(b.ne(mod, zero), b.ne(b.lt(c, zero), b.lt(mod, zero))), b.add(mod, c), mod)


@lowers(aten.fmod)
def _fmod(b, out, a, c):
    a, c = b.operand(a, out.dtype, out.shape), b.operand(c, out.dtype, out.shape)
    return b.fmod(a, c)


@lowers(aten.pow)
def _pow(b, out, base, exponent):
    ftype = out.dtype if out.dtype.is_floating_point else torch.float64
    if not isinstance(exponent, Var) and isinstance(base, Var):
        x = b.operand(base, ftype, out.shape)
        e = float(exponent)
        if e == 0:
            return b.full(1, out.dtype, out.shape)
        if e == 1:
            return b.cast(x, out.dtype)
        if e == 2:
            return b.cast(b.emit(P.mul, [x, x]), out.dtype)
        if e == 0.5:
            return b.cast(b.emit(P.sqrt, [x]), out.dtype)
        if e == -1:
            return b.cast(b.emit(P.reciprocal, [x]), out.dtype)
    return b.cast(b.emit(P.pow_, [b.operand(base, ftype, out.shape), b.operand(exponent, ftype, out.shape)]), out.dtype)


@lowers(aten.where)
def _where(b, out, cond, a, c):
    return b.emit(
        P.where,
        [
            b.operand(cond, torch.bool, out.shape),
            b.operand(a, out.dtype, out.shape),
            b.operand(c, out.dtype, out.shape),
        ],
    )


@lowers(aten.masked_fill)
def _masked_fill(b, out, x, mask, value):
    return _where(b, out, mask, value, x)


@lowers(aten.clamp, aten.clamp_min)
def _clamp(b, out, x, lo=None, hi=None):
    """Selects with torch's derivative: to x where lo <= x <= hi (none at NaN); to a tensor bound
    where it wins (lo where x < lo < hi, hi where x > hi or hi < lo).  The value is
    min(max(x, lo), hi): NaN if any of the three is."""
    tensor_lo, tensor_hi = isinstance(lo, Var), isinstance(hi, Var)
    x = b.operand(x, out.dtype, out.shape)
    lo = None if lo is None else b.operand(lo, out.dtype, out.shape)
    hi = None if hi is None else b.operand(hi, out.dtype, out.shape)
    clamped = x if lo is None else b.maximum(x, lo)
    clamped = clamped if hi is None else b.minimum(clamped, hi)
    y = b.stop_gradient(clamped)  # where nothing wins (NaNs, lo == hi): no derivative, as in torch
    if tensor_hi:
        hi_wins = b.gt(x, hi) if lo is None else b.logical_or(b.gt(x, hi), b.lt(hi, lo))
        y = b.where(b.logical_and(hi_wins, b.eq(clamped, hi)), hi, y)  # unless a NaN lo made it NaN
    if tensor_lo:
        lo_wins = b.lt(x, lo) if hi is None else b.logical_and(b.lt(x, lo), b.lt(lo, hi))
        y = b.where(lo_wins, lo, y)
    above = None if lo is None else b.ge(x, lo)
    below = None if hi is None else b.le(x, hi)
    inside = below if above is None else above if below is None else b.logical_and(above, below)
    return b.where(inside, x, y)


lowers(aten.clamp_max)(lambda b, out, x, hi: _clamp(b, out, x, None, hi))


@lowers(aten._to_copy, aten.to, prims_ops.convert_element_type)
def _to_copy(b, out, x, *args, **kwargs):
    if out.device.type != "meta" and out.device != b.device:
        raise NotImplementedError("tritonfunc: moving a traced tensor to another device is not supported")
    return b.cast(x, out.dtype)


def _fill(value_of):
    return lambda b, out, *args, **kwargs: b.full(value_of(args), out.dtype, out.shape)


for _op in (aten.zeros_like, aten.empty_like, aten.new_zeros, aten.new_empty):
    lowers(_op)(_fill(lambda args: 0))
lowers(aten.ones_like, aten.new_ones)(_fill(lambda args: 1))
lowers(aten.full_like)(_fill(lambda args: args[1]))
lowers(aten.new_full)(_fill(lambda args: args[2]))


# -- activations, with torch's derivatives at their kinks and without NaN in the branch a select
#    discards (a select passes its zero cotangent to both branches, and 0 * inf is NaN) -------------


def _softplus(b, x: Var, beta=1.0, threshold=20.0) -> Var:
    """log1p(exp(beta x)) / beta, linear (x) where beta x > threshold, as torch.  The smooth branch
    sees 0 where it is not taken, so its derivative stays finite there."""
    scaled = x * beta
    linear = b.gt(scaled, b.like(x, threshold))
    safe = b.where(linear, b.like(x, 0), scaled)
    return b.where(linear, x, b.log1p(b.exp(safe)) / beta)


@lowers(aten.softplus)
def _softplus_op(b, out, x, beta=1.0, threshold=20.0):
    return _softplus(b, x, beta, threshold)


@lowers(aten.mish)
def _mish(b, out, x):
    return x * b.tanh(_softplus(b, x))


@lowers(aten.log_sigmoid_forward)
def _log_sigmoid(b, out, x):
    """min(x, 0) - log1p(exp(-|x|)) as two smooth branches (smooth second derivative at 0 too),
    each fed 0 where it is not taken.  The buffer is unused by the derivative here: zeros."""
    zero = b.like(x, 0)
    negative = b.lt(x, zero)
    below, above = b.where(negative, x, zero), b.where(negative, zero, x)
    y = b.where(negative, below - b.log1p(b.exp(below)), -b.log1p(b.exp(-above)))
    return y, b.full(0, out[1].dtype, out[1].shape)


@lowers(aten.hardtanh)
def _hardtanh(b, out, x, lo=-1.0, hi=1.0):
    # No derivative at the bounds themselves; NaN passes through with derivative 1 (torch's).
    return b.where(b.le(x, b.like(x, lo)), b.like(x, lo), b.where(b.ge(x, b.like(x, hi)), b.like(x, hi), x))


@lowers(aten.hardsigmoid)
def _hardsigmoid(b, out, x):
    # Derivative 1/6 strictly inside (-3, 3), 0 elsewhere and at NaN.
    inside = b.logical_and(b.gt(x, b.like(x, -3)), b.lt(x, b.like(x, 3)))
    saturated = (_hardtanh(b, out, b.stop_gradient(x), -3.0, 3.0) + 3) / 6
    return b.where(inside, (x + 3) / 6, saturated)


@lowers(aten.hardswish)
def _hardswish(b, out, x):
    # 0 up to -3, x (x + 3) / 6 strictly inside, x from 3 on (and at NaN, derivative 1).
    inside = b.logical_and(b.gt(x, b.like(x, -3)), b.lt(x, b.like(x, 3)))
    xs = b.where(inside, x, b.like(x, 0))
    outside = b.where(b.le(x, b.like(x, -3)), b.like(x, 0), x)
    return b.where(inside, xs * (xs + 3) / 6, outside)


@lowers(aten.softshrink)
def _softshrink(b, out, x, lambd=0.5):
    # 0 on [-lambd, lambd] (no derivative there), x -+ lambd outside (and NaN, derivative 1).
    inside = b.logical_and(b.ge(x, b.like(x, -lambd)), b.le(x, b.like(x, lambd)))
    return b.where(inside, b.like(x, 0), x - b.sign(x) * lambd)


def _elu(b, x: Var, alpha, scale, input_scale) -> Var:
    """scale * x above 0 (and at NaN), scale * alpha * expm1(input_scale * x) below.  At 0 torch
    takes the first derivative from below and the second from above: a line of the lower slope."""
    zero = b.like(x, 0)
    below = b.where(b.lt(x, zero), x, zero)
    curve = b.expm1(below * input_scale) * (scale * alpha)
    line = x * (scale * alpha * input_scale)
    return b.where(b.lt(x, zero), curve, b.where(b.eq(x, zero), line, x * scale))


@lowers(aten.elu)
def _elu_op(b, out, x, alpha=1.0, scale=1.0, input_scale=1.0):
    return _elu(b, x, alpha, scale, input_scale)


@lowers(aten.celu)
def _celu(b, out, x, alpha=1.0):
    return _elu(b, x, alpha, 1.0, 1.0 / alpha)
