"""Codegen: a scheduled kernel becomes deterministic, readable Triton source.

The source is fully specialised: shapes, strides and block sizes are literals, so the only kernel
arguments are pointers (inputs first, then outputs).  Contraction kernels follow the template of
kernels/contraction.py, with the block sizes of its tile table for the target (the interpreter or
sm_90).  Half-precision values are computed in fp32:
loaded, widened at once, and rounded on the way out.  The bytes a launch moves are counted here,
at the load and store sites: each buffer's distinct addressed elements, once per pass over it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import primitives as P
from . import schedule
from .graph import DTYPES, Node, Var
from .indexing import Idx, Index, contiguous_strides, ravel
from .kernels import contraction as contraction_kernels
from .primitives import Primitive
from .schedule import Entry, Kernel

POINTWISE_BLOCK = 1024  # elements per program of a pointwise kernel
ROW_TILE = 4096  # elements per program of a row kernel (BLOCK_R * BLOCK_C)
LOOP_BLOCK_C = 1024  # column block of a looping row kernel
# Counting distinct addresses evaluates every index of a launch; above this, assume each element once.
BYTE_COUNT_LIMIT = 1 << 22

_HALF = (torch.float16, torch.bfloat16)


def tl_dtype(dtype: torch.dtype) -> str:
    """The Triton type a value of this dtype is computed in (half precision widens to fp32)."""
    if dtype in _HALF:
        return "tl.float32"
    if dtype not in DTYPES:
        raise NotImplementedError(f"tritonfunc: dtype {dtype} is not supported by the Triton backend")
    return DTYPES[dtype].triton


def literal(value, dtype: torch.dtype) -> str:
    """A typed scalar constant (an explicitly typed constant keeps full precision in fp64 kernels)."""
    if dtype == torch.bool:
        return "tl.full([], 1, tl.int1)" if value else "tl.full([], 0, tl.int1)"
    if not dtype.is_floating_point:
        return f"tl.full([], {int(value)}, {tl_dtype(dtype)})"
    v = float(value)
    text = "_NAN" if math.isnan(v) else "_INF" if v == math.inf else "(-_INF)" if v == -math.inf else repr(v)
    return f"tl.full([], {text}, {tl_dtype(dtype)})"


# ---------------------------------------------------------------------------------------------
# The lowering table: how each FUSED primitive becomes a Triton expression, given its operands'
# expressions, the node and the index it is computed at.  Views without an entry only re-index.

Lowering = Callable[[list[str], Node, Index], str]
LOWERINGS: dict[Primitive, Lowering] = {}


def lowers(prim: Primitive):
    def register(fn: Lowering) -> Lowering:
        LOWERINGS[prim] = fn
        return fn

    return register


def _template(prim: Primitive, text: str) -> None:
    LOWERINGS[prim] = lambda args, node, index: text.format(*args, x=args[0], a=args[0], b=args[-1])


# Integer floor division and remainder, Python-style.  Triton's // and % truncate toward zero (C),
# so step the quotient down, and the remainder over, where the signs differ.
_NEEDS_FIX = "((({a} % {b}) != 0) & ((({a} % {b}) < 0) != ({b} < 0)))"
for _prim, _text in {
    P.neg: "(-{x})",
    P.abs_: "tl.abs({x})",
    P.exp: "tl.exp({x})",
    P.log: "tl.log({x})",
    P.log1p: "libdevice.log1p({x})",
    P.expm1: "libdevice.expm1({x})",
    P.sin: "tl.sin({x})",
    P.cos: "tl.cos({x})",
    P.tan: "libdevice.tan({x})",
    P.tanh: "libdevice.tanh({x})",
    P.sigmoid: "tl.sigmoid({x})",
    P.reciprocal: "(1.0 / {x})",
    P.erf: "tl.erf({x})",
    P.floor: "tl.floor({x})",
    P.ceil: "tl.ceil({x})",
    # torch.sign(nan) is 0: NaN fails both comparisons.
    P.sign: "tl.where({x} > 0, 1.0, tl.where({x} < 0, -1.0, 0.0)).to({x}.dtype)",
    P.logical_not: "({x} == 0)",
    P.stop_gradient: "{x}",
    P.copy: "{x}",
    P.exp2: "tl.exp2({x})",
    P.log2: "tl.log2({x})",
    P.log10: "libdevice.log10({x})",
    P.add: "({a} + {b})",
    P.sub: "({a} - {b})",
    P.mul: "({a} * {b})",
    P.div: "({a} / {b})",
    P.pow_: "libdevice.pow({a}, {b})",
    P.maximum: "tl.maximum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)",
    P.minimum: "tl.minimum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)",
    P.atan2: "libdevice.atan2({a}, {b})",
    P.eq: "({a} == {b})",
    P.ne: "({a} != {b})",
    P.lt: "({a} < {b})",
    P.le: "({a} <= {b})",
    P.gt: "({a} > {b})",
    P.ge: "({a} >= {b})",
    # Boolean and/or through int32 arithmetic: the interpreter's & and | reject some int1 operand mixes.
    P.logical_and: "(({a}).to(tl.int32) * ({b}).to(tl.int32) != 0)",
    P.logical_or: "(({a}).to(tl.int32) + ({b}).to(tl.int32) != 0)",
    P.floordiv: f"(({{a}} // {{b}}) - {_NEEDS_FIX}.to({{a}}.dtype))",
    P.mod: f"tl.where({_NEEDS_FIX}, ({{a}} % {{b}}) + {{b}}, {{a}} % {{b}})",
    P.fmod: "({a} % {b})",  # Triton's % on floats is C's fmod
    P.where: "tl.where({0}, {1}, {2})",
    P.sinh: "libdevice.sinh({x})",
    P.cosh: "libdevice.cosh({x})",
    P.asin: "libdevice.asin({x})",
    P.acos: "libdevice.acos({x})",
    P.atan: "libdevice.atan({x})",
    P.asinh: "libdevice.asinh({x})",
    P.acosh: "libdevice.acosh({x})",
    P.atanh: "libdevice.atanh({x})",
    P.erfc: "libdevice.erfc({x})",
    P.erfinv: "libdevice.erfinv({x})",
    P.lgamma: "libdevice.lgamma({x})",
    P.round_: "libdevice.rint({x})",  # half to even, as torch.round
    P.signbit: "(libdevice.signbit({x}) != 0)",
    P.hypot: "libdevice.hypot({a}, {b})",
    # 0 where x == 0 (x - x: +0 for -0 too), unless y is NaN.
    P.xlogy: "tl.where({a} == 0, tl.where({b} != {b}, {b}, {a} - {a}), {a} * tl.log({b}))",
}.items():
    _template(_prim, _text)


@lowers(P.sqrt)
def _sqrt(args, node, index):
    # fp32 tl.sqrt is approximate on the GPU; sqrt_rn is IEEE-rounded but fp32-only, fp64 sqrt is exact.
    return f"tl.sqrt({args[0]})" if node.out.dtype == torch.float64 else f"tl.sqrt_rn({args[0]})"


@lowers(P.rsqrt)
def _rsqrt(args, node, index):
    # fp64 tl.rsqrt is approximate on the GPU (TRITON_NOTES.md), so divide by an exact sqrt.
    return f"(1.0 / {_sqrt(args, node, index)})"


@lowers(P.polygamma)
def _polygamma(args, node, index):
    helper = {0: "_digamma", 1: "_trigamma"}.get(node.params["n"])  # up to P.FUSED_POLYGAMMA
    if helper is None:
        raise NotImplementedError(f"tritonfunc: polygamma of order {node.params['n']} has no fused kernel")
    return f"{helper}({args[0]})"


@lowers(P.convert)
def _convert(args, node, index):
    if node.out.dtype == torch.bool:
        return f"({args[0]} != 0)"
    return f"{args[0]}.to({tl_dtype(node.out.dtype)})"


@lowers(P.full)
def _full(args, node, index):
    return literal(node.params["value"], node.out.dtype)


@lowers(P.iota)
def _iota(args, node, index):
    i = index[node.params["dim"]]
    if i.is_const():
        return literal(i.const, node.out.dtype)
    return f"({i.render()}).to({tl_dtype(node.out.dtype)})"


@lowers(P.rand)
def _rand(args, node, index):
    offset = ravel(index, contiguous_strides(node.out.shape))
    offset_text = f"tl.full([], {offset.const}, tl.int32)" if offset.is_const() else offset.render()
    fn = "tl.randn" if node.params["normal"] else "tl.rand"
    return f"{fn}({args[0]}, {offset_text}).to({tl_dtype(node.out.dtype)})"


@lowers(P.concatenate)
def _concatenate(args, node, index):
    axis = node.params["axis"]
    i = index[axis].render()
    sizes = [v.shape[axis] for v in node.inputs]
    expr = args[-1]
    for a, n, off in reversed(list(zip(args[:-1], sizes, P.concat_offsets(sizes)))):
        expr = f"tl.where(({i}) < {off + n}, {a}, {expr})"
    return expr


@lowers(P.pad)
def _pad(args, node, index):
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
    return f"tl.where({' & '.join(conds)}, {args[0]}, {literal(0, node.out.dtype)})"


@dataclass(frozen=True)
class ReductionLowering:
    combine: str  # accumulate two tiles elementwise: {a}, {b}
    finish: str  # reduce a tile along axis 1: {acc}


# tl.max/tl.min drop NaNs, torch propagates them: `_nan_max` (in the kernel header) restores that.
REDUCTIONS: dict[Primitive, ReductionLowering] = {
    P.reduce_sum: ReductionLowering("({a} + {b})", "tl.sum({acc}, axis=1, keep_dims=True)"),
    P.reduce_max: ReductionLowering("tl.maximum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)", "_nan_max({acc})"),
    P.reduce_min: ReductionLowering("tl.minimum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)", "_nan_min({acc})"),
    P.reduce_prod: ReductionLowering("({a} * {b})", "tl.reduce({acc}, 1, _mul, keep_dims=True)"),
}


# Scans along axis 1 of a row tile (the whole row: scanned rows never loop over column blocks).
SCANS: dict[Primitive, str] = {
    P.cumsum: "tl.cumsum({tile}, axis=1, reverse={reverse})",
}


HEADER = """import triton
import triton.language as tl
from triton.language.extra import libdevice

