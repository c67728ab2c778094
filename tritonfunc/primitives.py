"""The closed set of primitives, and every rule of each one side by side.

A primitive has a shape/dtype rule, a reference implementation with torch ops (the `torch`
backend and the oracle for codegen), and a Triton lowering:
  - elementwise primitives lower to an expression over their operands' expressions;
  - view primitives (broadcast, reshape, transpose, slice, concatenate) lower to an *index rule*:
    the index at which each operand is read, given the index being computed, so they fuse for free;
  - reductions are lowered by the codegen's reduction loop, using `REDUCTIONS` below.
Binary primitives take operands of equal shape and dtype: tracing inserts the broadcasts and casts,
which keeps every rule here free of implicit promotion.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .indexing import Idx, Index, contiguous_strides, opaque, ravel, reshape_index

Shape = tuple[int, ...]


@dataclass(eq=False)
class Primitive:
    name: str
    kind: str  # elementwise | view | reduction | source
    shape_rule: Callable[..., tuple[Shape, torch.dtype]]
    impl: Callable[..., torch.Tensor]  # reference implementation with torch ops
    lower: Callable[..., str] | None = None  # Triton expression text
    index_rule: Callable[..., list[Index]] | None = None  # view primitives: operand indices
    # Autodiff.  A primitive has exactly one of:
    #   deriv(b, node_inputs, out, **params) -> partial derivative per input (elementwise, not linear)
    #   transpose(b, ct, node_inputs, out, **params) -> cotangent per input (linear: jvp applies the
    #       primitive itself to the tangents)
    #   jvp(b, primals, tangents, out, **params) and vjp(b, primals, out, ct, **params) (the rest)
    #   nondiff = True: the output carries no derivative (comparisons, floor, iota, ...)
    deriv: Callable | None = None
    transpose: Callable | None = None
    jvp: Callable | None = None
    vjp: Callable | None = None
    nondiff: bool = False
    # vmap: batch(b, inputs, batched, size, **params) -> output with a leading batch axis of `size`,
    # given which inputs carry that axis (at position 0).  Sources are never batched.
    batch: Callable | None = None

    def __repr__(self) -> str:
        return f"<prim {self.name}>"


PRIMS: dict[str, Primitive] = {}


def _register(p: Primitive) -> Primitive:
    assert p.name not in PRIMS, p.name
    PRIMS[p.name] = p
    if p.kind == "elementwise":
        p.batch = _batch_elementwise(p)
    return p


def with_batch_axis(b, v, batched: bool, size: int):
    """An operand with the leading batch axis: an unbatched one is broadcast along it."""
    if batched:
        return v
    return b.broadcast_in_dim(v, shape=(size, *v.shape), dims=tuple(range(1, len(v.shape) + 1)))


def _batch_elementwise(prim):
    def rule(b, inputs, batched, size, **params):
        return b.emit(prim, [with_batch_axis(b, v, bt, size) for v, bt in zip(inputs, batched)], **params)

    return rule


def _shift(axes, by: int = 1) -> tuple[int, ...]:
    return tuple(a + by for a in axes)


def _same(*avals, **_):
    shape, dtype = avals[0]
    for s, d in avals[1:]:
        assert s == shape and d == dtype, f"operands must match: {avals}"
    return shape, dtype


# ---------------------------------------------------------------------------------------------
# Elementwise unary.  `lower` receives the operand expressions and the node.


def _unary(name: str, torch_fn: Callable, tl_expr: str) -> Primitive:
    return _register(
        Primitive(
            name,
            "elementwise",
            _same,
            lambda x: torch_fn(x),
            lower=lambda args, node, index: tl_expr.format(x=args[0]),
        )
    )


neg = _unary("neg", torch.neg, "(-{x})")
abs_ = _unary("abs", torch.abs, "tl.abs({x})")
exp = _unary("exp", torch.exp, "tl.exp({x})")
log = _unary("log", torch.log, "tl.log({x})")
log1p = _unary("log1p", torch.log1p, "libdevice.log1p({x})")
expm1 = _unary("expm1", torch.expm1, "libdevice.expm1({x})")
sin = _unary("sin", torch.sin, "tl.sin({x})")
cos = _unary("cos", torch.cos, "tl.cos({x})")
tan = _unary("tan", torch.tan, "libdevice.tan({x})")
tanh = _unary("tanh", torch.tanh, "libdevice.tanh({x})")
sigmoid = _unary("sigmoid", torch.sigmoid, "tl.sigmoid({x})")
# fp32 tl.sqrt is approximate on the GPU; sqrt_rn is IEEE-rounded but fp32-only, fp64 sqrt is exact.
sqrt = _unary("sqrt", torch.sqrt, "tl.sqrt_rn({x})")
sqrt.lower = lambda args, node, index: (
    f"tl.sqrt({args[0]})" if node.out.dtype == torch.float64 else f"tl.sqrt_rn({args[0]})"
)
# fp64 tl.rsqrt is approximate on the GPU (TRITON_NOTES.md), so divide by an exact sqrt.
rsqrt = _unary("rsqrt", torch.rsqrt, "")
rsqrt.lower = lambda args, node, index: f"(1.0 / {sqrt.lower(args, node, index)})"
reciprocal = _unary("reciprocal", torch.reciprocal, "(1.0 / {x})")
erf = _unary("erf", torch.erf, "tl.erf({x})")
floor = _unary("floor", torch.floor, "tl.floor({x})")
ceil = _unary("ceil", torch.ceil, "tl.ceil({x})")
# torch.sign(nan) is 0: NaN fails both comparisons.
sign = _unary("sign", torch.sign, "tl.where({x} > 0, 1.0, tl.where({x} < 0, -1.0, 0.0)).to({x}.dtype)")
logical_not = _unary("logical_not", torch.logical_not, "({x} == 0)")
# Identity on values; autodiff gives it a zero derivative (x.detach() inside the function).
stop_gradient = _unary("stop_gradient", torch.Tensor.detach, "{x}")
# Identity on values that makes a new tensor (x.clone()): a graph output is never the input itself.
copy = _unary("copy", torch.clone, "{x}")
copy.transpose = lambda b, ct, ins, out: [ct]
exp2 = _unary("exp2", torch.exp2, "tl.exp2({x})")
log2 = _unary("log2", torch.log2, "tl.log2({x})")
log10 = _unary("log10", torch.log10, "libdevice.log10({x})")

# Derivatives of the unary primitives, d out / d x, written with primitives so they differentiate again.
neg.transpose = lambda b, ct, ins, out: [b.neg(ct)]
abs_.deriv = lambda b, ins, out: [b.sign(ins[0])]
exp.deriv = lambda b, ins, out: [out]
log.deriv = lambda b, ins, out: [b.reciprocal(ins[0])]
log1p.deriv = lambda b, ins, out: [b.reciprocal(b.add(ins[0], b.like(out, 1)))]
expm1.deriv = lambda b, ins, out: [b.add(out, b.like(out, 1))]
sin.deriv = lambda b, ins, out: [b.cos(ins[0])]
cos.deriv = lambda b, ins, out: [b.neg(b.sin(ins[0]))]
tan.deriv = lambda b, ins, out: [b.add(b.like(out, 1), b.mul(out, out))]
tanh.deriv = lambda b, ins, out: [b.sub(b.like(out, 1), b.mul(out, out))]
sigmoid.deriv = lambda b, ins, out: [b.mul(out, b.sub(b.like(out, 1), out))]
sqrt.deriv = lambda b, ins, out: [b.div(b.like(out, 0.5), out)]
rsqrt.deriv = lambda b, ins, out: [b.mul(b.like(out, -0.5), b.div(out, ins[0]))]
reciprocal.deriv = lambda b, ins, out: [b.neg(b.mul(out, out))]
exp2.deriv = lambda b, ins, out: [b.mul(out, b.like(out, math.log(2.0)))]
log2.deriv = lambda b, ins, out: [b.reciprocal(b.mul(ins[0], b.like(out, math.log(2.0))))]
log10.deriv = lambda b, ins, out: [b.reciprocal(b.mul(ins[0], b.like(out, math.log(10.0))))]
erf.deriv = lambda b, ins, out: [b.mul(b.like(out, 2 / math.sqrt(math.pi)), b.exp(b.neg(b.mul(ins[0], ins[0]))))]
for _p in (floor, ceil, sign, logical_not, stop_gradient):
    _p.nondiff = True


# ---------------------------------------------------------------------------------------------
# Elementwise binary and ternary.


def _binary(name: str, torch_fn: Callable, tl_expr: str, out_dtype: torch.dtype | None = None) -> Primitive:
    def shape_rule(a, b, **_):
        shape, dtype = _same(a, b)
        return shape, out_dtype or dtype

    return _register(
        Primitive(
            name,
            "elementwise",
            shape_rule,
            lambda a, b: torch_fn(a, b),
            lower=lambda args, node, index: tl_expr.format(a=args[0], b=args[1]),
        )
    )


add = _binary("add", torch.add, "({a} + {b})")
sub = _binary("sub", torch.sub, "({a} - {b})")
mul = _binary("mul", torch.mul, "({a} * {b})")
div = _binary("div", torch.div, "({a} / {b})")
pow_ = _binary("pow", torch.pow, "libdevice.pow({a}, {b})")
maximum = _binary("maximum", torch.maximum, "tl.maximum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)")
minimum = _binary("minimum", torch.minimum, "tl.minimum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)")
atan2 = _binary("atan2", torch.atan2, "libdevice.atan2({a}, {b})")
eq = _binary("eq", torch.eq, "({a} == {b})", torch.bool)
ne = _binary("ne", torch.ne, "({a} != {b})", torch.bool)
lt = _binary("lt", torch.lt, "({a} < {b})", torch.bool)
le = _binary("le", torch.le, "({a} <= {b})", torch.bool)
gt = _binary("gt", torch.gt, "({a} > {b})", torch.bool)
ge = _binary("ge", torch.ge, "({a} >= {b})", torch.bool)
# Boolean and/or through int32 arithmetic: the interpreter's & and | reject some int1 operand mixes.
logical_and = _binary("logical_and", torch.logical_and, "(({a}).to(tl.int32) * ({b}).to(tl.int32) != 0)", torch.bool)
logical_or = _binary("logical_or", torch.logical_or, "(({a}).to(tl.int32) + ({b}).to(tl.int32) != 0)", torch.bool)
# Integer floor division and remainder, Python-style.  Triton's // and % truncate toward zero (C),
# so step the quotient down, and the remainder over, where the signs differ.
_NEEDS_FIX = "((({a} % {b}) != 0) & ((({a} % {b}) < 0) != ({b} < 0)))"
floordiv = _binary(
    "floordiv",
    lambda a, b: torch.div(a, b, rounding_mode="floor"),
    f"(({{a}} // {{b}}) - {_NEEDS_FIX}.to({{a}}.dtype))",
)
mod = _binary("mod", torch.remainder, f"tl.where({_NEEDS_FIX}, ({{a}} % {{b}}) + {{b}}, {{a}} % {{b}})")
# C's fmod (the sign of a) for floats: Triton's % on floats, torch.fmod.
fmod = _binary("fmod", torch.fmod, "({a} % {b})")


def _trunc(b, q):
    return b.where(b.lt(q, b.like(q, 0)), b.ceil(q), b.floor(q))


fmod.deriv = lambda b, ins, out: [b.like(out, 1), b.neg(_trunc(b, b.div(ins[0], ins[1])))]
for _p in (eq, ne, lt, le, gt, ge, logical_and, logical_or, floordiv, mod):
    _p.nondiff = True

add.transpose = lambda b, ct, ins, out: [ct, ct]
sub.transpose = lambda b, ct, ins, out: [ct, b.neg(ct)]
mul.deriv = lambda b, ins, out: [ins[1], ins[0]]
div.deriv = lambda b, ins, out: [b.reciprocal(ins[1]), b.neg(b.div(out, ins[1]))]
atan2.deriv = lambda b, ins, out: [
    b.div(ins[1], b.add(b.mul(ins[0], ins[0]), b.mul(ins[1], ins[1]))),
    b.neg(b.div(ins[0], b.add(b.mul(ins[0], ins[0]), b.mul(ins[1], ins[1])))),
]


def _pow_deriv(b, ins, out):
    # torch's conventions: d/dbase is 0 where exponent == 0; d/dexponent is 0 where base == 0 and
    # exponent >= 0 (instead of 0 * log(0) = nan).
    x, y = ins
    zero = b.like(out, 0)
    d_base = b.where(b.eq(y, zero), zero, b.mul(y, b.pow(x, b.sub(y, b.like(out, 1)))))
    d_exp = b.where(b.logical_and(b.eq(x, zero), b.ge(y, zero)), zero, b.mul(out, b.log(x)))
    return [d_base, d_exp]


pow_.deriv = _pow_deriv


def _select_deriv(prefer):
    # torch splits the derivative evenly between equal operands of maximum/minimum.
    def deriv(b, ins, out):
        x, y = ins
        half = b.like(out, 0.5)
        to_x = b.where(b.eq(x, y), half, b.convert(prefer(b, x, y), dtype=out.dtype))
        return [to_x, b.sub(b.like(out, 1), to_x)]

    return deriv


maximum.deriv = _select_deriv(lambda b, x, y: b.gt(x, y))
minimum.deriv = _select_deriv(lambda b, x, y: b.lt(x, y))


def _where_shape(c, a, b, **_):
    assert c[1] == torch.bool and c[0] == a[0]
    return _same(a, b)


where = _register(
    Primitive(
        "where",
        "elementwise",
        _where_shape,
        torch.where,
        lower=lambda args, node, index: f"tl.where({args[0]}, {args[1]}, {args[2]})",
    )
)


def _where_jvp(b, primals, tangents, out):
    cond, x, y = primals
    _, tx, ty = tangents
    if tx is None and ty is None:
        return None
    return b.where(cond, tx if tx is not None else b.like(out, 0), ty if ty is not None else b.like(out, 0))


def _where_vjp(b, primals, out, ct):
    zero = b.like(out, 0)
    return [None, b.where(primals[0], ct, zero), b.where(primals[0], zero, ct)]


where.jvp, where.vjp = _where_jvp, _where_vjp


def _convert_lower(args, node, index):
    from .codegen import tl_dtype  # codegen owns the torch -> Triton dtype table

    if node.out.dtype == torch.bool:
        return f"({args[0]} != 0)"
    return f"{args[0]}.to({tl_dtype(node.out.dtype)})"


convert = _register(
    Primitive(
        "convert",
        "elementwise",
        lambda x, *, dtype: (x[0], dtype),
        lambda x, *, dtype: x.to(dtype),
        lower=_convert_lower,
    )
)


def _convert_transpose(b, ct, ins, out, *, dtype):
    return [b.convert(ct, dtype=ins[0].dtype) if ins[0].dtype.is_floating_point else None]


# A cast between floating types is linear; a cast to or from integers has no derivative.
convert.transpose = _convert_transpose


# ---------------------------------------------------------------------------------------------
# Sources: values that read no operand.


def _full_impl(*, value, shape, dtype, device=None):
    return torch.full(shape, value, dtype=dtype, device=device)


def _literal(value, dtype: torch.dtype) -> str:
    from .codegen import tl_dtype

    if dtype == torch.bool:
        return "tl.full([], 1, tl.int1)" if value else "tl.full([], 0, tl.int1)"
    if not dtype.is_floating_point:
        return f"tl.full([], {int(value)}, {tl_dtype(dtype)})"
    v = float(value)
    text = "_NAN" if math.isnan(v) else "_INF" if v == math.inf else "(-_INF)" if v == -math.inf else repr(v)
    # An explicitly typed constant keeps full precision in fp64 kernels.
    return f"tl.full([], {text}, {tl_dtype(dtype)})"


full = _register(
    Primitive(
        "full",
        "source",
        lambda *, value, shape, dtype: (tuple(shape), dtype),
        _full_impl,
        lower=lambda args, node, index: _literal(node.params["value"], node.out.dtype),
    )
)


def _iota_impl(*, shape, dim, dtype, device=None):
    ar = torch.arange(shape[dim], dtype=dtype, device=device)
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return ar.reshape(view).expand(shape).contiguous()


def _iota_lower(args, node, index):
    from .codegen import tl_dtype

    i = index[node.params["dim"]]
    if i.is_const():
        return _literal(i.const, node.out.dtype)
    return f"({i.render()}).to({tl_dtype(node.out.dtype)})"


iota = _register(
    Primitive(
        "iota",
        "source",
        lambda *, shape, dim, dtype: (tuple(shape), dtype),
        _iota_impl,
        lower=_iota_lower,
    )
)
full.nondiff = iota.nondiff = True


# Random numbers: Triton's Philox (tl.rand / tl.randn) keyed by a seed tensor (an input, drawn
# from torch's generator when the function is traced) and the element's row-major offset.  The
# torch backend draws from a torch generator with the same seed: the same distribution, not the
# same stream.  vmap decides per randomness mode whether the shape gains the batch axis.


def _rand_impl(seed, *data, shape, dtype, normal):
    gen = torch.Generator(device=seed.device).manual_seed(int(seed))
    return (torch.randn if normal else torch.rand)(shape, dtype=dtype, device=seed.device, generator=gen)


def _rand_lower(args, node, index):
    from .codegen import tl_dtype

    offset = ravel(index, contiguous_strides(node.out.shape))
    offset_text = f"tl.full([], {offset.const}, tl.int32)" if offset.is_const() else offset.render()
    fn = "tl.randn" if node.params["normal"] else "tl.rand"
    return f"{fn}({args[0]}, {offset_text}).to({tl_dtype(node.out.dtype)})"


rand = _register(
    Primitive(
        "rand",
        "source",
        lambda seed, *data, shape, dtype, normal: (tuple(shape), dtype),
        _rand_impl,
        lower=_rand_lower,
        index_rule=lambda node, index: [(), index][: len(node.inputs)],  # the seed is a scalar
    )
)
rand.nondiff = True


# ---------------------------------------------------------------------------------------------
# Views: lowered to index rules, so they move no data inside a kernel.


def _broadcast_shape(x, *, shape, dims):
    assert len(dims) == len(x[0]) and all(x[0][i] in (1, shape[d]) for i, d in enumerate(dims)), (x, shape, dims)
    return tuple(shape), x[1]


def _broadcast_impl(x, *, shape, dims):
    order = sorted(range(len(dims)), key=lambda i: dims[i])  # dims need not be increasing
    x = x.permute(order)
    view = [1] * len(shape)
    for k, i in enumerate(order):
        view[dims[i]] = x.shape[k]
    return x.reshape(view).expand(shape)


def _broadcast_index(node, index):
    (x,) = node.inputs
    return [tuple(Idx.of(0) if x.shape[i] == 1 else index[d] for i, d in enumerate(node.params["dims"]))]


broadcast_in_dim = _register(
    Primitive(
        "broadcast_in_dim",
        "view",
        _broadcast_shape,
        _broadcast_impl,
        index_rule=_broadcast_index,
    )
)


def _broadcast_transpose(b, ct, ins, out, *, shape, dims):
    # The adjoint of a broadcast is a sum over the broadcast axes (then x's own axis order).
    (x,) = ins
    stretched = {d for i, d in enumerate(dims) if x.shape[i] == 1 and shape[d] != 1}
    axes = tuple(sorted(set(range(len(shape))) - set(dims) | stretched))
    summed = b.reduce_sum(ct, axes=axes) if axes else ct
    remaining = [d for d in range(len(shape)) if d not in axes]
    perm = [remaining.index(d) for d in dims if d not in stretched]
    return [b.reshape(b.transpose(summed, perm), x.shape)]


broadcast_in_dim.transpose = _broadcast_transpose
broadcast_in_dim.batch = lambda b, ins, bt, size, *, shape, dims: b.broadcast_in_dim(
    ins[0], shape=(size, *shape), dims=(0, *_shift(dims))
)


def _reshape_shape(x, *, shape):
    assert math.prod(shape) == math.prod(x[0]), (x, shape)
    return tuple(shape), x[1]


reshape = _register(
    Primitive(
        "reshape",
        "view",
        _reshape_shape,
        lambda x, *, shape: x.reshape(shape),
        index_rule=lambda node, index: [reshape_index(index, node.out.shape, node.inputs[0].shape)],
    )
)
reshape.transpose = lambda b, ct, ins, out, *, shape: [b.reshape(ct, ins[0].shape)]
reshape.batch = lambda b, ins, bt, size, *, shape: b.reshape(ins[0], (size, *shape))


def _transpose_index(node, index):
    perm = node.params["perm"]
    src = [None] * len(perm)
    for out_dim, in_dim in enumerate(perm):
        src[in_dim] = index[out_dim]
    return [tuple(src)]


transpose = _register(
    Primitive(
        "transpose",
        "view",
        lambda x, *, perm: (tuple(x[0][p] for p in perm), x[1]),
        lambda x, *, perm: x.permute(perm),
        index_rule=_transpose_index,
    )
)
transpose.batch = lambda b, ins, bt, size, *, perm: b.transpose(ins[0], (0, *_shift(perm)))
transpose.transpose = lambda b, ct, ins, out, *, perm: [
    b.transpose(ct, sorted(range(len(perm)), key=lambda d: perm[d]))
]


def _slice_shape(x, *, start, stop, step):
    return tuple(max(0, -(-(e - s) // st)) for s, e, st in zip(start, stop, step)), x[1]


slice_ = _register(
    Primitive(
        "slice",
        "view",
        _slice_shape,
        lambda x, *, start, stop, step: x[tuple(slice(s, e, st) for s, e, st in zip(start, stop, step))],
        index_rule=lambda node, index: [
            tuple(i * st + s for i, s, st in zip(index, node.params["start"], node.params["step"]))
        ],
    )
)


def _concat_shape(*xs, axis):
    shape = list(xs[0][0])
    shape[axis] = sum(x[0][axis] for x in xs)
    return tuple(shape), xs[0][1]


def _concat_offsets(node) -> list[int]:
    return _offsets(node.inputs, node.params["axis"])


def _concat_index(node, index):
    # Every operand is read (then all but one discarded), so clamp its index into range.
    axis, i = node.params["axis"], index[node.params["axis"]]
    out = []
    for v, off in zip(node.inputs, _concat_offsets(node)):
        size = v.shape[axis]
        clamped = opaque(f"tl.minimum(tl.maximum({(i + (-off)).render()}, 0), {size - 1})", size, i.deps)
        out.append(index[:axis] + (clamped,) + index[axis + 1 :])
    return out


def _concat_lower(args, node, index):
    i = index[node.params["axis"]].render()
    expr = args[-1]
    for a, v, off in reversed(list(zip(args[:-1], node.inputs, _concat_offsets(node)))):
        expr = f"tl.where(({i}) < {off + v.shape[node.params['axis']]}, {a}, {expr})"
    return expr


concatenate = _register(
    Primitive(
        "concatenate",
        "view",
        _concat_shape,
        lambda *xs, axis: torch.cat(xs, axis),
        lower=_concat_lower,
        index_rule=_concat_index,
    )
)


def _concat_transpose(b, ct, ins, out, *, axis):
    pieces = []
    for v, off in zip(ins, _offsets(ins, axis)):
        start = [0] * len(out.shape)
        stop = list(out.shape)
        start[axis], stop[axis] = off, off + v.shape[axis]
        pieces.append(b.slice(ct, start=tuple(start), stop=tuple(stop), step=(1,) * len(stop)))
    return pieces


def _offsets(ins, axis) -> list[int]:
    offs, acc = [], 0
    for v in ins:
        offs.append(acc)
        acc += v.shape[axis]
    return offs


concatenate.transpose = _concat_transpose
concatenate.batch = lambda b, ins, bt, size, *, axis: b.concatenate(
    *[with_batch_axis(b, v, t, size) for v, t in zip(ins, bt)], axis=axis + 1
)


# pad: the adjoint of a strided slice.  Places x at lo + i * (interior + 1) along each axis,
# zeros elsewhere.  It reads its operand at a clamped index and selects, like concatenate.


def _pad_shape(x, *, lo, hi, interior):
    return tuple(lo_ + n + max(n - 1, 0) * it + hi_ for n, lo_, hi_, it in zip(x[0], lo, hi, interior)), x[1]


def _pad_impl(x, *, lo, hi, interior):
    shape, _ = _pad_shape((x.shape, x.dtype), lo=lo, hi=hi, interior=interior)
    out = x.new_zeros(shape)
    out[tuple(slice(l_, l_ + max(n - 1, 0) * (it + 1) + 1, it + 1) for n, l_, it in zip(x.shape, lo, interior))] = x
    return out


def _pad_index(node, index):
    x = node.inputs[0]
    src = []
    for i, n, lo, it in zip(index, x.shape, node.params["lo"], node.params["interior"]):
        if lo == 0 and it == 0 and n > 0:
            src.append(opaque(f"tl.minimum({i.render()}, {n - 1})", n, i.deps) if i.bound() != n else i)
        else:
            text = f"tl.minimum(tl.maximum(({i.render()} - {lo}) // {it + 1}, 0), {max(n - 1, 0)})"
            src.append(opaque(text, n, i.deps))
    return [tuple(src)]


def _pad_lower(args, node, index):
    x = node.inputs[0]
    conds = []
    for i, n, lo, it in zip(index, x.shape, node.params["lo"], node.params["interior"]):
        last = lo + max(n - 1, 0) * (it + 1)
        text = i.render()
        if n == 0:
            conds.append("(0 > 1)")
            continue
        if lo > 0:
            conds.append(f"({text} >= {lo})")
        if i.bound() is None or i.bound() > last + 1:
            conds.append(f"({text} <= {last})")
        if it > 0:
            conds.append(f"((({text}) - {lo}) % {it + 1} == 0)")
    if not conds:
        return args[0]
    zero = _literal(0, node.out.dtype)
    return f"tl.where({' & '.join(conds)}, {args[0]}, {zero})"


pad = _register(Primitive("pad", "view", _pad_shape, _pad_impl, lower=_pad_lower, index_rule=_pad_index))


def _slice_transpose(b, ct, ins, out, *, start, stop, step):
    x = ins[0]
    if 0 in out.shape:
        return [b.full(0, x.dtype, x.shape)]
    hi = tuple(n - (s + (m - 1) * st + 1) for n, s, m, st in zip(x.shape, start, out.shape, step))
    return [b.pad(ct, lo=tuple(start), hi=hi, interior=tuple(st - 1 for st in step))]


def _pad_transpose(b, ct, ins, out, *, lo, hi, interior):
    x = ins[0]
    stop = tuple(lo_ + max(n - 1, 0) * (it + 1) + 1 for n, lo_, it in zip(x.shape, lo, interior))
    return [b.slice(ct, start=tuple(lo), stop=stop, step=tuple(it + 1 for it in interior))]


slice_.transpose = _slice_transpose
slice_.batch = lambda b, ins, bt, size, *, start, stop, step: b.slice(
    ins[0], start=(0, *start), stop=(size, *stop), step=(1, *step)
)
pad.batch = lambda b, ins, bt, size, *, lo, hi, interior: b.pad(
    ins[0], lo=(0, *lo), hi=(0, *hi), interior=(0, *interior)
)
pad.transpose = _pad_transpose


# ---------------------------------------------------------------------------------------------
# Reductions over a tuple of axes.  The codegen reduces a [rows, cols] tile with these pieces.


@dataclass(frozen=True)
class ReductionRule:
    identity: Callable[[torch.dtype], Any]  # neutral element, as a Python scalar
    combine: str  # accumulate two tiles elementwise: {a}, {b}
    finish: str  # reduce a tile along axis 1: {acc}


def _reduce_shape(x, *, axes):
    return tuple(s for i, s in enumerate(x[0]) if i not in axes), x[1]


def _lowest(dtype):
    return -math.inf if dtype.is_floating_point else (False if dtype == torch.bool else torch.iinfo(dtype).min)


def _highest(dtype):
    return math.inf if dtype.is_floating_point else (True if dtype == torch.bool else torch.iinfo(dtype).max)


def _torch_reduce(fn):
    def impl(x, *, axes):
        if not axes:
            return x.clone()
        return fn(x, axes)

    return impl


def _prod(x, axes):
    for a in sorted(axes, reverse=True):
        x = x.prod(a)
    return x


REDUCTIONS: dict[str, ReductionRule] = {}


def _reduction(name, torch_fn, rule: ReductionRule) -> Primitive:
    REDUCTIONS[name] = rule
    p = _register(Primitive(name, "reduction", _reduce_shape, _torch_reduce(torch_fn)))
    p.batch = lambda b, ins, bt, size, *, axes: b.emit(p, ins, axes=_shift(axes))
    return p


# tl.max/tl.min drop NaNs, torch propagates them: `_nan_max` (in the kernel header) restores that.
reduce_sum = _reduction(
    "reduce_sum",
    lambda x, a: x.sum(a),
    ReductionRule(lambda d: 0, "({a} + {b})", "tl.sum({acc}, axis=1, keep_dims=True)"),
)
reduce_max = _reduction(
    "reduce_max",
    lambda x, a: x.amax(a),
    ReductionRule(_lowest, "tl.maximum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)", "_nan_max({acc})"),
)
reduce_min = _reduction(
    "reduce_min",
    lambda x, a: x.amin(a),
    ReductionRule(_highest, "tl.minimum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)", "_nan_min({acc})"),
)
reduce_prod = _reduction(
    "reduce_prod", _prod, ReductionRule(lambda d: 1, "({a} * {b})", "tl.reduce({acc}, 1, _mul, keep_dims=True)")
)


def _expand_back(b, v, x, axes):
    """Broadcasts a reduction's result (or cotangent) back over the reduced axes of x."""
    kept = tuple(d for d in range(len(x.shape)) if d not in axes)
    return b.broadcast_in_dim(v, shape=x.shape, dims=kept)


