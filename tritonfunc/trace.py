"""Tracing: run the user's function on `Tracer` tensors and record a Graph of primitives.

A Tracer is a tensor subclass with no storage.  Every ATen op that reaches it (torch has already
reduced the user's Python to ATen, and decomposed the implicit composites) is looked up in
`LOWERINGS`, which expresses it with primitives; ops without a lowering are decomposed with
torch's own decomposition table, and anything else is refused with an error naming the op.
Shapes and dtypes of every ATen result come from running the op on meta tensors, so broadcasting
and type promotion are torch's own.  Tensors that are not tracers of this trace (closures, module
parameters, tracers of an enclosing trace) become constant inputs of the graph, read at each call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch._decomp.decompositions  # noqa: F401  (fills the decomposition table)
import torch._refs  # noqa: F401
import torch._refs.nn.functional  # noqa: F401
from torch._decomp import decomposition_table
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from . import primitives as P
from .graph import Graph, Node, Var

aten = torch.ops.aten
prims_ops = torch.ops.prims


class Builder:
    """Accumulates the nodes of one graph; the small op library below builds on `emit`."""

    def __init__(self, level: int, device: torch.device | None, track_grad_mode: bool = True, api: str | None = None):
        self.level = level
        self.api = api  # the transform this trace serves ("vmap" picks torch.func's vmap error texts)
        self.device = device
        # Tracing records the user's no_grad blocks; graph transforms set flags explicitly instead.
        self.track_grad_mode = track_grad_mode
        self.inputs: list[Var] = []
        self.nodes: list[Node] = []
        self.const_vars: dict[int, Var] = {}  # id(tensor) -> var
        self.const_values: list[torch.Tensor] = []

    def emit(self, prim: P.Primitive, inputs: list[Var], *, no_grad: bool = False, **params) -> Var:
        shape, dtype = prim.shape_rule(*[(v.shape, v.dtype) for v in inputs], **params)
        out = Var(shape, dtype)
        if self.track_grad_mode and not torch.is_grad_enabled():
            no_grad = True
        self.nodes.append(Node(prim, list(inputs), params, out, no_grad=no_grad))
        return out

    def const(self, t: torch.Tensor) -> Var:
        if id(t) not in self.const_vars:
            if t.device != self.device and t.dim() == 0:
                t = t.to(self.device)  # a 0-d CPU tensor mixes with any device, as in torch
            elif t.device != self.device:
                raise RuntimeError(
                    f"Expected all tensors to be on the same device, but found at least two devices, "
                    f"{self.device} and {t.device}!"
                )
            v = Var(t.shape, t.dtype)
            self.const_vars[id(t)] = v
            self.const_values.append(t)
        return self.const_vars[id(t)]

    def __getattr__(self, name: str):
        """`b.mul(x, y)`, `b.reduce_sum(x, axes=(0,))`: emit any primitive by name."""
        prim = P.PRIMS.get(name)
        if prim is None:
            raise AttributeError(name)
        return lambda *inputs, **params: self.emit(prim, list(inputs), **params)

    # -- a small op library over vars ---------------------------------------------------------
    def like(self, v: Var, value) -> Var:
        """The constant `value` with v's shape and dtype."""
        return self.full(value, v.dtype, v.shape)

    def full(self, value, dtype: torch.dtype, shape=()) -> Var:
        v = self.emit(P.full, [], value=value, shape=(), dtype=dtype)
        return self.broadcast_to(v, tuple(shape))

    def cast(self, v: Var, dtype: torch.dtype) -> Var:
        return v if v.dtype == dtype else self.emit(P.convert, [v], dtype=dtype)

    def broadcast_to(self, v: Var, shape: tuple[int, ...]) -> Var:
        shape = tuple(shape)
        if v.shape == shape:
            return v
        lead = len(shape) - len(v.shape)
        return self.emit(P.broadcast_in_dim, [v], shape=shape, dims=tuple(range(lead, len(shape))))

    def reshape(self, v: Var, shape) -> Var:
        shape = tuple(shape)
        return v if v.shape == shape else self.emit(P.reshape, [v], shape=shape)

    def transpose(self, v: Var, perm) -> Var:
        perm = tuple(perm)
        return v if perm == tuple(range(len(perm))) else self.emit(P.transpose, [v], perm=perm)

    def reduce(self, prim: P.Primitive, v: Var, axes, keepdim: bool = False) -> Var:
        axes = tuple(sorted({a % max(len(v.shape), 1) for a in axes})) if v.shape else ()
        out = self.emit(prim, [v], axes=axes)
        if keepdim:
            out = self.reshape(out, tuple(1 if i in axes else s for i, s in enumerate(v.shape)))
        return out

    def operand(self, x, dtype: torch.dtype, shape) -> Var:
        """A tensor or Python scalar operand, cast to `dtype` and broadcast to `shape`."""
        v = self.full(x, dtype) if not isinstance(x, Var) else self.cast(x, dtype)
        return self.broadcast_to(v, shape)