_INF = tl.constexpr(float("inf"))
_NAN = tl.constexpr(float("nan"))


@triton.jit
def _mul(a, b):
    return a * b


@triton.jit
def _nan_max(x):
    # tl.max skips NaN; torch.amax returns it.  A row holding NaN sums to NaN.
    has_nan = tl.max((x != x).to(tl.int32), axis=1, keep_dims=True) > 0
    return tl.where(has_nan, tl.sum(x, axis=1, keep_dims=True), tl.max(x, axis=1, keep_dims=True))


@triton.jit
def _nan_min(x):
    has_nan = tl.max((x != x).to(tl.int32), axis=1, keep_dims=True) > 0
    return tl.where(has_nan, tl.sum(x, axis=1, keep_dims=True), tl.min(x, axis=1, keep_dims=True))


@triton.jit
def _round_bf16(x):
    # fp32 -> bf16, rounding to nearest even on the bit pattern (the interpreter would truncate).
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return tl.where(x != x, x.to(tl.bfloat16), rounded)
"""


# Helpers a kernel gets only when its body calls them (they are long, and most kernels need neither).
SPECIAL_FUNCTIONS = {
    "_digamma": """
@triton.jit
def _digamma(x):
    # torch's calc_digamma: reflection below 0, the recurrence up to 10, then the asymptotic series.
    one = tl.full([], 1.0, x.dtype)
    pi = tl.full([], 3.14159265358979323846, tl.float64)
    negative = x < 0
    frac = x - tl.where(negative, tl.ceil(x), tl.floor(x))
    y = tl.where(negative, one - x, x)
    acc = tl.zeros_like(y)
    for _ in tl.static_range(10):
        low = y < 10
        acc = tl.where(low, acc - one / y, acc)
        y = tl.where(low, y + one, y)
    z = one / (y * y)
    poly = tl.full([], 8.33333333333333333333e-2, x.dtype)
    poly = poly * z + tl.full([], -2.10927960927960927961e-2, x.dtype)
    poly = poly * z + tl.full([], 7.57575757575757575758e-3, x.dtype)
    poly = poly * z + tl.full([], -4.16666666666666666667e-3, x.dtype)
    poly = poly * z + tl.full([], 3.96825396825396825397e-3, x.dtype)
    poly = poly * z + tl.full([], -8.33333333333333333333e-3, x.dtype)
    poly = poly * z + tl.full([], 8.33333333333333333333e-2, x.dtype)
    series = tl.where(y < 1.0e17, z * poly, tl.zeros_like(z))
    psi = acc + tl.log(y) - tl.full([], 0.5, x.dtype) / y - series
    psi = tl.where(y == 10, acc + tl.full([], 2.25175258906672110764, x.dtype), psi)
    reflection = (pi / libdevice.tan(pi * frac.to(tl.float64))).to(x.dtype)  # in fp64, as torch's
    psi = tl.where(negative, psi - reflection, psi)
    nan = tl.zeros_like(x) / 0.0  # not the global _NAN: NaN != NaN fails the compiler's global check
    psi = tl.where(negative, tl.where(frac == 0, nan, psi), psi)  # poles at the negative integers
    return tl.where(x == 0, tl.where(one / x < 0, _INF, -_INF), psi)  # -inf at +0, +inf at -0
""",
    "_trigamma": """
@triton.jit
def _trigamma(x):
    # torch's calc_trigamma: reflection below 1/2, six recurrence steps, then the asymptotic series.
    one = tl.full([], 1.0, x.dtype)
    pi = tl.full([], 3.14159265358979323846, x.dtype)
    reflect = x < 0.5
    sin_pi_x = tl.sin(pi * x)
    acc = tl.where(reflect, -(pi * pi) / (sin_pi_x * sin_pi_x), tl.zeros_like(x))
    y = tl.where(reflect, one - x, x)
    for _ in tl.static_range(6):
        acc += one / (y * y)
        y += one
    ixx = one / (y * y)
    tail = tl.full([], 1.0 / 30, x.dtype) - ixx * tl.full([], 1.0 / 42, x.dtype)
    tail = tl.full([], 1.0 / 6, x.dtype) - ixx * tail
    acc += (one + one / (2 * y) + ixx * tail) / y
    return tl.where(reflect, -acc, acc)