reduce_sum.transpose = lambda b, ct, ins, out, *, axes: [_expand_back(b, ct, ins[0], axes)]


def _extremum_mask(b, x, out, axes):
    """1 where x attains the max (min), divided by how many do: torch shares the derivative."""
    hit = b.convert(b.eq(x, _expand_back(b, out, x, axes)), dtype=x.dtype)
    return b.div(hit, _expand_back(b, b.reduce_sum(hit, axes=axes), x, axes))


def _extremum_jvp(b, primals, tangents, out, *, axes):
    return b.reduce_sum(b.mul(tangents[0], _extremum_mask(b, primals[0], out, axes)), axes=axes)


def _extremum_vjp(b, primals, out, ct, *, axes):
    return [b.mul(_expand_back(b, ct, primals[0], axes), _extremum_mask(b, primals[0], out, axes))]


reduce_max.jvp = reduce_min.jvp = _extremum_jvp
reduce_max.vjp = reduce_min.vjp = _extremum_vjp


# Up to this many reduced elements, the product of the others is formed explicitly (n x n
# elements), so it differentiates again exactly even through zeros; beyond it, a zero-safe formula
# is exact to first order only.
LEAVE_ONE_OUT_MAX = 256


def _prod_others(b, x, axes):
    """For each element, the product of the other elements of its reduction."""
    n = math.prod(x.shape[a] for a in axes)
    if n <= LEAVE_ONE_OUT_MAX:
        return _leave_one_out_prod(b, x, axes, n)
    zero, one = b.like(x, 0), b.like(x, 1)
    is_zero = b.eq(x, zero)
    nonzero_prod = _expand_back(b, b.reduce_prod(b.where(is_zero, one, x), axes=axes), x, axes)
    zeros = _expand_back(b, b.reduce_sum(b.convert(is_zero, dtype=x.dtype), axes=axes), x, axes)
    if_nonzero = b.where(b.eq(zeros, zero), b.div(nonzero_prod, b.where(is_zero, one, x)), zero)
    if_zero = b.where(b.eq(zeros, one), nonzero_prod, zero)
    return b.where(is_zero, if_zero, if_nonzero)