# ---------------------------------------------------------------------------------------------
# Tracers and the trace stack (nested transforms trace inside one another).

_TRACE_STACK: list[Builder] = []


class Tracer(torch.Tensor):
    _builder: Builder
    _var: Var

    @staticmethod
    def __new__(cls, builder: Builder, var: Var):
        t = torch.Tensor._make_wrapper_subclass(cls, var.shape, dtype=var.dtype, device=builder.device)
        t._builder, t._var = builder, var
        t._is_view = t._has_views = t._is_input = False
        return t

    def __repr__(self, *, tensor_contents=None) -> str:
        return f"Tracer({self._var.type_str})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__bool__:  # `if tensor:` -- Python control flow on a traced value
            _refuse_data_dependence(control_flow=True)
        if func is torch.Tensor.new_tensor:  # data from Python: a constant, like torch.tensor(data)
            kwargs = kwargs or {}
            return torch.tensor(args[1], dtype=kwargs.get("dtype") or args[0].dtype, device=args[0].device)
        # x[t] with a 0-d integer tensor t: torch would read t on the host (.item()); index with
        # t as a one-element tensor instead (a gather) and drop that axis.
        if func is torch.Tensor.__getitem__ and len(args) == 2:
            x, key = args
            keys = key if isinstance(key, tuple) else (key,)
            zero_d = [
                i
                for i, k in enumerate(keys)
                if isinstance(k, torch.Tensor)
                and k.dim() == 0
                and not k.dtype.is_floating_point
                and k.dtype != torch.bool
            ]
            tensors = [i for i, k in enumerate(keys) if isinstance(k, torch.Tensor)]
            adjacent = tensors == list(range(tensors[0], tensors[-1] + 1)) if tensors else False
            if (
                zero_d
                and zero_d == tensors
                and adjacent
                and all(isinstance(k, (int, slice, torch.Tensor)) for k in keys)
            ):
                new = tuple(k.reshape(1) if j in zero_d else k for j, k in enumerate(keys))
                picked = x[new if len(new) > 1 else new[0]]
                # the index tensors leave one axis where the first was, after the sliced axes before it
                return picked.squeeze(sum(1 for k in keys[: zero_d[0]] if isinstance(k, slice)))
        # torch.matmul with a 1-D operand squeezes its result in place (squeeze_), which a tracer
        # cannot do to its own shape: give it 2-D operands and reshape the result instead.
        if func in _MATMULS and not kwargs and len(args) == 2:
            a, c = args
            if isinstance(a, torch.Tensor) and isinstance(c, torch.Tensor) and 1 in (a.dim(), c.dim()):
                out = torch.matmul(a.unsqueeze(0) if a.dim() == 1 else a, c.unsqueeze(-1) if c.dim() == 1 else c)
                if a.dim() == 1:
                    out = out.squeeze(-2)
                if c.dim() == 1:
                    out = out.squeeze(-1)
                return out
        return super().__torch_function__(func, types, args, kwargs)


_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__}


def _innermost_builder(args, kwargs) -> Builder:
    builders = [a._builder for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, Tracer)]
    b = max(builders, key=lambda b: b.level)
    if not any(b is s for s in _TRACE_STACK):
        raise RuntimeError(
            "tritonfunc: a traced tensor escaped the function that created it "
            "(it was stored outside and used after the transform returned)"
        )
    return b


