"""The primitives, and every rule of each one side by side.

A primitive has:
  - a shape/dtype rule, and a reference implementation with torch ops (the `torch` backend, and the
    oracle for generated kernels);
  - an execution strategy: FUSED (codegen emits it inside a generated kernel: elementwise, view,
    reduction, scan and source primitives), TEMPLATE (a hand-written kernel in kernels/) or OPAQUE (run
    by torch between kernels; see fallback.py);
  - for views, an *index rule*: the index at which each operand is read, given the index being
    computed, so views fuse for free (indexing.py);
  - exactly one derivative form (checked at the bottom of this file):
      deriv(out, *xs) -> partial derivative per input    (elementwise, not linear)
      transpose(ct, out, *xs) -> cotangent per input     (linear: jvp applies the primitive itself)
      jvp(primals, tangents, out) and vjp(primals, out, ct)   (the rest)
      nondiff = True                                     (comparisons, floor, iota, ...)
  - a batching rule: batch(xs, batched, size) -> the output with a leading batch axis of `size`,
    given which inputs carry that axis; elementwise and reduction primitives get theirs for free.
Rules are written with vars as numbers and primitives as functions (`cos(x) * x_dot`), emitted into
the current builder, so every rule can be differentiated and batched again.  Binary primitives take
operands of equal shape and dtype: tracing inserts broadcasts and casts, which keeps every rule here
free of implicit promotion.  How a primitive becomes Triton text is codegen's business.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .graph import PRIMS, Var, current_builder
from .indexing import Idx, Index, clamp, clamp_above, reshape_index, reverse

Shape = tuple[int, ...]
FUSED, TEMPLATE, OPAQUE = "fused", "template", "opaque"


@dataclass(eq=False)
class Primitive:
    name: str
    kind: str  # elementwise | view | reduction | scan | source | opaque | template
    shape_rule: Callable[..., Any]  # avals -> (shape, dtype), or a list of them (multiple_results)
    impl: Callable[..., Any]  # reference implementation with torch ops
    strategy: str = FUSED
    index_rule: Callable[..., list[Index]] | None = None
    deriv: Callable | None = None
    transpose: Callable | None = None
    jvp: Callable | None = None
    vjp: Callable | None = None
    nondiff: bool = False
    batch: Callable | None = None
    multiple_results: bool = False
    identity: Callable[[torch.dtype], Any] | None = None  # reductions: the neutral element
    random: bool = False  # draws random numbers (vmap's randomness modes apply)

    def __call__(self, *inputs: Var, **params):
        """Emits this primitive into the current builder."""
        return current_builder().emit(self, list(inputs), **params)

    def __repr__(self) -> str:
        return f"<prim {self.name}>"


def register(p: Primitive) -> Primitive:
    assert p.name not in PRIMS, p.name
    PRIMS[p.name] = p
    if p.kind == "elementwise":
        p.batch = _batch_elementwise(p)
    return p


def derivative_forms(p: Primitive) -> list[str]:
    forms = [f for f in ("deriv", "transpose") if getattr(p, f) is not None]
    if p.jvp is not None or p.vjp is not None:
        forms.append("jvp/vjp")
    if p.nondiff:
        forms.append("nondiff")
    return forms


def check_rules(p: Primitive) -> None:
    """A primitive gives exactly one derivative form (a custom jvp and vjp count as one, together)."""
    forms = derivative_forms(p)
    if len(forms) != 1:
        raise TypeError(f"tritonfunc: primitive {p.name} must give exactly one derivative form, got {forms or 'none'}")
    if "jvp/vjp" in forms and (p.jvp is None or p.vjp is None):
        raise TypeError(f"tritonfunc: primitive {p.name} gives a custom jvp or vjp but not both")
    if p.batch is None:
        raise TypeError(f"tritonfunc: primitive {p.name} has no batching rule")


# -- helpers for rules ----------------------------------------------------------------------------


def like(v: Var, value) -> Var:
    """The constant `value` with v's shape and dtype."""
    return current_builder().like(v, value)


def with_batch_axis(v: Var, batched: bool, size: int) -> Var:
    """An operand with the leading batch axis: an unbatched one is broadcast along it."""
    if batched:
        return v
    return broadcast_in_dim(v, shape=(size, *v.shape), dims=tuple(range(1, len(v.shape) + 1)))


def _batch_elementwise(prim):
    def rule(xs, batched, size, **params):
        return prim(*[with_batch_axis(v, bt, size) for v, bt in zip(xs, batched)], **params)

    return rule


def _shift(axes, by: int = 1) -> tuple[int, ...]:
    return tuple(a + by for a in axes)


def _same(*avals, **_):
    shape, dtype = avals[0]
    for s, d in avals[1:]:
        assert s == shape and d == dtype, f"operands must match: {avals}"
    return shape, dtype


# ---------------------------------------------------------------------------------------------
# Elementwise unary.


def _unary(name: str, torch_fn: Callable) -> Primitive:
    return register(Primitive(name, "elementwise", _same, lambda x: torch_fn(x)))