def _leave_one_out_prod(b, x, axes, n):
    kept = [d for d in range(len(x.shape)) if d not in axes]
    perm = kept + list(axes)
    rows = b.reshape(b.transpose(x, perm), (*[x.shape[d] for d in kept], n))
    k = len(kept)
    square = (*rows.shape[:k], n, n)
    others = b.broadcast_in_dim(rows, shape=square, dims=(*range(k), k + 1))  # [..., i, j] = x_j
    diagonal = b.eq(b.iota(shape=(n, n), dim=0, dtype=torch.int64), b.iota(shape=(n, n), dim=1, dtype=torch.int64))
    diagonal = b.broadcast_in_dim(diagonal, shape=square, dims=(k, k + 1))
    prods = b.reduce_prod(b.where(diagonal, b.full(1, x.dtype, square), others), axes=(k + 1,))
    inverse = sorted(range(len(perm)), key=lambda d: perm[d])
    return b.transpose(b.reshape(prods, tuple(x.shape[d] for d in perm)), inverse)


reduce_prod.jvp = lambda b, primals, tangents, out, *, axes: b.reduce_sum(
    b.mul(tangents[0], _prod_others(b, primals[0], axes)), axes=axes
)
reduce_prod.vjp = lambda b, primals, out, ct, *, axes: [
    b.mul(_expand_back(b, ct, primals[0], axes), _prod_others(b, primals[0], axes))
]