def _to_meta(x):
    if isinstance(x, torch.Tensor):
        return torch.empty(x.shape, dtype=x.dtype, device="meta")
    return x


def _dispatch(func, args, kwargs):
    b = _innermost_builder(args, kwargs)
    name = func.overloadpacket.__name__
    if func in _DATA_DEPENDENT:
        _refuse_data_dependence(control_flow=func is not aten._local_scalar_dense.default)
    lowering = LOWERINGS.get(func) or LOWERINGS.get(func.overloadpacket)
    if lowering is None and name.endswith("_") and not name.startswith("_"):
        return _inplace(b, func, args, kwargs)
    if lowering is None:
        decomp = decomposition_table.get(func)
        if decomp is None:
            raise NotImplementedError(f"tritonfunc: operator {func} is not supported")
        try:
            return decomp(*args, **kwargs)
        except NotImplementedError as e:
            if str(func) in str(e):
                raise
            raise NotImplementedError(f"tritonfunc: operator {func} is not supported ({e})") from e
    try:
        out_meta = func(*pytree.tree_map(_to_meta, args), **pytree.tree_map(_to_meta, kwargs))
    except NotImplementedError as e:  # e.g. boolean-mask indexing: its shape depends on the values
        raise NotImplementedError(
            f"tritonfunc: operator {func} is not supported: its output shape depends on tensor values, which a "
            f"traced graph cannot represent ({e})"
        ) from e

    def as_var(x):
        if isinstance(x, Tracer) and x._builder is b:
            return x._var
        if isinstance(x, torch.Tensor):
            return b.const(x)
        return x

    out = lowering(b, out_meta, *pytree.tree_map(as_var, args), **pytree.tree_map(as_var, kwargs))
    result = pytree.tree_map(lambda v: Tracer(b, v) if isinstance(v, Var) else v, out)
    if func in _VIEW_OPS and isinstance(args[0], Tracer):
        args[0]._has_views = True
        for r in result if isinstance(result, (list, tuple)) else [result]:
            r._is_view = True
    return result


def _inplace(b: Builder, func, args, kwargs):
    """Runs `x.op_(...)` as `x = x.op(...)` when nothing else can observe the mutation."""
    target = args[0]
    name = func.overloadpacket.__name__
    functional = getattr(aten, name[:-1], None)
    if functional is None or not isinstance(target, Tracer) or target._builder is not b:
        raise NotImplementedError(f"tritonfunc: in-place operator {func} is not supported here")
    if target._is_input or target._is_view or target._has_views:
        raise NotImplementedError(
            f"tritonfunc: in-place operator {func} on an input or a view is not supported; "
            f"use the out-of-place operator instead"
        )
    overload = getattr(functional, func._overloadname, None) or functional.default
    result = overload(*args, **kwargs)
    if result.shape != target.shape:
        raise RuntimeError(f"tritonfunc: in-place {func} would change the shape of its operand")
    target._var = b.cast(result._var, target.dtype)
    return target


def _refuse_data_dependence(control_flow: bool):
    """A traced value read on the host (.item(), `if tensor:`): a graph cannot depend on it."""
    if any(t.api == "vmap" for t in _TRACE_STACK):  # torch.func's own words under vmap
        if control_flow:
            raise RuntimeError(
                "vmap: It looks like you're attempting to use a Tensor in some data-dependent control flow. We "
                "don't support that yet, please file an issue at https://github.com/pytorch/pytorch/issues ."
            )
        raise RuntimeError(
            "vmap: It looks like you're calling .item() on a Tensor. We don't support vmap over calling "
            ".item() on a Tensor, please try to rewrite what you're doing with other operations. If error "
            "is occurring somewhere inside PyTorch internals, please file a bug report."
        )
    raise RuntimeError(
        "tritonfunc: a traced value was read on the host (.item(), bool(), data-dependent Python control "
        "flow); the functions tritonfunc transforms must be data-independent"
    )


_DATA_DEPENDENT = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default, aten.nonzero.default}

# ---------------------------------------------------------------------------------------------
# ATen -> primitives.  Each lowering gets the builder, the op's meta result, then the op's args
# with tracers replaced by vars.

LOWERINGS: dict[Any, Callable] = {}
_VIEW_OPS: set = set()