neg = _unary("neg", torch.neg)
abs_ = _unary("abs", torch.abs)
exp = _unary("exp", torch.exp)
log = _unary("log", torch.log)
log1p = _unary("log1p", torch.log1p)
expm1 = _unary("expm1", torch.expm1)
sin = _unary("sin", torch.sin)
cos = _unary("cos", torch.cos)
tan = _unary("tan", torch.tan)
tanh = _unary("tanh", torch.tanh)
sigmoid = _unary("sigmoid", torch.sigmoid)
sqrt = _unary("sqrt", torch.sqrt)
rsqrt = _unary("rsqrt", torch.rsqrt)
reciprocal = _unary("reciprocal", torch.reciprocal)
erf = _unary("erf", torch.erf)
floor = _unary("floor", torch.floor)
ceil = _unary("ceil", torch.ceil)
sign = _unary("sign", torch.sign)
logical_not = _unary("logical_not", torch.logical_not)
# Identity on values; autodiff gives it a zero derivative (x.detach() inside the function).
stop_gradient = _unary("stop_gradient", torch.Tensor.detach)
# Identity on values that makes a new tensor (x.clone()): a graph output is never the input itself.
copy = _unary("copy", torch.clone)
exp2 = _unary("exp2", torch.exp2)
log2 = _unary("log2", torch.log2)
log10 = _unary("log10", torch.log10)
sinh = _unary("sinh", torch.sinh)
cosh = _unary("cosh", torch.cosh)
asin = _unary("asin", torch.asin)
acos = _unary("acos", torch.acos)
atan = _unary("atan", torch.atan)
asinh = _unary("asinh", torch.asinh)
acosh = _unary("acosh", torch.acosh)
atanh = _unary("atanh", torch.atanh)
erfc = _unary("erfc", torch.erfc)  # not 1 - erf: that loses every digit in the tail
erfinv = _unary("erfinv", torch.erfinv)
lgamma = _unary("lgamma", torch.lgamma)
# The n-th derivative of digamma (n = 0: digamma itself).  Kernels compute n <= 1 (FUSED_POLYGAMMA).
polygamma = register(Primitive("polygamma", "elementwise", _same, lambda x, *, n: torch.polygamma(n, x)))
# Round half to even, as torch.round.
round_ = _unary("round", torch.round)
# Whether the sign bit is set: true for -0.0 and negative NaNs too (copysign needs exactly that).
signbit = register(Primitive("signbit", "elementwise", lambda x: (x[0], torch.bool), torch.signbit))

LN2, LN10 = math.log(2.0), math.log(10.0)

# d out / d x, written with primitives so they differentiate again.
neg.transpose = lambda ct, out, x: [-ct]
copy.transpose = lambda ct, out, x: [ct]
abs_.deriv = lambda out, x: [sign(x)]
exp.deriv = lambda out, x: [out]
log.deriv = lambda out, x: [reciprocal(x)]
log1p.deriv = lambda out, x: [reciprocal(x + 1)]
expm1.deriv = lambda out, x: [out + 1]
sin.deriv = lambda out, x: [cos(x)]
cos.deriv = lambda out, x: [-sin(x)]
tan.deriv = lambda out, x: [1 + out * out]
tanh.deriv = lambda out, x: [1 - out * out]
sigmoid.deriv = lambda out, x: [out * (1 - out)]
sqrt.deriv = lambda out, x: [0.5 / out]
rsqrt.deriv = lambda out, x: [-0.5 * (out / x)]
reciprocal.deriv = lambda out, x: [-(out * out)]
exp2.deriv = lambda out, x: [out * LN2]
log2.deriv = lambda out, x: [reciprocal(x * LN2)]
log10.deriv = lambda out, x: [reciprocal(x * LN10)]
erf.deriv = lambda out, x: [(2 / math.sqrt(math.pi)) * exp(-(x * x))]
erfc.deriv = lambda out, x: [(-2 / math.sqrt(math.pi)) * exp(-(x * x))]
erfinv.deriv = lambda out, x: [(math.sqrt(math.pi) / 2) * exp(out * out)]
sinh.deriv = lambda out, x: [cosh(x)]
cosh.deriv = lambda out, x: [sinh(x)]
asin.deriv = lambda out, x: [rsqrt(1 - x * x)]
acos.deriv = lambda out, x: [-rsqrt(1 - x * x)]
atan.deriv = lambda out, x: [reciprocal(x * x + 1)]
asinh.deriv = lambda out, x: [rsqrt(x * x + 1)]
acosh.deriv = lambda out, x: [rsqrt(x * x - 1)]
atanh.deriv = lambda out, x: [reciprocal(1 - x * x)]
lgamma.deriv = lambda out, x: [polygamma(x, n=0)]
FUSED_POLYGAMMA = 1  # the highest order the kernels compute (digamma, trigamma); torch runs the rest


def _polygamma_deriv(out, x, *, n):
    if n + 1 <= FUSED_POLYGAMMA:
        return [polygamma(x, n=n + 1)]
    from .fallback import emit_aten  # imported late: the fallback builds on this module

    meta = torch.empty(x.shape, dtype=x.dtype, device="meta")
    return [emit_aten(torch.ops.aten.polygamma.default, (n + 1, x), {}, meta)]


