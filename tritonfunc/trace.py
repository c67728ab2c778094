"""Tracing: run the user's function on `Tracer` tensors and record a Graph of primitives.

A Tracer is a tensor subclass with no storage.  Every ATen op that reaches it (torch has already
reduced the user's Python to ATen, and decomposed the implicit composites) is lowered with the
library in `aten/`; an op without a lowering is decomposed with torch's own decomposition table,
and one without either runs as a torch call between kernels (fallback.py).  Shapes and dtypes of
every ATen result come from running the op on meta tensors, so broadcasting and type promotion are
torch's own.  Tensors that are not tracers of this trace (closures, module parameters, tracers of
an enclosing trace) become constant inputs of the graph, read at each call.

Traces nest (a transform called inside another traces inside it) and are per thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import torch._decomp.decompositions  # noqa: F401  (fills the decomposition table)
import torch._refs  # noqa: F401
import torch._refs.nn.functional  # noqa: F401
from torch._decomp import decomposition_table
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from . import fallback
from .aten import VIEW_OPS, Updates, aten, lowering_for
from .aten.random import FACTORIES, lower_factory, lower_random
from .graph import Builder, Graph, Var
from .primitives import OPAQUE

# Ops run by torch rather than decomposed: torch's kernels for them (cuDNN, sorting networks) beat
# what a decomposition into fused primitives would make of them.
TORCH_CALLS = {
    aten.convolution.default,
    aten.max_pool2d_with_indices.default,
    aten.max_pool3d_with_indices.default,
    aten.sort.default,
    aten.sort.stable,
    aten.topk.default,
}


class TraceBuilder(Builder):
    """The builder of one trace: its nesting level and the transform it serves."""

    def __init__(self, level: int, device: torch.device, api: str | None = None):
        super().__init__(device, track_grad_mode=True)
        self.level = level
        self.api = api  # "vmap" picks torch.func's vmap error texts


_local = threading.local()


def trace_stack() -> list[TraceBuilder]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


class Tracer(torch.Tensor):
    _builder: TraceBuilder
    _var: Var

    @staticmethod
    def __new__(cls, builder: TraceBuilder, var: Var):
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
        # F.linear of a 1-D input runs that same matmul: give it a row instead.
        if func is torch.nn.functional.linear:
            rest = dict(kwargs or {})
            x = args[0] if args else rest.pop("input", None)
            if isinstance(x, torch.Tensor) and x.dim() == 1:
                return func(x.unsqueeze(0), *args[1:], **rest).squeeze(0)
        return super().__torch_function__(func, types, args, kwargs)


_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__}


def _innermost_builder(args, kwargs) -> TraceBuilder:
    builders = [a._builder for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, Tracer)]
    b = max(builders, key=lambda b: b.level)
    if not any(b is s for s in trace_stack()):
        raise RuntimeError(
            "tritonfunc: a traced tensor escaped the function that created it "
            "(it was stored outside and used after the transform returned)"
        )
    return b


def _to_meta(x):
    if isinstance(x, torch.Tensor):
        return torch.empty(x.shape, dtype=x.dtype, device="meta")
    return x


def _as_vars(b: TraceBuilder, tree):
    """Tracers of trace `b` as their vars, any other tensor as a constant of `b`."""

    def as_var(x):
        if isinstance(x, Tracer) and x._builder is b:
            return x._var
        if isinstance(x, torch.Tensor):
            return b.const(x)
        return x

    return pytree.tree_map(as_var, tree)


def _as_tracers(b: TraceBuilder, tree):
    return pytree.tree_map(lambda v: Tracer(b, v) if isinstance(v, Var) else v, tree)


def _dispatch(func, args, kwargs):
    b = _innermost_builder(args, kwargs)
    name = func.overloadpacket.__name__
    if func in _DATA_DEPENDENT:
        _refuse_data_dependence(control_flow=func is not aten._local_scalar_dense.default)
    lowering = lowering_for(func)
    if lowering is None and name.endswith("_") and not name.startswith("_"):
        return _inplace(b, func, args, kwargs)
    if lowering is None and func not in TORCH_CALLS and func in decomposition_table:
        # A decomposition is worth it only if it lowers entirely: if any piece of it would be a
        # torch call, the op the user wrote is the better torch call (and the name they know).
        mark = len(b.nodes)
        try:
            out = decomposition_table[func](*args, **kwargs)
            if all(n.prim.strategy != OPAQUE for n in b.nodes[mark:]):
                return out
        except NotImplementedError:
            pass
        del b.nodes[mark:]
    meta_kwargs = pytree.tree_map(_to_meta, kwargs)
    if "device" in kwargs:  # x.to(dtype, device=x.device), as torch.softmax(x, dtype=...) calls it
        meta_kwargs["device"] = "meta"
    try:
        out_meta = func(*pytree.tree_map(_to_meta, args), **meta_kwargs)
    except NotImplementedError as e:  # e.g. boolean-mask indexing: its shape depends on the values
        raise NotImplementedError(
            f"tritonfunc: operator {func} is not supported: its output shape depends on tensor values, which a "
            f"traced graph cannot represent ({e})"
        ) from e
    vargs, vkwargs = _as_vars(b, (args, kwargs))
    with b:
        if lowering is not None:
            out = lowering(b, out_meta, *vargs, **vkwargs)
        else:
            out = fallback.emit_aten(func, vargs, vkwargs, out_meta)
    out, updates = (out.result, out.args) if isinstance(out, Updates) else (out, {})
    result = _as_tracers(b, out)
    for i, new in updates.items():  # an op that updates arguments in place (batch norm's running stats)
        args[i].copy_(Tracer(b, new))
    if func in VIEW_OPS and isinstance(args[0], Tracer):
        args[0]._has_views = True
        for r in result if isinstance(result, (list, tuple)) else [result]:
            r._is_view = True
    return result


def _inplace(b: TraceBuilder, func, args, kwargs):
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
    with b:
        target._var = b.cast(result._var, target.dtype)
    return target


def _refuse_data_dependence(control_flow: bool):
    """A traced value read on the host (.item(), `if tensor:`): a graph cannot depend on it."""
    if any(t.api == "vmap" for t in trace_stack()):  # torch.func's own words under vmap
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


class _TracingMode(TorchDispatchMode):
    """Active while a function is traced: catches the operators that take no tensor (factories and
    seeded random draws), which would otherwise never reach a Tracer."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # An op with a lowering of its own is lowered as usual, though tagged random (the fused
        # attention ops are, for their dropout).
        random = torch.Tag.nondeterministic_seeded in func.tags and lowering_for(func) is None
        factory = func.overloadpacket in FACTORIES and kwargs.get("layout") in (None, torch.strided)
        if not (random or factory):
            return func(*args, **kwargs)
        b = innermost_builder(pytree.tree_leaves((args, kwargs))) or trace_stack()[-1]
        meta_kwargs = {k: v for k, v in kwargs.items() if k != "generator"}
        if factory or "device" in kwargs or func.overloadpacket in (aten.rand, aten.randn):
            meta_kwargs["device"] = "meta"
        out = func(*pytree.tree_map(_to_meta, args), **meta_kwargs)
        vargs, vkwargs = _as_vars(b, (args, {k: v for k, v in kwargs.items() if k != "generator"}))
        vkwargs["generator"] = kwargs.get("generator")
        with b:
            result = (
                lower_factory(b, func, out, vargs, vkwargs) if factory else lower_random(b, func, out, vargs, vkwargs)
            )
        if func.overloadpacket.__name__.endswith("_") and isinstance(args[0], Tracer):
            args[0]._var = result  # an in-place fill (dropout and nn.init draw this way)
            return args[0]
        return _as_tracers(b, result)