def lowers(*ops, view=False):
    def register(fn):
        for op in ops:
            LOWERINGS[op] = fn
            if view:
                _VIEW_OPS.update([op] if not hasattr(op, "overloads") else [getattr(op, o) for o in op.overloads()])
        return fn

    return register


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
    LOWERINGS[_op] = _unary(_prim)


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
    LOWERINGS[_op] = _binary(_prim)
for _op, _prim in [
    (aten.eq, P.eq),
    (aten.ne, P.ne),
    (aten.lt, P.lt),
    (aten.le, P.le),
    (aten.gt, P.gt),
    (aten.ge, P.ge),
]:
    LOWERINGS[_op] = _binary(_prim, compare=True)


def _boolean(prim):
    def lower(b, out, a, c):
        if out.dtype != torch.bool:
            raise NotImplementedError(f"tritonfunc: bitwise {prim.name} on {out.dtype} tensors is not supported")
        return b.emit(prim, [b.operand(a, torch.bool, out.shape), b.operand(c, torch.bool, out.shape)])

    return lower


LOWERINGS[aten.bitwise_and] = _boolean(P.logical_and)
LOWERINGS[aten.bitwise_or] = _boolean(P.logical_or)
LOWERINGS[aten.bitwise_xor] = _boolean(P.ne)


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


LOWERINGS[aten.clamp_max] = lambda b, out, x, hi: _clamp(b, out, x, None, hi)


@lowers(aten._to_copy, aten.to, prims_ops.convert_element_type)
def _to_copy(b, out, x, *args, **kwargs):
    if out.device.type != "meta" and out.device != b.device:
        raise NotImplementedError("tritonfunc: moving a traced tensor to another device is not supported")
    return b.cast(x, out.dtype)


def _fill(value_of):
    return lambda b, out, *args, **kwargs: b.full(value_of(args), out.dtype, out.shape)


for _op in (aten.zeros_like, aten.empty_like, aten.new_zeros, aten.new_empty):
    LOWERINGS[_op] = _fill(lambda args: 0)
LOWERINGS[aten.ones_like] = LOWERINGS[aten.new_ones] = _fill(lambda args: 1)
LOWERINGS[aten.full_like] = _fill(lambda args: args[1])
LOWERINGS[aten.new_full] = _fill(lambda args: args[2])


# -- reductions ---------------------------------------------------------------------------------


def _dims(x: Var, dim) -> tuple[int, ...]:
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return tuple(range(len(x.shape)))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(d % max(len(x.shape), 1) for d in dims) if x.shape else ()


def _reduction(prim):
    def lower(b, out, x, dim=None, keepdim=False, *, dtype=None):
        x = b.cast(x, out.dtype)
        return b.reshape(b.reduce(prim, x, _dims(x, dim), keepdim), out.shape)

    return lower


LOWERINGS[aten.sum] = _reduction(P.reduce_sum)
LOWERINGS[aten.amax] = LOWERINGS[aten.max.default] = _reduction(P.reduce_max)
LOWERINGS[aten.amin] = LOWERINGS[aten.min.default] = _reduction(P.reduce_min)
LOWERINGS[aten.any] = LOWERINGS[aten.any.default] = _reduction(P.reduce_max)
LOWERINGS[aten.all] = LOWERINGS[aten.all.default] = _reduction(P.reduce_min)


@lowers(aten.prod)
def _prod(b, out, x, dim=None, keepdim=False, *, dtype=None):
    return _reduction(P.reduce_prod)(b, out, x, dim, keepdim)


@lowers(aten.mean)
def _mean(b, out, x, dim=None, keepdim=False, *, dtype=None):
    x = b.cast(x, out.dtype)
    axes = _dims(x, dim)
    s = b.reshape(b.reduce(P.reduce_sum, x, axes, keepdim), out.shape)
    count = math.prod(x.shape[a] for a in axes)
    return b.emit(P.div, [s, b.full(count, out.dtype, out.shape)])