""",
}


@dataclass
class KernelSource:
    name: str
    source: str
    args: list[Var]  # pointer arguments: loads, then stores
    num_loads: int
    grid: tuple[int, ...]
    signature: dict[str, str]  # for ahead-of-time compilation
    bytes_read: int
    bytes_written: int
    num_warps: int = 4
    num_stages: int = 3  # Triton's default on CUDA; a contraction's from its tile table


def _num_warps(tile_elements: int) -> int:
    """Warps per program: more for wide row tiles, so each thread holds a bounded slice of the row."""
    return 4 if tile_elements <= 2048 else 8 if tile_elements <= 8192 else 16


def _mask_for(deps: frozenset[str], pointwise: bool) -> str | None:
    if not deps:
        return None
    if pointwise:
        return "mask"
    deps = frozenset(v for v in deps if v[0] != "j")  # an inner dot's element: always in range
    if not deps:
        return None
    return {frozenset("r"): "rmask", frozenset("c"): "cmask"}.get(deps, "mask")


# A contraction kernel masks each iteration variable on its own; the batch b and an inner dot's
# contracted element (ja, jb) are never out of range.
def _contraction_mask(deps: frozenset[str]) -> str | None:
    names = [f"{v[:2]}mask{v[2:]}" if v[0] == "k" else f"{v[0]}mask{v[1:]}" for v in sorted(deps) if v[0] not in "bj"]
    return " & ".join(names) or None


_LIFTED = re.compile(r"\b(m|n|mmask|nmask)\b")


def lift3(text: str) -> str:
    """A line of a 2-d tile's epilogue, written for the 3-d tiles of an outer loop (m3, n3, ...)."""
    return _LIFTED.sub(lambda mt: {"m": "m3", "n": "n3", "mmask": "mmask3", "nmask": "nmask3"}[mt.group(1)], text)


class Scope:
    """Where emitted lines go: values that vary with one of `inner_vars` (the columns of a looping
    row kernel, a dot's k, an outer loop's e) inside the loop, the rest before it.  In the outer loop
    of a contraction's epilogue (`lifted`), 2-d tiles are used as 3-d ones."""

    def __init__(self, outer: list[str], inner: list[str] | None = None, inner_vars=frozenset("c"), lifted=False):
        self.outer = outer
        self.inner = outer if inner is None else inner
        self.inner_vars = frozenset(inner_vars)
        self.lifted = lifted

    def inside(self, deps: frozenset[str]) -> bool:
        return bool(deps & self.inner_vars)

    def add(self, line: str, deps: frozenset[str]):
        if self.inside(deps):
            self.inner.append(lift3(line) if self.lifted else line)
        else:
            self.outer.append(line)


class _UnrolledScope(Scope):
    """The body of an inner dot's unrolled loop (see _Emitter.inner_dot): lines that vary with its
    contracted element go in it, the rest where the enclosing scope puts them."""

    def __init__(self, parent: Scope, loop_vars: set[str]):
        super().__init__(parent.outer, [], loop_vars)
        self.parent = parent
        self.defined: set[str] = set()  # registers of the loop body, not visible after it

    def inside(self, deps: frozenset[str]) -> bool:
        return bool(deps & self.inner_vars) or self.parent.inside(deps)

    def add(self, line: str, deps: frozenset[str]):
        if deps & self.inner_vars:
            self.inner.append(line)
            self.defined.add(line.split(" = ", 1)[0])
        else:
            self.parent.add(line, deps)


class _Emitter:
    def __init__(self, kernel: Kernel, strides: dict[Var, tuple[int, ...]]):
        self.kernel = kernel
        self.strides = strides
        self.pointwise = kernel.domain.kind == "pointwise"
        self.contraction = kernel.domain.kind == "contraction"
        self.loads = kernel.loads
        self.stores = [v for v, _ in kernel.stores]
        self.arg_name = {v: f"in{i}" for i, v in enumerate(self.loads)}
        self.names: dict[int, tuple[str, bool]] = {}  # id(entry) -> (register, defined inside a loop)
        self.counter = 0
        self.tile_sizes: dict[str, int] = {}  # iteration variable -> its extent in the 2-d tiles

    def fresh(self, prefix: str = "v") -> str:
        self.counter += 1
        return f"{prefix}{self.counter - 1}"

    def mask_for(self, deps: frozenset[str]) -> str | None:
        return _contraction_mask(deps) if self.contraction else _mask_for(deps, self.pointwise)

    def ptr_offset(self, var: Var, index) -> str:
        return ravel(index, self.strides.get(var) or contiguous_strides(var.shape)).render()

    def forget_column_values(self):
        """Registers defined inside a loop are not visible after it."""
        self.names = {k: v for k, v in self.names.items() if not v[1]}

    def operand(self, entry: Entry, scope: Scope, inside: bool = True) -> str:
        """An operand's register; used `inside` an outer loop's 3-d scope, a 2-d tile gets a third axis."""
        name = self.expr(entry, scope)
        if inside and scope.lifted and not scope.inside(entry.deps) and entry.deps & {"m", "n"}:
            return f"{name}[:, :, None]"
        return name

    def expr(self, entry: Entry, scope: Scope) -> str:
        """Emits `entry` (and what it needs) into `scope`, returning its register name."""
        if id(entry) in self.names:
            return self.names[id(entry)][0]
        assert entry.op not in ("reduce", "dot"), "reductions and dots are emitted by their loops"
        if entry.op == "inner_dot":
            return self.inner_dot(entry, scope)
        args = [self.operand(e, scope, scope.inside(entry.deps)) for e in entry.inputs]
        if entry.op == "load":
            offset = ravel(entry.index, self.strides.get(entry.var) or contiguous_strides(entry.var.shape))
            # Every lane reading one element (a stride-0 broadcast) is a scalar load: always in bounds.
            mask = None if offset.is_const() else self.mask_for(entry.deps)
            text = f"tl.load({self.arg_name[entry.var]} + {offset.render()}"
            # Masked-off lanes of a contraction's operands must read 0: they are summed by tl.dot.
            other = ", other=0.0" if self.contraction and entry.var.dtype.is_floating_point else ""
            text += f", mask={mask}{other})" if mask else ")"
            if entry.var.dtype in _HALF:
                text += ".to(tl.float32)"
        else:
            node = entry.node
            if node.prim.kind == "view" and node.prim not in LOWERINGS:
                self.names[id(entry)] = self.names[id(entry.inputs[0])]  # same register, re-indexed
                return self.names[id(entry)][0]
            # A cast to half precision rounds there, then computing goes on in fp32.
            if node.prim is P.convert and node.out.dtype in _HALF:
                text = rounded(args[0], node.out.dtype)
            elif entry.op == "scan":  # along the row tile; masked columns add nothing
                zero = literal(0, node.out.dtype)
                rule = SCANS[node.prim]
                text = rule.format(tile=f"tl.where(mask, {args[0]}, {zero})", reverse=node.params["reverse"])
            else:
                text = LOWERINGS[node.prim](args, node, entry.index)
        name = self.fresh()
        scope.add(f"{name} = {text}", entry.deps)
        self.names[id(entry)] = (name, scope.inside(entry.deps))
        return name

    def inner_dot(self, entry: Entry, scope: Scope) -> str:
        """A small dot (schedule._Planner._inner_dot): the sum over its K <= 16 contracted elements of
        the outer product of a [rows, 1] and a [1, columns] tile, unrolled, the operands' producers
        inside the unrolled loop (ja, jb: the contracted element)."""
        i, node = entry.loop, entry.node
        row = next(v for v in entry.deps if schedule.tile_axis(v) == "row")
        col = next(v for v in entry.deps if schedule.tile_axis(v) == "col")
        inside = scope.inside(entry.deps)
        target = scope.inner if inside else scope.outer
        acc_type = "tl.float64" if node.out.dtype == torch.float64 else "tl.float32"
        acc = self.fresh("acc")
        target.append(f"{acc} = tl.zeros([{self.tile_sizes[row]}, {self.tile_sizes[col]}], dtype={acc_type})")
        loop = _UnrolledScope(scope, {f"ja{i}", f"jb{i}"})
        a, b = (self.expr(e, loop) for e in entry.inputs)
        k = schedule.contraction_sizes(node)[2]
        target.append(f"for j{i} in tl.static_range({k}):")
        head = [f"ja{i} = j{i}", f"jb{i} = j{i}"]
        target.extend("    " + line for line in head + loop.inner + [f"{acc} += {a} * {b}"])
        self.names = {key: v for key, v in self.names.items() if v[0] not in loop.defined}
        name = self.fresh()
        target.append(f"{name} = {rounded(acc, node.out.dtype)}")
        self.names[id(entry)] = (name, inside)
        return name

    def store(self, var: Var, entry: Entry, scope: Scope):
        value = self.operand(entry, scope)
        if var.dtype == torch.bfloat16:
            value = f"_round_bf16({value})"
        elif var.dtype == torch.float16:
            value = f"{value}.to(tl.float16)"
        deps = _index_deps(entry)
        mask = self.mask_for(deps) or ("mask" if self.pointwise else "mmask" if self.contraction else "rmask")
        out = f"out{self.stores.index(var)}"
        offset = self.ptr_offset(var, entry.index)
        if not deps:  # a single element: keep the pointer a block, like the value
            offset += " + o * 0" if self.pointwise else " + m * 0" if self.contraction else " + r * 0"
        scope.add(f"tl.store({out} + {offset}, {value}, mask={mask})", deps)


