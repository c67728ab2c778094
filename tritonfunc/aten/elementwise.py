"""Elementwise ATen ops: math, comparisons, selects, casts and fills."""

from __future__ import annotations

import torch

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
]:
    lowers(_op)(_unary(_prim))


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
    # Selects rather than maximum/minimum: torch passes the whole derivative to x at a bound, and
    # min(max(x, lo), hi) gives hi when lo > hi.
    y = b.operand(x, out.dtype, out.shape)
    if lo is not None:
        lo = b.operand(lo, out.dtype, out.shape)
        y = b.where(b.lt(y, lo), lo, y)
    if hi is not None:
        hi = b.operand(hi, out.dtype, out.shape)
        y = b.where(b.gt(y, hi), hi, y)
    return y


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