@lowers(aten.var)
def _var(b, out, x, dim=None, *, correction=None, keepdim=False):
    dtype = out.dtype
    x = b.cast(x, dtype)
    axes = _dims(x, dim)
    count = math.prod(x.shape[a] for a in axes)
    total = b.reduce(P.reduce_sum, x, axes, keepdim=True)
    mean = b.emit(P.div, [total, b.full(count, dtype, total.shape)])
    centered = b.emit(P.sub, [x, b.broadcast_to(mean, x.shape)])
    ss = b.reshape(b.reduce(P.reduce_sum, b.emit(P.mul, [centered, centered]), axes, keepdim), out.shape)
    dof = count - (1 if correction is None else correction)
    var = b.emit(P.div, [ss, b.full(max(dof, 0), dtype, out.shape)])
    return var


LOWERINGS[prims_ops.var] = lambda b, out, x, dims, correction=1, *, output_dtype=None: _var(
    b, out, x, dims, correction=correction
)
LOWERINGS[aten.std] = lambda b, out, x, dim=None, **kw: b.emit(P.sqrt, [_var(b, out, x, dim, **kw)])


@lowers(aten.linalg_vector_norm)
def _vector_norm(b, out, x, ord=2, dim=None, keepdim=False, *, dtype=None):
    """Norms with torch's derivative at zero: 0, not 0/0 (the root is taken of a value kept away from
    zero, then replaced by 0 where the sum is 0)."""
    x = b.cast(x, out.dtype)
    axes = _dims(x, dim)
    ax = b.abs(x)
    if ord == math.inf or ord == -math.inf:
        return b.reshape(b.reduce(P.reduce_max if ord > 0 else P.reduce_min, ax, axes, keepdim), out.shape)
    if ord == 0:
        return b.reshape(
            b.reduce(P.reduce_sum, b.convert(b.ne(x, b.like(x, 0)), dtype=x.dtype), axes, keepdim), out.shape
        )
    if ord == 1:
        return b.reshape(b.reduce(P.reduce_sum, ax, axes, keepdim), out.shape)
    powered = b.mul(x, x) if ord == 2 else b.pow(ax, b.like(ax, ord))
    total = b.reshape(b.reduce(P.reduce_sum, powered, axes, keepdim), out.shape)
    zero = b.like(total, 0)
    is_zero = b.eq(total, zero)
    safe = b.where(is_zero, b.like(total, 1), total)
    root = b.sqrt(safe) if ord == 2 else b.pow(safe, b.like(safe, 1.0 / ord))
    return b.where(is_zero, zero, root)


@lowers(aten.native_layer_norm)
def _layer_norm(b, out, x, normalized_shape, weight, bias, eps):
    dtype = out[0].dtype
    x = b.cast(x, dtype)
    axes = tuple(range(len(x.shape) - len(normalized_shape), len(x.shape)))
    count = math.prod(x.shape[a] for a in axes)
    stat_shape = out[1].shape
    mean = b.emit(P.div, [b.reduce(P.reduce_sum, x, axes, keepdim=True), b.full(count, dtype, stat_shape)])
    centered = b.emit(P.sub, [x, b.broadcast_to(mean, x.shape)])
    var = b.emit(
        P.div,
        [
            b.reduce(P.reduce_sum, b.emit(P.mul, [centered, centered]), axes, keepdim=True),
            b.full(count, dtype, stat_shape),
        ],
    )
    rstd = b.emit(P.rsqrt, [b.emit(P.add, [var, b.full(eps, dtype, stat_shape)])])
    y = b.emit(P.mul, [centered, b.broadcast_to(rstd, x.shape)])
    if weight is not None:
        y = b.emit(P.mul, [y, b.operand(weight, dtype, x.shape)])
    if bias is not None:
        y = b.emit(P.add, [y, b.operand(bias, dtype, x.shape)])
    return y, mean, rstd


# Softmax-family lowerings subtract the row maximum for stability.  The maximum is wrapped in
# stop_gradient: the result does not depend on it mathematically, so its derivative (a tie-sharing
# mask and two more reductions) would only add work and rounding.


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _shifted(b, x: Var, axes) -> tuple[Var, Var]:
    """(x - max, max) over `axes`, the maximum kept with keepdim shape and no gradient."""
    m = b.stop_gradient(b.reduce(P.reduce_max, x, axes, keepdim=True))
    inf = b.like(m, math.inf)
    m = b.where(b.eq(b.abs(m), inf), b.like(m, 0), m)  # all -inf rows: keep them -inf, not nan
    return b.sub(x, b.broadcast_to(m, x.shape)), m