def rounded(value: str, dtype: torch.dtype) -> str:
    """An fp32 value rounded to half precision where torch holds `dtype` (a cast, a product that
    torch stores in it), kept in fp32 to compute on; unchanged for other dtypes."""
    if dtype == torch.float16:
        return f"{value}.to(tl.float16).to(tl.float32)"
    if dtype == torch.bfloat16:
        return f"_round_bf16({value}.to(tl.float32)).to(tl.float32)"
    return value


def _pow2(n: int) -> int:
    return 1 << max(0, (max(n, 1) - 1).bit_length())


def generate(kernel: Kernel, strides: dict[Var, tuple[int, ...]], target: str = "sm90") -> KernelSource:
    """The kernel's Triton source; `target` ("interpreter" or "sm90") picks a contraction's tiles."""
    em = _Emitter(kernel, strides)
    d = kernel.domain
    body: list[str] = [] if d.kind in ("contraction", "samples") else ["pid = tl.program_id(0)"]
    big = max([d.size * d.cols * d.rows] + [_extent(v, strides) for v in em.loads + em.stores]) >= 2**31
    pid = "pid.to(tl.int64)" if big else "pid"
    stages = 3
    if d.kind == "samples":
        grid, passes, warps = _SampleTiles(em, kernel, body, big).emit()
    elif d.kind == "contraction":
        grid, passes, warps, stages = _contraction_body(em, kernel, body, big, target)
    elif d.kind == "pointwise":
        block = min(POINTWISE_BLOCK, _pow2(d.size))
        grid = (math.ceil(d.size / block),)
        body += [f"o = {pid} * {block} + tl.arange(0, {block})", f"mask = o < {d.size}"]
        for var, entry in kernel.stores:
            em.store(var, entry, Scope(body))
        passes = {v: 1 for v in em.loads}
        warps = 4
    else:
        grid, passes, warps = _rows_body(em, kernel, body, pid)
    args = em.loads + em.stores
    params = [f"in{i}" for i in range(len(em.loads))] + [f"out{i}" for i in range(len(em.stores))]
    comment = _describe(kernel)
    special = SPECIAL_FUNCTIONS | contraction_kernels.HELPERS
    called = [text for name, text in special.items() if any(f"{name}(" in line for line in body)]
    helpers = "".join("\n" + text for text in called)
    src = HEADER + helpers + "\n\n@triton.jit\n" + f"def {kernel.name}({', '.join(params)}):\n"
    src += "".join(f"    # {line}\n" for line in comment)
    src += "".join(f"    {line}\n" if line else "\n" for line in body)
    signature = {p: "*" + DTYPES[v.dtype].signature for p, v in zip(params, args)}
    if d.kind == "samples":  # each input once: the batch's slices once each, the shared ones from L2
        read = sum(v.numel * v.dtype.itemsize for v in em.loads)
    else:
        read = sum(_distinct_elements(kernel, v, strides) * v.dtype.itemsize * passes.get(v, 1) for v in em.loads)
    written = sum(v.numel * v.dtype.itemsize for v in em.stores)
    return KernelSource(kernel.name, src, args, len(em.loads), grid, signature, read, written, warps, stages)


# Operands re-read by every tile along the other axis of the output come from L2 while they fit it
# (grouped program order keeps the tiles sharing them together): counted once up to this size, once
# per tile beyond it (H100: 50 MB of L2).
L2_REUSE_BYTES = 32 << 20
# CUDA's limit on grid axis 1 (the batch); a larger batch is folded into axis 0.
MAX_GRID_Y = 65535