polygamma.deriv = _polygamma_deriv
for _p in (floor, ceil, sign, logical_not, stop_gradient, round_, signbit):
    _p.nondiff = True


# ---------------------------------------------------------------------------------------------
# Elementwise binary and ternary.


def _binary(name: str, torch_fn: Callable, out_dtype: torch.dtype | None = None) -> Primitive:
    def shape_rule(a, b, **_):
        shape, dtype = _same(a, b)
        return shape, out_dtype or dtype

    return register(Primitive(name, "elementwise", shape_rule, lambda a, b: torch_fn(a, b)))


add = _binary("add", torch.add)
sub = _binary("sub", torch.sub)
mul = _binary("mul", torch.mul)
div = _binary("div", torch.div)
pow_ = _binary("pow", torch.pow)
maximum = _binary("maximum", torch.maximum)
minimum = _binary("minimum", torch.minimum)
atan2 = _binary("atan2", torch.atan2)
eq = _binary("eq", torch.eq, torch.bool)
ne = _binary("ne", torch.ne, torch.bool)
lt = _binary("lt", torch.lt, torch.bool)
le = _binary("le", torch.le, torch.bool)
gt = _binary("gt", torch.gt, torch.bool)
ge = _binary("ge", torch.ge, torch.bool)
logical_and = _binary("logical_and", torch.logical_and, torch.bool)
logical_or = _binary("logical_or", torch.logical_or, torch.bool)
# Integer floor division and remainder, Python-style (integers only: floats go through fmod).
floordiv = _binary("floordiv", lambda a, b: torch.div(a, b, rounding_mode="floor"))
mod = _binary("mod", torch.remainder)
# C's fmod (the sign of a), torch.fmod.
fmod = _binary("fmod", torch.fmod)
hypot = _binary("hypot", torch.hypot)  # sqrt(a*a + b*b) without overflow or underflow on the way
# x * log(y), 0 where x == 0 (unless y is NaN): torch.xlogy.
xlogy = _binary("xlogy", torch.xlogy)
for _p in (eq, ne, lt, le, gt, ge, logical_and, logical_or, floordiv, mod):
    _p.nondiff = True


def trunc(q: Var) -> Var:
    return where(lt(q, like(q, 0)), ceil(q), floor(q))


add.transpose = lambda ct, out, x, y: [ct, ct]
sub.transpose = lambda ct, out, x, y: [ct, -ct]
mul.deriv = lambda out, x, y: [y, x]
div.deriv = lambda out, x, y: [reciprocal(y), -(out / y)]
fmod.deriv = lambda out, x, y: [like(out, 1), -trunc(x / y)]
hypot.deriv = lambda out, x, y: [x / out, y / out]


def _sum_terms(*terms):
    """The sum of the terms that are not None (symbolic zeros; at least one is not)."""
    total = None
    for t in terms:
        if t is not None:
            total = t if total is None else total + t
    return total


# atan2(y, x): torch's forward mode divides by y^2 + x^2 (NaN at the origin), its reverse mode
# multiplies by a reciprocal that is 0 where y^2 + x^2 == 0, so grad(atan2(a, a)) is 0 at a = 0.


def _atan2_jvp(primals, tangents, out):
    y, x = primals
    ty, tx = tangents
    return _sum_terms(None if tx is None else -(y * tx), None if ty is None else x * ty) / (y * y + x * x)


def _atan2_vjp(primals, out, ct):
    y, x = primals
    r2 = y * y + x * x
    at_origin = eq(r2, like(r2, 0))
    recip = where(at_origin, like(r2, 0), reciprocal(where(at_origin, like(r2, 1), r2)))
    return [ct * x * recip, ct * -y * recip]


atan2.jvp, atan2.vjp = _atan2_jvp, _atan2_vjp


# xlogy: torch's derivative in x is xlogy(x_dot, y), 0 where x == 0 and y <= 0 (not log(y) = nan);
# in y, x / y.


def _xlogy_x_part(x_dot, x, y):
    zero = like(x, 0)
    return where(logical_and(eq(x, zero), le(y, zero)), zero, xlogy(x_dot, y))


def _xlogy_jvp(primals, tangents, out):
    x, y = primals
    tx, ty = tangents
    return _sum_terms(None if tx is None else _xlogy_x_part(tx, x, y), None if ty is None else ty * x / y)


xlogy.jvp = _xlogy_jvp
xlogy.vjp = lambda primals, out, ct: [_xlogy_x_part(ct, *primals), ct * primals[0] / primals[1]]


def _pow_deriv(out, x, y):
    # torch's conventions: d/dbase is 0 where exponent == 0; d/dexponent is 0 where base == 0 and
    # exponent >= 0 (instead of 0 * log(0) = nan).
    zero = like(out, 0)
    d_base = where(eq(y, zero), zero, y * pow_(x, y - 1))
    d_exp = where(logical_and(eq(x, zero), ge(y, zero)), zero, out * log(x))
    return [d_base, d_exp]