@lowers(aten._softmax)
def _softmax(b, out, x, dim, half_to_float):
    x = b.cast(x, _compute_dtype(out.dtype))
    z, _ = _shifted(b, x, (dim,))
    e = b.exp(z)
    return b.cast(b.div(e, b.broadcast_to(b.reduce(P.reduce_sum, e, (dim,), keepdim=True), x.shape)), out.dtype)


@lowers(aten._log_softmax)
def _log_softmax(b, out, x, dim, half_to_float):
    x = b.cast(x, _compute_dtype(out.dtype))
    z, _ = _shifted(b, x, (dim,))
    lse = b.log(b.reduce(P.reduce_sum, b.exp(z), (dim,), keepdim=True))
    return b.cast(b.sub(z, b.broadcast_to(lse, x.shape)), out.dtype)


@lowers(aten.logsumexp)
def _logsumexp(b, out, x, dim, keepdim=False):
    x = b.cast(x, _compute_dtype(out.dtype))
    axes = _dims(x, dim)
    z, m = _shifted(b, x, axes)
    lse = b.add(b.log(b.reduce(P.reduce_sum, b.exp(z), axes, keepdim=True)), m)
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


# -- shapes -------------------------------------------------------------------------------------


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


# -- contractions, as a broadcast multiply and a reduction (memory-bound, but it fuses) -----------


def _matmul_vars(b, a: Var, c: Var, dtype) -> Var:
    """[..., M, K] @ [..., K, N] with equal batch dims -> [..., M, N]."""
    *batch, m, k = a.shape
    n = c.shape[-1]
    nb = len(batch)
    full_shape = (*batch, m, k, n)
    a3 = b.emit(P.broadcast_in_dim, [b.cast(a, dtype)], shape=full_shape, dims=(*range(nb), nb, nb + 1))
    c3 = b.emit(P.broadcast_in_dim, [b.cast(c, dtype)], shape=full_shape, dims=(*range(nb), nb + 1, nb + 2))
    return b.reduce(P.reduce_sum, b.emit(P.mul, [a3, c3]), (nb + 1,))


@lowers(aten.mm, aten.bmm)
def _mm(b, out, a, c):
    return _matmul_vars(b, a, c, out.dtype)


@lowers(aten.mv)
def _mv(b, out, a, v):
    return b.reshape(_matmul_vars(b, a, b.reshape(v, (v.shape[0], 1)), out.dtype), out.shape)


@lowers(aten.dot)
def _dot(b, out, a, c):
    return b.reduce(P.reduce_sum, b.emit(P.mul, [b.cast(a, out.dtype), b.cast(c, out.dtype)]), (0,))


@lowers(aten.addmm)
def _addmm(b, out, bias, a, c, *, beta=1, alpha=1):
    prod = _matmul_vars(b, a, c, out.dtype)
    if alpha != 1:
        prod = b.emit(P.mul, [prod, b.full(alpha, out.dtype, out.shape)])
    bias = b.operand(bias, out.dtype, out.shape)
    if beta != 1:
        bias = b.emit(P.mul, [bias, b.full(beta, out.dtype, out.shape)])
    return b.emit(P.add, [bias, prod]) if beta != 0 else prod


# ---------------------------------------------------------------------------------------------
# Random operators and factories.  torch.randn(3) or torch.arange(5) take no tensor, so they never
# reach a Tracer: a dispatch mode active while tracing catches them instead.


def _draw_seed(generator) -> torch.Tensor:
    """A fresh Philox seed from torch's generator, so torch.manual_seed makes runs repeatable."""
    with _disable_current_modes():  # an enclosing trace's random-op mode must not catch this draw
        return torch.randint(0, 2**62, (), dtype=torch.int64, generator=generator)


def _random_values(b: Builder, shape, dtype, normal: bool, generator=None, data: Var | None = None) -> Var:
    """Random values; `data` is the tensor argument the draw is for (bernoulli's p), which vmap's
    "same" randomness refuses when batched."""
    seed = b.const(_draw_seed(generator))
    inputs = [seed] if data is None else [seed, data]
    return b.emit(P.rand, inputs, shape=tuple(shape), dtype=dtype, normal=normal)