def _contraction_body(em: _Emitter, kernel: Kernel, body: list[str], big: bool, target: str):
    """The template of kernels/contraction.py around the kernel's dots: the program order, one k loop
    per dot with its operands' producers inside (the prologue), a loop for each per-row reduction
    not along the tile's row, then the epilogue at (b, m, n) with its row reductions along n, the
    stores, and an outer loop for each store with an outer variable e."""
    d = kernel.domain
    dots = [e for e in kernel.entries if e.op == "dot"]
    ks = {e.loop: schedule.contraction_sizes(e.node)[2] for e in dots}
    extents = _var_extents(kernel)
    outer = [(i, v, e) for i, (v, e) in enumerate(kernel.stores) if f"e{i}" in _index_deps(e)]
    whole_rows = any(e.op == "reduce" and e.loop is None for e in kernel.entries)
    dtype = dots[0].node.inputs[0].dtype
    tiles = contraction_kernels.choose_tiles(d.rows, d.cols, max(ks.values()), dtype, target, whole_rows, bool(outer))
    bm, bn = tiles.bm, tiles.bn
    tiles_m, tiles_n = math.ceil(d.rows / bm), math.ceil(d.cols / bn)
    assert tiles_n == 1 or not whole_rows
    on_axis0 = d.size > MAX_GRID_Y
    grid = (tiles_m * tiles_n * (d.size if on_axis0 else 1), 1 if on_axis0 else d.size)
    body += contraction_kernels.program_order(tiles_m, tiles_n, tiles.group_m, on_axis0)
    wide = ".to(tl.int64)" if big else ""
    body += [
        f"m = pid_m{wide} * {bm} + tl.arange(0, {bm})[:, None]",
        f"n = pid_n{wide} * {bn} + tl.arange(0, {bn})[None, :]",
        f"mmask = m < {d.rows}",
        f"nmask = n < {d.cols}",
        "mask = mmask & nmask",
    ]
    if big:
        body.append("b = b.to(tl.int64)")
    em.tile_sizes.update(m=bm, n=bn)
    tf32 = contraction_kernels.matmul_allows_tf32()
    for entry in kernel.entries:  # dependencies first: k loops, reductions' own loops, row reductions
        if entry.op == "dot":
            _dot_loop(em, entry, ks[entry.loop], tiles, body, wide, tf32)
        elif entry.op == "reduce" and entry.loop is not None:
            _reduction_loop(em, entry, extents[f"kr{entry.loop}"], bm, body, wide)
        elif entry.op == "reduce":
            _finish_reduction(em, entry, em.expr(entry.inputs[0], Scope(body)), body)
    for i, (v, e) in enumerate(kernel.stores):
        if f"e{i}" not in _index_deps(e):
            em.store(v, e, Scope(body))
    if outer:
        body += ["m3 = m[:, :, None]", "n3 = n[:, :, None]", "mmask3 = mmask[:, :, None]", "nmask3 = nmask[:, :, None]"]
    for i, v, e in outer:  # an outer product written from the tile: a loop over its third axis
        inner = []
        em.store(v, e, Scope(body, inner, {f"e{i}"}, lifted=True))
        extent = extents[f"e{i}"]
        block = contraction_kernels.outer_block(tiles, extent)
        body += [
            f"for e_start in range(0, {extent}, {block}):",
            f"    e{i} = e_start{wide} + tl.arange(0, {block})[None, None, :]",
            f"    emask{i} = e{i} < {extent}",
        ]
        body += ["    " + line for line in inner]
        em.forget_column_values()
    passes = {}
    for e in kernel.entries:  # operands re-read per tile along the other axis (see L2_REUSE_BYTES)
        if e.op == "load":
            along = [tiles_n for x in e.deps if x.startswith("ka")] + [tiles_m for x in e.deps if x.startswith("kb")]
            tiles_other = max(along + [1])
            fits = e.var.numel * e.var.dtype.itemsize <= L2_REUSE_BYTES
            passes[e.var] = max(passes.get(e.var, 1), 1 if fits else tiles_other)
    return grid, passes, tiles.warps, tiles.stages