# ---------------------------------------------------------------------------------------------
# Running a graph inside a trace: how transforms nest.


def innermost_builder(values) -> TraceBuilder | None:
    """The deepest live trace that any of `values` belongs to, or None when all are concrete."""
    tracers = [t for t in values if isinstance(t, Tracer)]
    return _innermost_builder(tracers, {}) if tracers else None


def inline(b: TraceBuilder, graph: Graph, inputs: list) -> list[Tracer]:
    """Records `graph` applied to `inputs` (arguments then constants) into the trace `b`.

    A transform called on tracers (inside another transform) computes its transformed graph as
    usual, then inlines it, so the enclosing transform sees ordinary primitives.  A no_grad block
    around the call, or inside the inlined function, stays in force for the enclosing transform.
    """
    env: dict[Var, Var] = {}
    for v, t in zip(graph.inputs, inputs):
        env[v] = t._var if isinstance(t, Tracer) and t._builder is b else b.const(t)
    for n in graph.nodes:
        outs = b.emit(n.prim, [env[v] for v in n.inputs], no_grad=n.no_grad, **n.params)
        env.update(zip(n.outs, outs if n.prim.multiple_results else (outs,)))
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
    stack = trace_stack()
    b = TraceBuilder((stack[-1].level + 1) if stack else 0, torch.device(device), api=api)
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
    stack.append(b)
    try:
        # A no_grad around the transform does not reach inside it.
        with torch.enable_grad(), _TracingMode():
            out = fn(*targs, **tkwargs)
    finally:
        stack.pop()
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
    graph = b.graph(outputs)
    for n in graph.nodes:
        if n.prim.strategy == OPAQUE:
            fallback.warn_not_fused(n.prim.name)
    return graph, out_spec, statics