def _lower_random(b: Builder, func, args, kwargs):
    packet = func.overloadpacket
    generator = kwargs.get("generator")
    meta_kwargs = {k: (None if k == "generator" else v) for k, v in kwargs.items()}
    if "device" in meta_kwargs:
        meta_kwargs["device"] = "meta"
    elif packet in (aten.rand, aten.randn):
        meta_kwargs["device"] = "meta"
    out = func(*pytree.tree_map(_to_meta, args), **meta_kwargs)
    out = out[0] if isinstance(out, tuple) else out
    if packet in (aten.rand, aten.rand_like, aten.randn, aten.randn_like):
        return _random_values(b, out.shape, out.dtype, packet in (aten.randn, aten.randn_like), generator)
    if packet is aten.bernoulli and func is not aten.bernoulli.p:
        p = args[0]._var if isinstance(args[0], Tracer) and args[0]._builder is b else b.const(args[0])
        p = b.operand(p, out.dtype, out.shape)
        u = _random_values(b, out.shape, out.dtype, False, generator, data=p)
        return b.convert(b.lt(u, p), dtype=out.dtype)
    if func is aten.bernoulli.p:
        u = _random_values(b, out.shape, out.dtype, False, generator)
        return b.convert(b.lt(u, b.like(u, args[1])), dtype=out.dtype)
    if packet is aten.native_dropout:
        x, p, train = args[0], args[1], args[2]
        x = x._var if isinstance(x, Tracer) and x._builder is b else b.const(x)
        if not train:
            return x, b.full(True, torch.bool, x.shape)
        keep = b.gt(_random_values(b, x.shape, x.dtype, False, generator), b.like(x, p))
        scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
        return b.mul(b.mul(b.convert(keep, dtype=x.dtype), x), b.like(x, scale)), keep
    if packet in (aten.bernoulli_, aten.uniform_, aten.normal_) and isinstance(args[0], Tracer):
        # In-place fills of a fresh tensor (how dropout and nn.init draw): rebind the tracer.
        target = args[0]
        shape, dtype = target._var.shape, target._var.dtype
        params = list(args[1:]) + [kwargs[k] for k in ("p", "from", "to", "mean", "std") if k in kwargs]
        if packet is aten.bernoulli_:
            p = params[0] if params else 0.5
            p = b.operand(p._var if isinstance(p, Tracer) else p, dtype, shape)
            value = b.convert(b.lt(_random_values(b, shape, dtype, False, generator), p), dtype=dtype)
        else:
            lo, hi = (params + [0.0, 1.0][len(params) :])[:2]
            draw = _random_values(b, shape, dtype, packet is aten.normal_, generator)
            value = b.add(b.like(draw, lo), b.mul(b.like(draw, hi if packet is aten.normal_ else hi - lo), draw))
        target._var = value
        return target
    raise NotImplementedError(f"tritonfunc: random operator {func} is not supported")


def _lower_factory(b: Builder, func, args, kwargs) -> Var:
    """torch.arange/zeros/ones/full/eye/empty inside a traced function: values computed in the kernel
    (iota and constants) instead of tensors built by torch and read from memory."""
    meta_kwargs = {**kwargs, "device": "meta"}
    out = func(*args, **meta_kwargs)
    packet = func.overloadpacket
    if packet is aten.arange:
        start, step = (0, 1) if len(args) == 1 else (args[0], args[2] if len(args) > 2 else 1)
        count = b.iota(shape=out.shape, dim=0, dtype=torch.int64 if not out.dtype.is_floating_point else out.dtype)
        values = b.add(b.mul(count, b.like(count, step)), b.like(count, start))
        return b.cast(values, out.dtype)
    if packet is aten.eye:
        rows = b.iota(shape=out.shape, dim=0, dtype=torch.int64)
        return b.cast(b.eq(rows, b.iota(shape=out.shape, dim=1, dtype=torch.int64)), out.dtype)
    value = {aten.ones: 1, aten.full: args[1] if len(args) > 1 else 0, aten.scalar_tensor: args[0]}.get(packet, 0)
    return b.full(value, out.dtype, out.shape)