class _SampleTiles:
    """The body of a samples kernel (schedule.sample_region): one program per sample, each value of
    the sample held as one register tile in the order of the graph.

    A value with the batch in front is at most a matrix per sample; its tile's rows and columns are
    two of its axes (`layout`: (row axis, column axis), None where the tile has extent 1), padded to
    a power of 2 of at least 16 (tl.dot's minimum), so any two of a value's views are the same tile
    or its transpose.  Padding is masked where it would count: in reductions, in the k of a dot, in
    stores.  Values without the batch (weights) are computed where they are used, from the graph's
    inputs, at the tile's coordinates."""

    def __init__(self, em: _Emitter, kernel: Kernel, body: list[str], big: bool):
        self.em, self.kernel, self.body = em, kernel, body
        self.region = kernel.region
        self.tiles: dict[Var, tuple[str, tuple]] = {}
        self.ranges: dict[str, int] = {}  # r<n> / c<n> -> n
        self.shared: dict[tuple, str] = {}
        self.varies: dict[str, frozenset] = {}  # a shared value's register -> the tile variables it varies with
        self.wide = ".to(tl.int64)" if big else ""
        self.batch = Idx.var("b", self.region.batch)

    # -- tiles ---------------------------------------------------------------------------------
    def axis_var(self, kind: str, n: int) -> Idx:
        self.ranges[f"{kind}{n}"] = n
        return Idx.var(f"{kind}{n}", n)

    @staticmethod
    def default_layout(v: Var) -> tuple:
        axes = [d for d in range(1, len(v.shape)) if v.shape[d] != 1]
        return tuple([None] * (2 - len(axes)) + axes)

    def index(self, v: Var, layout: tuple, with_batch: bool = True) -> Index:
        out = [Idx.of(0)] * len(v.shape)
        if with_batch:
            out[0] = self.batch
        for kind, axis in zip("rc", layout):
            if axis is not None:
                out[axis] = self.axis_var(kind, v.shape[axis])
        return tuple(out)

    def mask(self, deps) -> str | None:
        names = [f"{x}m" for x in sorted(deps) if x != "b"]
        return " & ".join(names) or None

    def line(self, text: str, prefix: str = "v") -> str:
        name = self.em.fresh(prefix)
        self.body.append(f"{name} = {text}")
        return name

    def padded(self, v: Var, layout: tuple) -> tuple[int, int]:
        return tuple(1 if a is None else max(contraction_kernels.MIN_TILE, _pow2(v.shape[a])) for a in layout)

    def load(self, v: Var, index: Index) -> str:
        offset = ravel(index, self.em.strides.get(v) or contiguous_strides(v.shape))
        deps = frozenset().union(*(i.deps for i in index)) if index else frozenset()
        mask = None if offset.is_const() else self.mask(deps)
        text = f"tl.load({self.em.arg_name[v]} + {offset.render()}"
        other = ", other=0.0" if v.dtype.is_floating_point else ""
        text += f", mask={mask}{other})" if mask else ")"
        if v.dtype in _HALF:
            text += ".to(tl.float32)"
        return self.line(text)

    def tile(self, v: Var, layout: tuple | None = None) -> str:
        """v's tile, in `layout` (its own when None)."""
        if v not in self.tiles:
            assert v in self.region.inputs, f"{v} is neither computed nor read by this samples kernel"
            own = self.default_layout(v)
            self.tiles[v] = (self.load(v, self.index(v, own)), own)
        name, own = self.tiles[v]
        fits = lambda have: all(h is None or h == w for h, w in zip(have, layout))
        if layout is None or fits(own):
            return name  # the same tile, or one that broadcasts along the other axis
        if fits(own[::-1]):
            return f"tl.trans({name})"
        raise AssertionError(f"tile of {v} in layout {own}, wanted {layout}")

    def shared_value(self, v: Var, index: Index) -> str:
        """A value without the batch at `index` (over the tile variables), from the graph's inputs."""
        key = (v.id, tuple(i.render() for i in index))
        if key in self.shared:
            return self.shared[key]
        node = self.region.producers.get(v)
        index_deps = frozenset().union(*(i.deps for i in index)) if index else frozenset()
        if node is None:
            name, deps = self.load(v, index), index_deps
        elif node.prim.kind == "view" and node.prim not in LOWERINGS:
            name = self.shared_value(node.inputs[0], node.prim.index_rule(node, index)[0])
            deps = self.varies[name]
        else:
            indices = node.prim.index_rule(node, index) if node.prim.index_rule else [index] * len(node.inputs)
            args = [self.shared_value(u, i) for u, i in zip(node.inputs, indices)]
            name = self.line(self.compute(node, args, index))
            deps = frozenset().union(*(self.varies[a] for a in args)) if args else frozenset()
            if node.prim in (P.iota, P.concatenate, P.pad):  # computed from the index itself
                deps |= index_deps
        self.shared[key] = name
        self.varies[name] = deps
        return name

    @staticmethod
    def compute(node: Node, args: list[str], index: Index) -> str:
        if node.prim is P.convert and node.out.dtype in _HALF:
            return rounded(args[0], node.out.dtype)
        return LOWERINGS[node.prim](args, node, index)

    # -- nodes ---------------------------------------------------------------------------------
    def node(self, node: Node) -> tuple[str, tuple]:
        prim, out = node.prim, node.out
        ps = lambda u: u in self.tiles or u in self.region.inputs
        if prim.kind == "elementwise":  # in the layout of the operand with the most axes in its tile
            layouts = [self.tiles[u][1] if u in self.tiles else self.default_layout(u) for u in node.inputs]
            layout = max(layouts, key=lambda lay: sum(a is not None for a in lay))
            args = [self.tile(u, layout) for u in node.inputs]
            return self.line(self.compute(node, args, ())), layout
        if prim is P.broadcast_in_dim:
            (x,), dims = node.inputs, node.params["dims"]
            if not ps(x):  # a value without the batch: its tile has the axes its index varies along
                layout = self.default_layout(out)
                name = self.shared_value(x, prim.index_rule(node, self.index(out, layout, False))[0])
                deps = self.varies[name]
                used = tuple(
                    a if a is not None and f"{k}{out.shape[a]}" in deps else None for k, a in zip("rc", layout)
                )
                return name, used
            name = self.tile(x)
            own = self.tiles[x][1]
            rows, cols = (None if a is None else dims[a] for a in own)
            extra = [d for d in self.default_layout(out) if d is not None and d not in (rows, cols)]
            if rows is None and extra:
                rows = extra.pop(0)
            if cols is None and extra:
                cols = extra.pop(0)
            assert not extra, node
            return name, (rows, cols)
        if prim is P.transpose:
            (x,), perm = node.inputs, node.params["perm"]
            name = self.tile(x)
            return name, tuple(None if a is None else perm.index(a) for a in self.tiles[x][1])
        if prim is P.reshape:
            (x,) = node.inputs
            name = self.tile(x)
            mapping = dict(zip(self.axes(x.shape), self.axes(out.shape)))
            return name, tuple(None if a is None else mapping[a] for a in self.tiles[x][1])
        if prim.kind == "reduction":
            return self.reduction(node)
        if prim is P.dot_general:
            return self.dot(node)
        raise AssertionError(f"{prim.name} in a samples kernel")

    @staticmethod
    def axes(shape) -> list[int]:
        return [d for d in range(1, len(shape)) if shape[d] != 1]

    def reduction(self, node: Node) -> tuple[str, tuple]:
        (x,), axes = node.inputs, node.params["axes"]
        value = self.tile(x)
        layout = self.tiles[x][1]
        rule, dtype = REDUCTIONS[node.prim], node.out.dtype
        ident = literal(node.prim.identity(dtype), dtype)
        mask = self.mask({f"{k}{x.shape[a]}" for k, a in zip("rc", layout) if a is not None})
        if mask:
            value = self.line(f"tl.where({mask}, {value}, {ident})")
        if dtype == torch.bool:
            value = self.line(f"({value}).to(tl.int32)")
        for t, a in enumerate(layout):
            if a is None or a not in axes:
                continue
            along = value if t == 1 else f"tl.trans({value})"  # the rules reduce along axis 1
            text = rule.finish.format(acc=along)
            value = self.line(text if t == 1 else f"tl.trans({text})")
        if dtype == torch.bool:
            value = self.line(f"({value} != 0)")
        kept = [d for d in range(len(x.shape)) if d not in axes]
        return value, tuple(None if a is None or a in axes else kept.index(a) for a in layout)

    def dot(self, node: Node) -> tuple[str, tuple]:
        a, b = node.inputs
        (ca, cb), (ba, bb) = node.params["contract"], node.params["batch"]
        fa, fb = P.dot_axes(len(a.shape), len(b.shape), (ca, cb), (ba, bb))
        ka = next(d for d in ca if a.shape[d] != 1)
        kb = cb[ca.index(ka)]
        k = a.shape[ka]
        rows_a = [d for d in fa if d != 0 and a.shape[d] != 1]
        m = rows_a[0] if rows_a else None
        cols_b = [d for d in fb if b.shape[d] != 1]
        n = cols_b[0] if cols_b else None
        lhs = self.tile(a, (m, ka))
        if b in self.tiles or b in self.region.inputs:  # both per sample
            rhs = self.tile(b, (kb, n))
        else:  # a weight, read at the tile's coordinates
            index = [Idx.of(0)] * len(b.shape)
            index[kb] = self.axis_var("r", k)
            if n is not None:
                index[n] = self.axis_var("c", b.shape[n])
            rhs = self.shared_value(b, tuple(index))
        out_free_a = [d for d in fa if d not in ba]
        pos_m = None if m is None else len(ba) + out_free_a.index(m)
        pos_n = None if n is None else len(ba) + len(out_free_a) + fb.index(n)
        lhs = self.line(f"tl.where({self.axis_var('c', k).render()}m, {lhs}, 0.0)")
        rhs = self.line(f"tl.where({self.axis_var('r', k).render()}m, {rhs}, 0.0)")
        if m is not None and n is not None:  # a matrix product per sample: tensor cores
            pm, pn = self.padded(node.out, (pos_m, pos_n))
            pk = max(contraction_kernels.MIN_TILE, _pow2(k))
            # an operand that does not vary along one of its axes is still a whole tile for tl.dot
            lhs, rhs = f"tl.broadcast_to({lhs}, ({pm}, {pk}))", f"tl.broadcast_to({rhs}, ({pk}, {pn}))"
            acc_type = "tl.float64" if node.out.dtype == torch.float64 else "tl.float32"
            zeros = f"tl.zeros([{pm}, {pn}], dtype={acc_type})"
            text = contraction_kernels.dot_call(lhs, rhs, zeros, a.dtype, contraction_kernels.matmul_allows_tf32())
        elif m is not None:  # matrix x vector: the vector's tile is a column, [K, 1]
            text = f"tl.sum({lhs} * tl.trans({rhs}), axis=1, keep_dims=True)"
        else:  # vector x matrix (or vector), along the rows of the tile
            text = f"tl.sum(tl.trans({lhs}) * {rhs}, axis=0, keep_dims=True)"
        return self.line(rounded(text, node.out.dtype)), (pos_m, pos_n)

    # -- the kernel ----------------------------------------------------------------------------
    def emit(self):
        header = len(self.body)
        for node in self.region.nodes:
            self.tiles[node.out] = self.node(node)
        for v, _ in self.kernel.stores:
            layout = self.tiles[v][1] if v in self.tiles else self.default_layout(v)
            value = self.tile(v, layout)
            pr, pc = self.padded(v, layout)
            if v.dtype == torch.bfloat16:
                value = f"_round_bf16({value})"
            elif v.dtype == torch.float16:
                value = f"{value}.to(tl.float16)"
            index = self.index(v, layout)
            offset = ravel(index, contiguous_strides(v.shape)).render()
            deps = frozenset().union(*(i.deps for i in index))
            mask = self.mask(deps)
            full = f"tl.broadcast_to({value}, ({pr}, {pc}))"
            target = f"out{self.em.stores.index(v)} + {offset}"
            if not deps - {"b"}:  # one element per sample: keep the pointer a block, like the value
                target += f" + tl.zeros([{pr}, {pc}], dtype=tl.int32)"
            self.body.append(f"tl.store({target}, {full}" + (f", mask={mask})" if mask else ")"))
        ranges = ["b = tl.program_id(0)" + self.wide]
        for name, n in sorted(self.ranges.items()):
            axis = "[:, None]" if name[0] == "r" else "[None, :]"
            ranges += [
                f"{name} = tl.arange(0, {max(contraction_kernels.MIN_TILE, _pow2(n))}){axis}",
                f"{name}m = {name} < {n}",
            ]
        self.body[header:header] = ranges
        return (self.region.batch,), {}, 4