pow_.deriv = _pow_deriv


def _select_deriv(prefer):
    # torch splits the derivative evenly between equal operands of maximum/minimum.
    def deriv(out, x, y):
        to_x = where(eq(x, y), like(out, 0.5), convert(prefer(x, y), dtype=out.dtype))
        return [to_x, 1 - to_x]

    return deriv


maximum.deriv = _select_deriv(gt)
minimum.deriv = _select_deriv(lt)


def _where_shape(c, a, b, **_):
    assert c[1] == torch.bool and c[0] == a[0]
    return _same(a, b)


where = register(Primitive("where", "elementwise", _where_shape, torch.where))


def _where_jvp(primals, tangents, out):
    cond, _, _ = primals
    _, tx, ty = tangents
    if tx is None and ty is None:
        return None
    zero = like(out, 0)
    return where(cond, zero if tx is None else tx, zero if ty is None else ty)


def _where_vjp(primals, out, ct):
    zero = like(out, 0)
    return [None, where(primals[0], ct, zero), where(primals[0], zero, ct)]


where.jvp, where.vjp = _where_jvp, _where_vjp


convert = register(
    Primitive("convert", "elementwise", lambda x, *, dtype: (x[0], dtype), lambda x, *, dtype: x.to(dtype))
)


def _convert_transpose(ct, out, x, *, dtype):
    # A cast between floating types is linear; a cast to or from integers has no derivative.
    return [convert(ct, dtype=x.dtype) if x.dtype.is_floating_point else None]


convert.transpose = _convert_transpose


# ---------------------------------------------------------------------------------------------
# Sources: values that read no operand (random draws read only their seed).


def _full_impl(*, value, shape, dtype, device=None):
    return torch.full(shape, value, dtype=dtype, device=device)


full = register(Primitive("full", "source", lambda *, value, shape, dtype: (tuple(shape), dtype), _full_impl))


def _iota_impl(*, shape, dim, dtype, device=None):
    ar = torch.arange(shape[dim], dtype=dtype, device=device)
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return ar.reshape(view).expand(shape).contiguous()


iota = register(Primitive("iota", "source", lambda *, shape, dim, dtype: (tuple(shape), dtype), _iota_impl))


# Random numbers: Triton's Philox (tl.rand / tl.randn) keyed by a seed tensor (an input drawn from
# torch's generator) and the element's row-major offset.  The torch backend draws from a torch
# generator with the same seed: the same distribution, not the same stream.  The optional second
# input is the tensor the draw is for (bernoulli's p), which vmap's "same" randomness refuses when
# batched.  vmap decides per randomness mode whether the shape gains the batch axis.


def _rand_impl(seed, *data, shape, dtype, normal):
    gen = torch.Generator(device=seed.device).manual_seed(int(seed))
    return (torch.randn if normal else torch.rand)(shape, dtype=dtype, device=seed.device, generator=gen)


rand = register(
    Primitive(
        "rand",
        "source",
        lambda seed, *data, shape, dtype, normal: (tuple(shape), dtype),
        _rand_impl,
        index_rule=lambda node, index: [(), index][: len(node.inputs)],  # the seed is a scalar
        random=True,
    )
)
for _p in (full, iota, rand):
    _p.nondiff = True
    _p.batch = lambda xs, batched, size, **params: None  # never batched: vmap_graph handles rand


# ---------------------------------------------------------------------------------------------
# Views: index rules, so they move no data inside a kernel.


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


broadcast_in_dim = register(
    Primitive("broadcast_in_dim", "view", _broadcast_shape, _broadcast_impl, index_rule=_broadcast_index)
)


def _broadcast_transpose(ct, out, x, *, shape, dims):
    # The adjoint of a broadcast is a sum over the broadcast axes (then x's own axis order).
    b = current_builder()
    stretched = {d for i, d in enumerate(dims) if x.shape[i] == 1 and shape[d] != 1}
    axes = tuple(sorted(set(range(len(shape))) - set(dims) | stretched))
    summed = reduce_sum(ct, axes=axes) if axes else ct
    remaining = [d for d in range(len(shape)) if d not in axes]
    perm = [remaining.index(d) for d in dims if d not in stretched]
    return [b.reshape(b.transpose(summed, perm), x.shape)]


broadcast_in_dim.transpose = _broadcast_transpose
broadcast_in_dim.batch = lambda xs, bt, size, *, shape, dims: broadcast_in_dim(
    xs[0], shape=(size, *shape), dims=(0, *_shift(dims))
)


def _reshape_shape(x, *, shape):
    assert math.prod(shape) == math.prod(x[0]), (x, shape)
    return tuple(shape), x[1]


reshape = register(
    Primitive(
        "reshape",
        "view",
        _reshape_shape,
        lambda x, *, shape: x.reshape(shape),
        index_rule=lambda node, index: [reshape_index(index, node.out.shape, node.inputs[0].shape)],
    )
)
reshape.transpose = lambda ct, out, x, *, shape: [current_builder().reshape(ct, x.shape)]
reshape.batch = lambda xs, bt, size, *, shape: reshape(xs[0], shape=(size, *shape))