_FACTORIES = {aten.arange, aten.zeros, aten.ones, aten.full, aten.eye, aten.empty, aten.scalar_tensor}


class _TracingMode(TorchDispatchMode):
    """Active while a function is traced: catches the operators that take no tensor (factories and
    seeded random draws), which would otherwise never reach a Tracer."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        random = torch.Tag.nondeterministic_seeded in func.tags
        factory = func.overloadpacket in _FACTORIES and kwargs.get("layout") in (None, torch.strided)
        if not (random or factory):
            return func(*args, **kwargs)
        b = innermost_builder(pytree.tree_leaves((args, kwargs))) or _TRACE_STACK[-1]
        out = _lower_random(b, func, args, kwargs) if random else _lower_factory(b, func, args, kwargs)
        return pytree.tree_map(lambda v: Tracer(b, v) if isinstance(v, Var) else v, out)


# ---------------------------------------------------------------------------------------------
# Running a graph inside a trace: how transforms nest.


def innermost_builder(values) -> Builder | None:
    """The deepest live trace that any of `values` belongs to, or None when all are concrete."""
    tracers = [t for t in values if isinstance(t, Tracer)]
    return _innermost_builder(tracers, {}) if tracers else None


def inline(b: Builder, graph: Graph, inputs: list) -> list[Tracer]:
    """Records `graph` applied to `inputs` (arguments then constants) into the trace `b`.

    A transform called on tracers (inside another transform) computes its transformed graph as
    usual, then inlines it, so the enclosing transform sees ordinary primitives.  A no_grad block
    around the call, or inside the inlined function, stays in force for the enclosing transform.
    """
    env: dict[Var, Var] = {}
    for v, t in zip(graph.inputs, inputs):
        env[v] = t._var if isinstance(t, Tracer) and t._builder is b else b.const(t)
    for n in graph.nodes:
        env[n.out] = b.emit(n.prim, [env[v] for v in n.inputs], no_grad=n.no_grad, **n.params)
    return [Tracer(b, env[v]) for v in graph.outputs]


# ---------------------------------------------------------------------------------------------
# The entry point.


TENSOR = object()  # marks the output leaves that are graph outputs


def trace(fn: Callable, args: tuple, kwargs: dict | None = None, *, device=None, api: str | None = None):
    """Traces fn(*args, **kwargs).  Tensor leaves of args become graph inputs, in flattened order.

    Returns (graph, out_spec, out_leaves) where out_leaves holds the output's non-tensor leaves
    (TENSOR where a leaf is a graph output).
    """
    kwargs = kwargs or {}
    leaves, in_spec = pytree.tree_flatten((args, kwargs))
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    if device is None:
        device = tensors[0].device if tensors else torch.device("cpu")
    level = (_TRACE_STACK[-1].level + 1) if _TRACE_STACK else 0
    b = Builder(level, torch.device(device), api=api)
    wrapped = []
    for x in leaves:
        if isinstance(x, torch.Tensor):
            v = Var(x.shape, x.dtype)
            b.inputs.append(v)
            t = Tracer(b, v)
            t._is_input = True
            wrapped.append(t)
        else:
            wrapped.append(x)
    targs, tkwargs = pytree.tree_unflatten(wrapped, in_spec)
    _TRACE_STACK.append(b)
    try:
        # A no_grad around the transform does not reach inside it.
        with torch.enable_grad(), _TracingMode():
            out = fn(*targs, **tkwargs)
    finally:
        _TRACE_STACK.pop()
    out_leaves, out_spec = pytree.tree_flatten(out)
    outputs, statics = [], []
    for x in out_leaves:
        if isinstance(x, Tracer) and x._builder is b:
            outputs.append(x._var)
            statics.append(TENSOR)
        elif isinstance(x, torch.Tensor):
            outputs.append(b.const(x))
            statics.append(TENSOR)
        else:
            statics.append(x)
    graph = Graph(
        b.inputs + [b.const_vars[id(t)] for t in b.const_values],
        b.nodes,
        outputs,
        num_consts=len(b.const_values),
        const_values=list(b.const_values),
    )
    return graph, out_spec, statics