def _dot_loop(em: _Emitter, dot: Entry, k: int, tiles, body: list[str], wide: str, tf32: bool):
    """acc<i> = the dot over its k loop, its operands' producers inside the loop (the prologue)."""
    i, bm, bn = dot.loop, tiles.bm, tiles.bn
    bk = max(contraction_kernels.MIN_TILE, min(tiles.bk, _pow2(k)))
    pre, inner = [], []
    scope = Scope(pre, inner, {f"ka{i}", f"kb{i}"})
    em.tile_sizes.update({f"ka{i}": bk, f"kb{i}": bk})
    a = _dot_operand(em, dot.inputs[0], scope, f"ka{i}", "m", (bm, bk))
    b = _dot_operand(em, dot.inputs[1], scope, f"kb{i}", "n", (bk, bn))
    acc, acc_type = em.fresh("acc"), "tl.float64" if dot.var.dtype == torch.float64 else "tl.float32"
    body += pre
    body += [f"{acc} = tl.zeros([{bm}, {bn}], dtype={acc_type})", f"for k0 in range(0, {k}, {bk}):"]
    body += [
        f"    ka{i} = k0{wide} + tl.arange(0, {bk})[None, :]",
        f"    kb{i} = k0{wide} + tl.arange(0, {bk})[:, None]",
        f"    kamask{i} = ka{i} < {k}",
        f"    kbmask{i} = kb{i} < {k}",
    ]
    body += ["    " + line for line in inner]
    body.append(f"    {acc} = " + contraction_kernels.dot_call(a, b, acc, dot.node.inputs[0].dtype, tf32))
    em.forget_column_values()
    if dot.var.dtype in _HALF:  # the product as torch's matmul returns it: rounded (inf beyond 65504 in fp16)
        body.append(f"{acc} = {rounded(acc, dot.var.dtype)}")
    em.names[id(dot)] = (acc, False)


