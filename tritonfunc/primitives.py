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
from dataclasses import dataclass, field
from typing import Any

import torch

from .indexing import Idx, Index, opaque, reshape_index

Shape = tuple[int, ...]


@dataclass(eq=False)
class Primitive:
    name: str
    kind: str  # elementwise | view | reduction | source
    shape_rule: Callable[..., tuple[Shape, torch.dtype]]
    impl: Callable[..., torch.Tensor]  # reference implementation with torch ops
    lower: Callable[..., str] | None = None  # Triton expression text
    index_rule: Callable[..., list[Index]] | None = None  # view primitives: operand indices
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<prim {self.name}>"


PRIMS: dict[str, Primitive] = {}


def _register(p: Primitive) -> Primitive:
    assert p.name not in PRIMS, p.name
    PRIMS[p.name] = p
    return p


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
# sign keeps NaN, as torch.sign does.
sign = _unary(
    "sign", torch.sign, "tl.where({x} > 0, 1.0, tl.where({x} < 0, -1.0, tl.where({x} == 0, 0.0, {x}))).to({x}.dtype)"
)
logical_not = _unary("logical_not", torch.logical_not, "({x} == 0)")
# Identity on values; autodiff gives it a zero derivative (x.detach() inside the function).
stop_gradient = _unary("stop_gradient", torch.Tensor.detach, "{x}")


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
logical_and = _binary("logical_and", torch.logical_and, "({a} & {b})", torch.bool)
logical_or = _binary("logical_or", torch.logical_or, "({a} | {b})", torch.bool)


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


# ---------------------------------------------------------------------------------------------
# Views: lowered to index rules, so they move no data inside a kernel.


def _broadcast_shape(x, *, shape, dims):
    assert len(dims) == len(x[0]) and all(x[0][i] in (1, shape[d]) for i, d in enumerate(dims)), (x, shape, dims)
    return tuple(shape), x[1]


def _broadcast_impl(x, *, shape, dims):
    view = [1] * len(shape)
    for i, d in enumerate(dims):
        view[d] = x.shape[i]
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
    offs, acc = [], 0
    for v in node.inputs:
        offs.append(acc)
        acc += v.shape[node.params["axis"]]
    return offs


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
    return _register(Primitive(name, "reduction", _reduce_shape, _torch_reduce(torch_fn)))


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


def shape_of(prim: Primitive, in_avals: list[tuple[Shape, torch.dtype]], params: dict) -> tuple[Shape, torch.dtype]:
    return prim.shape_rule(*in_avals, **params)