def _transpose_index(node, index):
    perm = node.params["perm"]
    src = [None] * len(perm)
    for out_dim, in_dim in enumerate(perm):
        src[in_dim] = index[out_dim]
    return [tuple(src)]


def inverse_permutation(perm) -> tuple[int, ...]:
    return tuple(sorted(range(len(perm)), key=lambda d: perm[d]))


transpose = register(
    Primitive(
        "transpose",
        "view",
        lambda x, *, perm: (tuple(x[0][p] for p in perm), x[1]),
        lambda x, *, perm: x.permute(perm),
        index_rule=_transpose_index,
    )
)
transpose.batch = lambda xs, bt, size, *, perm: transpose(xs[0], perm=(0, *_shift(perm)))
transpose.transpose = lambda ct, out, x, *, perm: [current_builder().transpose(ct, inverse_permutation(perm))]


def _slice_shape(x, *, start, stop, step):
    return tuple(max(0, -(-(e - s) // st)) for s, e, st in zip(start, stop, step)), x[1]


slice_ = register(
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


def concat_offsets(sizes: list[int]) -> list[int]:
    offs, acc = [], 0
    for n in sizes:
        offs.append(acc)
        acc += n
    return offs


def _piece_index(i: Idx, n: int, off: int) -> Idx:
    """Where piece [off, off + n) of a concatenation is read at position i: i - off where selected;
    every piece is read (all but one discarded by a select), so in range everywhere.  When i is
    n * q + r with 0 <= r < n and off a multiple of n (a stack of equal pieces), that is r; else a clamp."""
    split = i._split(n) if n > 1 else None
    if split is not None and off % n == 0:
        return split[1]
    return clamp(i + (-off), 0, n - 1)


def _concat_index(node, index):
    axis, i = node.params["axis"], index[node.params["axis"]]
    sizes = [v.shape[axis] for v in node.inputs]
    return [
        index[:axis] + (_piece_index(i, n, off),) + index[axis + 1 :] for n, off in zip(sizes, concat_offsets(sizes))
    ]


concatenate = register(
    Primitive("concatenate", "view", _concat_shape, lambda *xs, axis: torch.cat(xs, axis), index_rule=_concat_index)
)


def _concat_transpose(ct, out, *xs, axis):
    pieces = []
    for v, off in zip(xs, concat_offsets([v.shape[axis] for v in xs])):
        start = [0] * len(out.shape)
        stop = list(out.shape)
        start[axis], stop[axis] = off, off + v.shape[axis]
        pieces.append(slice_(ct, start=tuple(start), stop=tuple(stop), step=(1,) * len(stop)))
    return pieces


concatenate.transpose = _concat_transpose
concatenate.batch = lambda xs, bt, size, *, axis: concatenate(
    *[with_batch_axis(v, t, size) for v, t in zip(xs, bt)], axis=axis + 1
)


# pad: the adjoint of a strided slice.  Places x at lo + i * (interior + 1) along each axis, zeros
# elsewhere.  It reads its operand at a clamped index and selects, like concatenate.


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
            src.append(clamp_above(i, n - 1) if i.bound() != n else i)
        else:
            src.append(clamp((i + (-lo)) // (it + 1), 0, max(n - 1, 0)))
    return [tuple(src)]


pad = register(Primitive("pad", "view", _pad_shape, _pad_impl, index_rule=_pad_index))


def _slice_transpose(ct, out, x, *, start, stop, step):
    if 0 in out.shape:
        return [current_builder().full(0, x.dtype, x.shape)]
    hi = tuple(n - (s + (m - 1) * st + 1) for n, s, m, st in zip(x.shape, start, out.shape, step))
    return [pad(ct, lo=tuple(start), hi=hi, interior=tuple(st - 1 for st in step))]


def _pad_transpose(ct, out, x, *, lo, hi, interior):
    stop = tuple(lo_ + max(n - 1, 0) * (it + 1) + 1 for n, lo_, it in zip(x.shape, lo, interior))
    return [slice_(ct, start=tuple(lo), stop=stop, step=tuple(it + 1 for it in interior))]


slice_.transpose = _slice_transpose
slice_.batch = lambda xs, bt, size, *, start, stop, step: slice_(
    xs[0], start=(0, *start), stop=(size, *stop), step=(1, *step)
)
pad.batch = lambda xs, bt, size, *, lo, hi, interior: pad(xs[0], lo=(0, *lo), hi=(0, *hi), interior=(0, *interior))
pad.transpose = _pad_transpose


def _rev_index(node, index):
    axes = node.params["axes"]
    return [tuple(reverse(i, n) if d in axes else i for d, (i, n) in enumerate(zip(index, node.out.shape)))]


# rev: x read backwards along `axes` (torch.flip).
rev = register(
    Primitive("rev", "view", lambda x, *, axes: x, lambda x, *, axes: torch.flip(x, axes), index_rule=_rev_index)
)
rev.transpose = lambda ct, out, x, *, axes: [rev(ct, axes=axes)]
rev.batch = lambda xs, bt, size, *, axes: rev(xs[0], axes=_shift(axes))


# ---------------------------------------------------------------------------------------------
# Reductions over a tuple of axes.


def _reduce_shape(x, *, axes):
    return tuple(s for i, s in enumerate(x[0]) if i not in axes), x[1]


def lowest(dtype):
    return -math.inf if dtype.is_floating_point else (False if dtype == torch.bool else torch.iinfo(dtype).min)


def highest(dtype):
    return math.inf if dtype.is_floating_point else (True if dtype == torch.bool else torch.iinfo(dtype).max)


def _torch_reduce(fn, identity):
    def impl(x, *, axes):
        if not axes:
            return x.clone()
        if any(x.shape[a] == 0 for a in axes):  # nothing reduced: the identity (torch's amax refuses)
            shape, _ = _reduce_shape((x.shape, x.dtype), axes=axes)
            return torch.full(shape, identity(x.dtype), dtype=x.dtype, device=x.device)
        return fn(x, axes)

    return impl


def _prod(x, axes):
    for a in sorted(axes, reverse=True):
        x = x.prod(a)
    return x


def _reduction(name, torch_fn, identity) -> Primitive:
    p = register(Primitive(name, "reduction", _reduce_shape, _torch_reduce(torch_fn, identity), identity=identity))
    p.batch = lambda xs, bt, size, *, axes: p(xs[0], axes=_shift(axes))
    return p


reduce_sum = _reduction("reduce_sum", lambda x, a: x.sum(a), lambda d: 0)
reduce_max = _reduction("reduce_max", lambda x, a: x.amax(a), lowest)
reduce_min = _reduction("reduce_min", lambda x, a: x.amin(a), highest)
reduce_prod = _reduction("reduce_prod", _prod, lambda d: 1)


def expand_back(v: Var, x: Var, axes) -> Var:
    """Broadcasts a reduction's result (or cotangent) back over the reduced axes of x."""
    kept = tuple(d for d in range(len(x.shape)) if d not in axes)
    return broadcast_in_dim(v, shape=x.shape, dims=kept) if x.shape != v.shape else v


reduce_sum.transpose = lambda ct, out, x, *, axes: [expand_back(ct, x, axes)]


def _extremum_mask(x, out, axes):
    """1 where x attains the max (min), divided by how many do: torch shares the derivative."""
    hit = convert(eq(x, expand_back(out, x, axes)), dtype=x.dtype)
    return hit / expand_back(reduce_sum(hit, axes=axes), x, axes)


def _extremum_jvp(primals, tangents, out, *, axes):
    return reduce_sum(tangents[0] * _extremum_mask(primals[0], out, axes), axes=axes)


def _extremum_vjp(primals, out, ct, *, axes):
    return [expand_back(ct, primals[0], axes) * _extremum_mask(primals[0], out, axes)]


reduce_max.jvp = reduce_min.jvp = _extremum_jvp
reduce_max.vjp = reduce_min.vjp = _extremum_vjp


# Up to this many reduced elements, the product of the others is formed explicitly (n x n
# elements), so it differentiates again exactly even through zeros; beyond it, a zero-safe formula
# is exact to first order only.
LEAVE_ONE_OUT_MAX = 256


def _prod_others(x, axes):
    """For each element, the product of the other elements of its reduction."""
    n = math.prod(x.shape[a] for a in axes)
    if n <= LEAVE_ONE_OUT_MAX:
        return _leave_one_out_prod(x, axes, n)
    zero, one = like(x, 0), like(x, 1)
    is_zero = eq(x, zero)
    nonzero_prod = expand_back(reduce_prod(where(is_zero, one, x), axes=axes), x, axes)
    zeros = expand_back(reduce_sum(convert(is_zero, dtype=x.dtype), axes=axes), x, axes)
    if_nonzero = where(eq(zeros, zero), nonzero_prod / where(is_zero, one, x), zero)
    if_zero = where(eq(zeros, one), nonzero_prod, zero)
    return where(is_zero, if_zero, if_nonzero)


def _leave_one_out_prod(x, axes, n):
    b = current_builder()
    kept = [d for d in range(len(x.shape)) if d not in axes]
    perm = kept + list(axes)
    rows = b.reshape(b.transpose(x, perm), (*[x.shape[d] for d in kept], n))
    k = len(kept)
    square = (*rows.shape[:k], n, n)
    others = broadcast_in_dim(rows, shape=square, dims=(*range(k), k + 1))  # [..., i, j] = x_j
    diagonal = eq(iota(shape=(n, n), dim=0, dtype=torch.int64), iota(shape=(n, n), dim=1, dtype=torch.int64))
    diagonal = broadcast_in_dim(diagonal, shape=square, dims=(k, k + 1))
    prods = reduce_prod(where(diagonal, b.full(1, x.dtype, square), others), axes=(k + 1,))
    return b.transpose(b.reshape(prods, tuple(x.shape[d] for d in perm)), inverse_permutation(perm))


reduce_prod.jvp = lambda primals, tangents, out, *, axes: reduce_sum(
    tangents[0] * _prod_others(primals[0], axes), axes=axes
)
reduce_prod.vjp = lambda primals, out, ct, *, axes: [expand_back(ct, primals[0], axes) * _prod_others(primals[0], axes)]


# ---------------------------------------------------------------------------------------------
# Scans along one axis: a row kernel keeps the row in registers and scans it (tl.cumsum).


def _cumsum_impl(x, *, axis, reverse):
    return x.flip(axis).cumsum(axis).flip(axis) if reverse else x.cumsum(axis)


# Inclusive prefix sums along `axis`, from the end when `reverse` (the adjoint of the forward scan).
cumsum = register(Primitive("cumsum", "scan", lambda x, *, axis, reverse: x, _cumsum_impl))
cumsum.transpose = lambda ct, out, x, *, axis, reverse: [cumsum(ct, axis=axis, reverse=not reverse)]
cumsum.batch = lambda xs, bt, size, *, axis, reverse: cumsum(xs[0], axis=axis + 1, reverse=reverse)


# ---------------------------------------------------------------------------------------------
# Contractions: one primitive for every matmul form (XLA's dot_general).
#
#   dot_general(a, b, contract=(ca, cb), batch=(ba, bb))
#
# sums a * b over the paired axes ca[i] of a and cb[i] of b, elementwise along the paired batch axes
# ba[i], bb[i]; the result's axes are the batch axes, then a's free axes, then b's free axes, each in
# operand order.  mm is contract=((1,), (0,)); bmm adds batch=((0,), (0,)); a dot product contracts
# everything; an outer product contracts nothing.  Both operands have one dtype (tracing casts); the
# result has it too, rounded as torch's matmul returns it, unless `out_dtype` (float32 for half
# operands) keeps the accumulator's precision, for torch's add* ops, which scale and add before they
# round once.
# The scheduler runs it as a tl.dot template kernel (kernels/contraction.py) with the producers of
# its operands fused in front and its consumers behind, or, when it is too small for tensor cores
# to pay, expands it into the broadcast multiply and sum below (`expand_dot_general`).


def dot_axes(a_rank: int, b_rank: int, contract, batch) -> tuple[list[int], list[int]]:
    """The free axes of a and of b, in operand order."""
    (ca, cb), (ba, bb) = contract, batch
    return [d for d in range(a_rank) if d not in ca and d not in ba], [
        d for d in range(b_rank) if d not in cb and d not in bb
    ]


def _dot_shape(a, b, *, contract, batch, out_dtype=None):
    (ash, adt), (bsh, bdt) = a, b
    (ca, cb), (ba, bb) = contract, batch
    assert adt == bdt, f"dot_general operands must have one dtype: {adt}, {bdt}"
    assert len(ca) == len(cb) and len(ba) == len(bb), (contract, batch)
    assert all(ash[i] == bsh[j] for i, j in zip(ca, cb)), f"contracted sizes differ: {ash} {bsh} {contract}"
    assert all(ash[i] == bsh[j] for i, j in zip(ba, bb)), f"batch sizes differ: {ash} {bsh} {batch}"
    assert len(set(ca) | set(ba)) == len(ca) + len(ba) and len(set(cb) | set(bb)) == len(cb) + len(bb)
    fa, fb = dot_axes(len(ash), len(bsh), contract, batch)
    return (*[ash[i] for i in ba], *[ash[i] for i in fa], *[bsh[j] for j in fb]), out_dtype or adt


def _dot_impl(a, b, *, contract, batch, out_dtype=None):
    """torch.einsum with one letter per axis (it runs as a bmm)."""
    if out_dtype is not None:  # half products are exact in float32, accumulated there
        a, b = a.to(out_dtype), b.to(out_dtype)
    (ca, cb), (ba, bb) = contract, batch
    fa, fb = dot_axes(a.dim(), b.dim(), contract, batch)
    letters = iter("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    a_sub, b_sub = [""] * a.dim(), [""] * b.dim()
    for i, j in [*zip(ba, bb), *zip(ca, cb)]:
        a_sub[i] = b_sub[j] = next(letters)
    for i in fa:
        a_sub[i] = next(letters)
    for j in fb:
        b_sub[j] = next(letters)
    out = "".join(a_sub[i] for i in ba) + "".join(a_sub[i] for i in fa) + "".join(b_sub[j] for j in fb)
    return torch.einsum(f"{''.join(a_sub)},{''.join(b_sub)}->{out}", a, b)


dot_general = register(Primitive("dot_general", "contraction", _dot_shape, _dot_impl, strategy=TEMPLATE))


def _widened(out_dtype) -> dict:
    return {} if out_dtype is None else {"out_dtype": out_dtype}


def _dot_jvp(primals, tangents, out, *, contract, batch, out_dtype=None):
    """Bilinear: d(a b) = da b + a db."""
    (a, b), (a_dot, b_dot) = primals, tangents
    axes = dict(contract=contract, batch=batch, **_widened(out_dtype))
    return _sum_terms(
        None if a_dot is None else dot_general(a_dot, b, **axes),
        None if b_dot is None else dot_general(a, b_dot, **axes),
    )


def _dot_ct(ct, mine, other, mine_is_a: bool, contract, batch):
    """The cotangent of one operand: ct contracted with the other operand over the other's free axes
    (one contraction), then laid out in the operand's own axis order (a transpose: free in kernels)."""
    (ca, cb), (ba, bb) = contract, batch
    a, b = (mine, other) if mine_is_a else (other, mine)
    fa, fb = dot_axes(len(a.shape), len(b.shape), contract, batch)
    nb = len(ba)
    # ct's axes: the batch axes [0, nb), a's free axes, then b's free axes.
    if mine_is_a:
        mine_c, other_c, mine_b, other_b, mine_f, other_f = ca, cb, ba, bb, fa, fb
        ct_other_f = tuple(range(nb + len(fa), nb + len(fa) + len(fb)))
    else:
        mine_c, other_c, mine_b, other_b, mine_f, other_f = cb, ca, bb, ba, fb, fa
        ct_other_f = tuple(range(nb, nb + len(fa)))
    # g's axes: the batch axes, my free axes (ct's), then the other's contracted axes in its order.
    g = dot_general(ct, other, contract=(ct_other_f, tuple(other_f)), batch=(tuple(range(nb)), tuple(other_b)))
    pos = {d: i for i, d in enumerate(mine_b)} | {d: nb + i for i, d in enumerate(mine_f)}
    ordered = sorted(other_c)
    pos |= {d: nb + len(mine_f) + ordered.index(o) for d, o in zip(mine_c, other_c)}
    return current_builder().transpose(g, [pos[d] for d in range(len(mine.shape))])


def _dot_vjp(primals, out, ct, *, contract, batch, out_dtype=None):
    """The transpose: each operand's cotangent is one contraction of ct with the other operand (in
    the operands' dtype, as torch's add* ops compute their operands' gradients)."""
    a, b = primals
    if out_dtype is not None:
        ct = current_builder().cast(ct, a.dtype)
    return [
        _dot_ct(ct, a, b, True, contract, batch),
        _dot_ct(ct, b, a, False, contract, batch),
    ]


dot_general.jvp, dot_general.vjp = _dot_jvp, _dot_vjp


def _dot_batch(xs, batched, size, *, contract, batch, out_dtype=None):
    """A batch axis on both operands is one more batch axis (the kernel grid's axis 1); on one operand
    only, it is one more free axis of that operand, so vmap over a matmul's rows is one bigger GEMM."""
    a, b = xs
    (ca, cb), (ba, bb) = contract, batch
    fa, fb = dot_axes(len(a.shape) - batched[0], len(b.shape) - batched[1], contract, batch)
    wide = _widened(out_dtype)
    if batched[0] and batched[1]:
        return dot_general(a, b, contract=(_shift(ca), _shift(cb)), batch=((0, *_shift(ba)), (0, *_shift(bb))), **wide)
    if batched[0]:
        out = dot_general(a, b, contract=(_shift(ca), cb), batch=(_shift(ba), bb), **wide)
        at = len(ba)  # the batch axis is a's first free axis
    else:
        out = dot_general(a, b, contract=(ca, _shift(cb)), batch=(ba, _shift(bb)), **wide)
        at = len(ba) + len(fa)  # b's first free axis
    rank = len(out.shape)
    return current_builder().transpose(out, [at, *[d for d in range(rank) if d != at]])


dot_general.batch = _dot_batch


def expand_dot_general(a: Var, b: Var, *, contract, batch, out_dtype=None) -> Var:
    """dot_general as a broadcast multiply and a sum over the contracted axes (laid out last): the
    form the fused pointwise and row kernels compute, for contractions too small for tl.dot."""
    bld = current_builder()
    if out_dtype is not None:
        a, b = bld.cast(a, out_dtype), bld.cast(b, out_dtype)
    (ca, cb), (ba, bb) = contract, batch
    fa, fb = dot_axes(len(a.shape), len(b.shape), contract, batch)
    nb, nfa, nfb = len(ba), len(fa), len(fb)
    out_shape, _ = _dot_shape((a.shape, a.dtype), (b.shape, b.dtype), contract=contract, batch=batch)
    shape = (*out_shape, *[a.shape[i] for i in ca])
    a_dims = {d: i for i, d in enumerate(ba)} | {d: nb + i for i, d in enumerate(fa)}
    a_dims |= {d: nb + nfa + nfb + i for i, d in enumerate(ca)}
    b_dims = {d: i for i, d in enumerate(bb)} | {d: nb + nfa + i for i, d in enumerate(fb)}
    b_dims |= {d: nb + nfa + nfb + i for i, d in enumerate(cb)}
    a_wide = broadcast_in_dim(a, shape=shape, dims=tuple(a_dims[d] for d in range(len(a.shape))))
    b_wide = broadcast_in_dim(b, shape=shape, dims=tuple(b_dims[d] for d in range(len(b.shape))))
    prod = a_wide * b_wide
    if not ca:
        return prod
    return bld.reduce(reduce_sum, prod, tuple(range(len(out_shape), len(shape))))


for _p in list(PRIMS.values()):
    check_rules(_p)