def _reduction_loop(em: _Emitter, entry: Entry, extent: int, bm: int, body: list[str], wide: str):
    """A per-row reduction of a contraction kernel not along its tile's row: a loop of its own over
    the reduced elements, accumulating [BM, block] tiles, then reduced along axis 1."""
    i, rule = entry.loop, REDUCTIONS[entry.node.prim]
    block = max(contraction_kernels.MIN_TILE, min(_pow2(extent), max(16, ROW_TILE // bm)))
    acc_dtype = torch.int32 if entry.var.dtype == torch.bool else entry.var.dtype
    ident = literal(entry.node.prim.identity(entry.var.dtype), acc_dtype)
    acc = em.fresh("acc")
    pre, inner = [], []
    scope = Scope(pre, inner, {f"kr{i}"})
    em.tile_sizes[f"kr{i}"] = block
    value = em.expr(entry.inputs[0], scope)
    if entry.var.dtype == torch.bool:
        value = f"{value}.to(tl.int32)"
    body += pre
    body += [f"{acc} = tl.full([{bm}, {block}], {ident}, {tl_dtype(acc_dtype)})"]
    body += [f"for r0 in range(0, {extent}, {block}):"]
    body += [f"    kr{i} = r0{wide} + tl.arange(0, {block})[None, :]", f"    krmask{i} = kr{i} < {extent}"]
    body += ["    " + line for line in inner]
    body.append(f"    {acc} = " + rule.combine.format(a=acc, b=f"tl.where(mmask & krmask{i}, {value}, {ident})"))
    em.forget_column_values()
    _finish_reduction(em, entry, acc, body, accumulated=True)


def _dot_operand(em: _Emitter, entry: Entry, scope: Scope, k: str, row: str, shape: tuple[int, int]) -> str:
    """An operand tile of tl.dot: zero beyond K (tl.dot sums it), broadcast to the full tile."""
    text = em.expr(entry, scope)
    read = entry
    while read.op == "node" and read.node.prim.kind == "view" and read.node.prim not in LOWERINGS:
        read = read.inputs[0]  # a view reads its operand's register
    if not (read.op == "load" and k in read.deps):  # a masked load already reads 0 there
        text = f"tl.where({k[:2]}mask{k[2:]}, {text}, 0.0)"
    if not {k, row} <= entry.deps:
        text = f"tl.broadcast_to({text}, ({shape[0]}, {shape[1]}))"
    return text


def _var_extents(kernel: Kernel) -> dict[str, int]:
    """The extent of each iteration variable the kernel's indices use."""
    out: dict[str, int] = {}
    for e in kernel.entries + [e for _, e in kernel.stores]:
        for i in e.index:
            for t in i.terms:
                if t.base in t.deps and t.extent is not None:
                    out[t.base] = t.extent
    return out


def row_tile_limit(kernel: Kernel) -> int:
    """Columns a row kernel holds in registers in one pass.  Rows of float32 (or half) values up to
    twice the scheduler's MAX_ROW_TILE fit: 32K columns at 16 warps is 64 values a thread, and ptxas
    gives such softmax, cross-entropy and layer_norm kernels 128 registers with a few dozen bytes
    spilled; one read and one write where a looping kernel reads the row three times (2.0x the
    ideal bytes).  float64 rows take twice the registers (5.7 KB spilled at 32K): they loop beyond
    MAX_ROW_TILE."""
    wide = any(e.var.dtype == torch.float64 for e in kernel.entries)
    return schedule.MAX_ROW_TILE if wide else 2 * schedule.MAX_ROW_TILE


def _rows_body(em: _Emitter, kernel: Kernel, body: list[str], pid: str):
    d = kernel.domain
    looping = d.cols > row_tile_limit(kernel)
    block_c = LOOP_BLOCK_C if looping else _pow2(d.cols)
    block_r = min(_pow2(d.size), max(1, ROW_TILE // block_c))
    grid = (math.ceil(d.size / block_r),)
    body += [f"r = {pid} * {block_r} + tl.arange(0, {block_r})[:, None]", f"rmask = r < {d.size}"]
    em.tile_sizes.update(r=block_r, c=block_c)
    reductions = [e for e in kernel.entries if e.op == "reduce"]  # dependencies first
    per_element = [(v, e) for v, e in kernel.stores if "c" in _index_deps(e)]
    per_row = [(v, e) for v, e in kernel.stores if "c" not in _index_deps(e)]
    if not looping:  # the whole row is one tile: straight-line code
        body += [f"c = tl.arange(0, {block_c})[None, :]", f"cmask = c < {d.cols}", "mask = rmask & cmask"]
        scope = Scope(body)
        for e in reductions:
            _finish_reduction(em, e, em.expr(e.inputs[0], scope), body)
        for v, e in kernel.stores:
            em.store(v, e, scope)
        return grid, {v: 1 for v in em.loads}, _num_warps(block_r * block_c)
    # Long rows: one loop over column blocks per reduction stage, then one for per-element stores.
    assert not any(e.op == "scan" for e in kernel.entries), "a scanned row must fit one tile"
    passes: dict[Var, int] = {}
    stages = [[e for e in reductions if e.stage == s] for s in sorted({e.stage for e in reductions})]
    for group in stages + ([per_element] if per_element else []):
        pre, inner = [], []
        scope = Scope(pre, inner)
        accumulators = []
        for item in group:
            if isinstance(item, tuple):  # a per-element store
                em.store(*item, scope)
                continue
            rule = REDUCTIONS[item.node.prim]
            acc = em.fresh("acc")
            # Booleans accumulate as int32 (any/all are max/min over 0 and 1).
            acc_dtype = torch.int32 if item.var.dtype == torch.bool else item.var.dtype
            ident = literal(item.node.prim.identity(item.var.dtype), acc_dtype)
            pre.append(f"{acc} = tl.full([{block_r}, {block_c}], {ident}, {tl_dtype(acc_dtype)})")
            value = em.expr(item.inputs[0], scope)
            if item.var.dtype == torch.bool:
                value = f"{value}.to(tl.int32)"
            inner.append(f"{acc} = " + rule.combine.format(a=acc, b=f"tl.where(mask, {value}, {ident})"))
            accumulators.append((item, acc))
        for v in em.loads:
            if any(_mentions(line, em.arg_name[v]) for line in inner):
                passes[v] = passes.get(v, 0) + 1
        body += pre
        body.append(f"for c0 in range(0, {d.cols}, {block_c}):")
        body += [
            f"    c = c0 + tl.arange(0, {block_c})[None, :]",
            f"    cmask = c < {d.cols}",
            "    mask = rmask & cmask",
        ]
        body += ["    " + line for line in inner]
        em.forget_column_values()
        for item, acc in accumulators:
            _finish_reduction(em, item, acc, body, accumulated=True)
    for v, e in per_row:
        em.store(v, e, Scope(body))
    for v in em.loads:
        passes.setdefault(v, 1)
    return grid, passes, _num_warps(block_r * block_c)


def _mentions(line: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", line) is not None


def _finish_reduction(em: _Emitter, entry: Entry, value: str, body: list[str], accumulated=False):
    rule = REDUCTIONS[entry.node.prim]
    dtype = entry.var.dtype
    ident = literal(entry.node.prim.identity(dtype), dtype)
    # tl.where broadcasts a value that does not vary along a row to the whole tile.
    tile = value if accumulated else f"tl.where(mask, {value}, {ident})"
    if dtype == torch.bool:  # reduce booleans as integers
        tile = f"({tile}).to(tl.int32)"
    text = rule.finish.format(acc=tile)
    if dtype == torch.bool:
        text = f"({text} != 0)"
    name = em.fresh()
    body.append(f"{name} = {text}")
    em.names[id(entry)] = (name, False)


def _index_deps(entry: Entry) -> frozenset[str]:
    return frozenset().union(*(i.deps for i in entry.index)) if entry.index else frozenset()


def _describe(kernel: Kernel) -> list[str]:
    d = kernel.domain
    if d.kind == "pointwise":
        head = f"pointwise over {d.size} elements"
    elif d.kind == "contraction":
        head = f"contraction: {d.size} x [{d.rows} x {d.cols}] tiles on tl.dot"
    elif d.kind == "samples":
        head = f"one program per sample of {d.size}, each value of a sample one register tile"
    else:
        head = f"{d.size} rows x {d.cols} reduced columns"
    ops = []
    nodes = kernel.region.nodes if kernel.region is not None else [e.node for e in kernel.entries if e.node is not None]
    for node in nodes:
        if node.prim.kind != "view" and node.prim.name not in ops:
            ops.append(node.prim.name)
    stores = ", ".join(v.type_str for v, _ in kernel.stores)
    return [f"tritonfunc kernel: {head}", f"computes: {' '.join(ops) or 'copy'}", f"stores: {stores}"]


def _extent(var: Var, strides: dict[Var, tuple[int, ...]]) -> int:
    st = strides.get(var)
    if st is None:
        return var.numel
    return 1 + sum((s - 1) * abs(t) for s, t in zip(var.shape, st)) if var.numel else 0


class _NumpyTL:
    minimum = staticmethod(np.minimum)
    maximum = staticmethod(np.maximum)


def _distinct_elements(kernel: Kernel, var: Var, strides) -> int:
    """Distinct elements of `var` the kernel's load sites address (evaluated over the domain)."""
    d = kernel.domain
    if var.numel == 0:
        return var.numel
    em = _Emitter(kernel, strides)
    seen = np.zeros(_extent(var, strides) or 1, dtype=bool)
    per_site = d.kind == "contraction" or any(e.op == "inner_dot" for e in kernel.entries)
    if per_site:  # each load site over the variables it depends on, one axis each
        extents = _var_extents(kernel)
        for e in kernel.entries:
            if e.op != "load" or e.var is not var:
                continue
            names = sorted(e.deps)
            if math.prod(extents[x] for x in names) > BYTE_COUNT_LIMIT:
                return var.numel
            env = {"tl": _NumpyTL}
            for i, x in enumerate(names):
                env[x] = np.arange(extents[x], dtype=np.int64).reshape([-1 if j == i else 1 for j in range(len(names))])
            seen[np.asarray(eval(em.ptr_offset(var, e.index), env))] = True  # noqa: S307 (our own index text)
        return int(seen.sum())
    total = d.size * d.cols
    if total > BYTE_COUNT_LIMIT:
        return var.numel
    if d.kind == "pointwise":
        env = {"o": np.arange(d.size, dtype=np.int64)}
    else:
        env = {"r": np.arange(d.size, dtype=np.int64)[:, None], "c": np.arange(d.cols, dtype=np.int64)[None, :]}
    env["tl"] = _NumpyTL
    for e in kernel.entries:
        if e.op == "load" and e.var is var:
            offsets = eval(em.ptr_offset(var, e.index), env)  # noqa: S307 (our own index text)
            seen[np.broadcast_to(np.asarray(offsets), (d.size, d.cols) if d.kind == "rows" else (d.size,))] = True
    return int(seen.sum())
