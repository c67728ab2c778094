"""Tracing: run the user's function on `Tracer` tensors and record a Graph of primitives.

A Tracer is a tensor subclass with no storage.  Every ATen op that reaches it (torch has already
reduced the user's Python to ATen, and decomposed the implicit composites) is lowered with the
library in `aten/`; an op without a lowering is decomposed with torch's own decomposition table,
and one without either runs as a torch call between kernels (fallback.py).  Shapes and dtypes of
every ATen result come from running the op on meta tensors, so broadcasting and type promotion are
torch's own.  Tensors that are not tracers of this trace (closures, module parameters, tracers of
an enclosing trace) become constant inputs of the graph, read at each call.

In-place ops are functionalized as torch.func does.  Every traced tensor is a window on a
`_Storage` (the value in the layout it was created with) through a chain of view ops; a write
computes the op out of place, scatters the new value back through the writer's chain into the
storage, and every other view of that storage re-derives its value when it is next read.  Writes
to the function's inputs and to captured tensors become extra graph outputs, copied into the
caller's tensors after the run (`Traced.writes`); metadata changes of inputs (`x.t_()`) are
replayed on them.  An in-place op under `no_grad` changes the value but keeps the gradient path of
the old value, as in torch (F.cosine_similarity clamps its norms so).  Mutating a captured tensor
inside grad/vjp/jvp, or a differentiated input, raises torch.func's errors; vmap's rules for
in-place ops on batched values are checked by vmap_graph from the recorded `OpCall` ops.

Traces nest (a transform called inside another traces inside it) and are per thread.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch._decomp.decompositions  # noqa: F401  (fills the decomposition table)
import torch._refs  # noqa: F401
import torch._refs.nn.functional  # noqa: F401
import torch.nn.functional as F
from torch._decomp import decomposition_table
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._mode_utils import no_dispatch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from . import fallback
from . import primitives as P
from .aten import Updates, aten, lowering_for
from .aten.random import FACTORIES, check_params, dropout_scope, in_dropout, lower_factory, lower_random
from .graph import Builder, Graph, OpCall, Seed, Var

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

GRAD_APIS = ("grad", "vjp", "jvp")


class TraceBuilder(Builder):
    """The builder of one trace: its nesting level, the transform it serves ("vmap", one of
    GRAD_APIS, or None for jit) and what in-place ops need: tensors captured and then written,
    and real tensors the function made itself (mutating those is no write to the outside)."""

    def __init__(self, level: int, device: torch.device, api: str | None = None, batch_size: int | None = None):
        super().__init__(device, track_grad_mode=True)
        self.level = level
        self.api = api
        self.batch_size = batch_size  # a vmap's: torch's errors for a refused call are worded for it
        self.captured: dict[int, Tracer] = {}  # id(captured tensor) -> the tracer standing for it
        self.local: dict[int, torch.Tensor] = {}  # id -> real tensor made inside the function
        # id(real tensor computed from captured ones outside the graph) -> (it, its traced shadow)
        self.shadow: dict[int, tuple[torch.Tensor, Tracer]] = {}


_local = threading.local()


def trace_stack() -> list[TraceBuilder]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


# ---------------------------------------------------------------------------------------------
# Storages and views.


class _Storage:
    """The memory behind a traced tensor and its views: the value in the layout the tensor was made
    with, bumped `version` on every write, and where it came from (for write-backs)."""

    __slots__ = ("var", "version", "origin", "diff", "like", "whole")

    def __init__(self, var: Var, origin=None, diff: bool = False):
        self.var = var
        self.version = 0
        self.origin = origin  # None, an input position, or the captured tensor it stands for
        self.diff = diff  # an input being differentiated (torch: a leaf that requires grad)
        self.like: Var | None = None  # made by zeros_like(x) and friends: x's var (vmap's checks)
        self.whole: Tracer | None = None  # a tracer of the whole storage, for deeper traces (_stand_in)


@dataclass(frozen=True)
class ViewStep:
    """One view op applied to a tensor: func(x, *args, **kwargs)[index]."""

    func: Any
    args: tuple
    kwargs: dict = field(default_factory=dict)
    index: int | None = None  # which result, for split/unbind
    no_grad: bool = False  # made inside a no_grad block (no gradient flows through it)


class Tracer(torch.Tensor):
    _builder: TraceBuilder
    _storage: _Storage
    _chain: tuple[ViewStep, ...]

    @staticmethod
    def __new__(cls, builder: TraceBuilder, var: Var, storage: _Storage | None = None, chain=()):
        t = torch.Tensor._make_wrapper_subclass(cls, var.shape, dtype=var.dtype, device=builder.device)
        t._builder = builder
        t._storage = storage if storage is not None else _Storage(var)
        t._chain = tuple(chain)
        t._cache = (t._storage.version, var)
        t._lost = None  # (storage, version) for a view tritonfunc cannot follow
        stack = trace_stack()
        t._born = stack[-1].level if stack else -1  # the trace whose function made it (see _target)
        return t

    @property
    def _var(self) -> Var:
        """The current value: re-derived from the storage when a write has changed it."""
        version, var = self._cache
        if self._lost is not None and self._lost[0].version != self._lost[1]:
            raise NotImplementedError(
                "tritonfunc: a view whose base was changed in place is read afterwards, and tritonfunc cannot "
                "follow this kind of view; clone it before the in-place op"
            )
        if version != self._storage.version:
            var = _replay(self._builder, self._storage.var, self._chain)
            self._cache = (self._storage.version, var)
        return var

    def __repr__(self, *, tensor_contents=None) -> str:
        return f"Tracer({self._var.type_str})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            return _torch_function(func, args, kwargs)
        except Exception as e:
            if getattr(e, _ASK_TORCH, False):  # a call torch refuses too: torch's own error for it
                theirs = _torch_error(func, args, kwargs)
                if theirs is not None:
                    raise theirs from None
            raise


def _torch_function(func, args, kwargs):
    """Tracer.__torch_function__: a few calls handled at the level the user wrote them."""
    if func is torch.Tensor.__bool__:  # `if tensor:` -- Python control flow on a traced value
        _refuse_data_dependence(control_flow=True)
    if func is torch.Tensor.new_tensor:  # data from Python: a constant, like torch.tensor(data)
        return torch.tensor(args[1], dtype=kwargs.get("dtype") or args[0].dtype, device=args[0].device)
    if func in _DROPOUTS:  # its noise is a fresh draw, not an in-place fill (vmap's randomness rules)
        with dropout_scope():
            return _call(func, args, kwargs)
    # x[t] with a 0-d integer tensor t: torch would read t on the host (.item()); index with
    # t as a one-element tensor instead (a gather) and drop that axis.
    if func is torch.Tensor.__getitem__ and len(args) == 2:
        x, key = args
        keys = key if isinstance(key, tuple) else (key,)
        zero_d = [
            i
            for i, k in enumerate(keys)
            if isinstance(k, torch.Tensor) and k.dim() == 0 and not k.dtype.is_floating_point and k.dtype != torch.bool
        ]
        tensors = [i for i, k in enumerate(keys) if isinstance(k, torch.Tensor)]
        adjacent = tensors == list(range(tensors[0], tensors[-1] + 1)) if tensors else False
        if zero_d and zero_d == tensors and adjacent and all(isinstance(k, (int, slice, torch.Tensor)) for k in keys):
            new = tuple(k.reshape(1) if j in zero_d else k for j, k in enumerate(keys))
            picked = x[new if len(new) > 1 else new[0]]
            # the index tensors leave one axis where the first was, after the sliced axes before it
            return picked.squeeze(sum(1 for k in keys[: zero_d[0]] if isinstance(k, slice)))
    # x[mask] = value with a boolean mask over x's leading dims (a 0-d one included) and a value
    # that does not depend on how many elements the mask selects: a masked fill, with no
    # data-dependent shape.
    if func is torch.Tensor.__setitem__ and len(args) == 3 and _is_mask_fill(*args):
        x, mask, value = args
        mask = mask.reshape(tuple(mask.shape) + (1,) * (x.dim() - mask.dim()))
        x.copy_(torch.where(mask, value, x))
        return None
    # torch.matmul with a 1-D operand squeezes its result in place (squeeze_), which a tracer
    # cannot do to its own shape: give it 2-D operands and reshape the result instead.
    if func in _MATMULS and not kwargs and len(args) == 2:
        a, c = args
        if isinstance(a, torch.Tensor) and isinstance(c, torch.Tensor) and 1 in (a.dim(), c.dim()):
            _matmul_shapes_check(a, c)
            out = torch.matmul(a.unsqueeze(0) if a.dim() == 1 else a, c.unsqueeze(-1) if c.dim() == 1 else c)
            if a.dim() == 1:
                out = out.squeeze(-2)
            if c.dim() == 1:
                out = out.squeeze(-1)
            return out
    # F.linear of a 1-D input runs that same matmul: give it a row instead (a 1-D weight too, which
    # linear then multiplies as a vector: x @ w + bias).
    if func is torch.nn.functional.linear:
        rest = dict(kwargs or {})
        x = args[0] if args else rest.pop("input", None)
        if isinstance(x, torch.Tensor) and x.dim() == 1:
            given = dict(zip(("weight", "bias"), args[1:])) | rest
            weight, bias = given.get("weight"), given.get("bias")
            if isinstance(weight, torch.Tensor) and weight.dim() == 1:
                out = torch.matmul(x, weight)
                return out if bias is None else out + bias
            return func(x.unsqueeze(0), *args[1:], **rest).squeeze(0)
    return _call(func, args, kwargs)


def _matmul_shapes_check(a: torch.Tensor, c: torch.Tensor) -> None:
    """Operands whose shapes torch.matmul refuses (checked on meta tensors before the 2-d rewrite
    below): torch's own error for the user's call, through the ask-torch path (torch.func's under
    vmap), not the rewritten call's or the meta kernel's words."""
    try:
        with _disable_current_modes(), torch._C.DisableTorchFunctionSubclass():
            torch.matmul(*(torch.empty(t.shape, dtype=t.dtype, device="meta") for t in (a, c)))
    except RuntimeError as e:
        raise _askable(e) from None


def _is_mask_fill(x, key, value) -> bool:
    if not (isinstance(x, torch.Tensor) and isinstance(key, torch.Tensor) and key.dtype == torch.bool):
        return False
    if tuple(key.shape) != tuple(x.shape[: key.dim()]):
        return False
    if isinstance(value, (bool, int, float)):
        return True
    rest = tuple(x.shape[key.dim() :])  # the value must broadcast to one selected element's shape
    return isinstance(value, torch.Tensor) and value.dim() <= len(rest) and _broadcasts(tuple(value.shape), rest)


def _broadcasts(shape: tuple, to: tuple) -> bool:
    return all(a in (1, b) for a, b in zip(reversed(shape), reversed(to)))


# Set on an error tritonfunc raises for a call torch itself may refuse (a shape check, an operator
# whose output shape depends on values, out=): Tracer.__torch_function__ asks torch for its own
# error for the user's call and raises that (torch.func's words under vmap) when there is one.
_ASK_TORCH = "_tritonfunc_ask_torch"
ASK_TORCH_ELEMENTS = 1 << 22  # stand-in elements made to ask, at most (beyond: tritonfunc's own error)


def _askable(e: BaseException) -> BaseException:
    setattr(e, _ASK_TORCH, True)
    return e


def _torch_error(func, args, kwargs) -> BaseException | None:
    """What torch raises for func(*args, **kwargs) with each tracer replaced by a stand-in of its
    shape and dtype (mapped by torch.func's vmap over the innermost vmap's batch when a vmap is
    being traced, every stand-in batched), or None if it raises nothing."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    traced = [i for i, x in enumerate(leaves) if isinstance(x, Tracer)]
    vmaps = [t for t in trace_stack() if t.api == "vmap"]
    vmapped = bool(vmaps)
    elements = sum(leaves[i].numel() for i in traced)
    batch = ()
    if vmapped:  # the vmap's own batch where its stand-ins are small enough, else 2
        size = vmaps[-1].batch_size or 2
        batch = (size if elements * size <= ASK_TORCH_ELEMENTS else 2,)
    if elements * (batch[0] if batch else 1) > ASK_TORCH_ELEMENTS:
        return None

    def stand_in(t: Tracer) -> torch.Tensor:
        shape = batch + tuple(t.shape)
        return torch.ones(shape, dtype=t.dtype) if t.dtype.is_floating_point else torch.zeros(shape, dtype=t.dtype)

    def run(*values):
        filled = list(leaves)
        for i, v in zip(traced, values):
            filled[i] = v
        a, k = pytree.tree_unflatten(filled, spec)
        return func(*a, **k)

    try:
        with _disable_current_modes(), torch._C.DisableTorchFunctionSubclass(), torch.random.fork_rng(devices=[]):
            values = [stand_in(leaves[i]) for i in traced]
            if vmapped:
                fallback.torch_vmap(run)(*values)
            else:
                run(*values)
    except Exception as e:  # noqa: BLE001  (whatever torch raises is the answer)
        return e
    return None


def _call(func, args, kwargs):
    """What Tensor.__torch_function__ does, without turning plain tensors in the result into
    Tracers: an in-place op on a real tensor (torch.tensor(...).add_(x)) returns that tensor, whose
    value inside the trace its stand-in tracer holds."""
    with torch._C.DisableTorchFunctionSubclass():
        return func(*args, **kwargs)


_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__}
_DROPOUTS = {
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
    torch.dropout,
    torch.feature_dropout,
    torch.alpha_dropout,
    torch.feature_alpha_dropout,
    torch.dropout_,
    torch.feature_dropout_,
    torch.alpha_dropout_,
    torch.feature_alpha_dropout_,
}
_RRELUS = {F.rrelu, F.rrelu_, torch.rrelu, torch.rrelu_}


def _innermost_builder(args, kwargs) -> TraceBuilder:
    tracers = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, Tracer)]
    b = max((t._builder for t in tracers), key=lambda b: b.level)
    for deeper in reversed(trace_stack()):  # an enclosing trace's tensor a deeper trace wrote: that one's
        if deeper.level <= b.level:
            break
        if any(_captures(deeper, t) for t in tracers):
            b = deeper
            break
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


def _shape_stand_ins(func, args, kwargs):
    """(args, kwargs) on meta tensors, for an op's output shape; a 0-d CPU tensor stays a CPU
    scalar where fallback.cpu_scalar_operands says so."""
    leaves = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    keep = fallback.cpu_scalar_operands(func, [x.shape for x in leaves])

    def stand_in(x):
        if keep and isinstance(x, torch.Tensor) and x.dim() == 0 and x.device.type == "cpu":
            return torch.empty((), dtype=x.dtype)
        return _to_meta(x)

    return pytree.tree_map(stand_in, (args, kwargs))


def _check_real_dtype(t: torch.Tensor | Var, what: str) -> None:
    if t.dtype.is_complex:
        raise NotImplementedError(f"tritonfunc: complex tensors are not supported ({what} has dtype {t.dtype})")


def _as_vars(b: TraceBuilder, tree):
    """Tracers of trace `b` as their vars, any other tensor as a constant of `b` (or, once the
    function has written to it, the tracer standing for it)."""

    def as_var(x):
        if isinstance(x, Tracer) and x._builder is b:
            return x._var
        if isinstance(x, torch.Tensor):
            if _captures(b, x):
                return _stand_in(b, x)._var
            for owner in reversed(trace_stack()):  # computed from captured tensors: its shadow
                shadow = owner.shadow.get(id(x))
                if shadow is not None and shadow[0] is x:
                    return shadow[1]._var if owner is b else b.const(shadow[1])
            _check_real_dtype(x, "a captured tensor")
            if b.captured:
                _check_not_stale(b, x)
            return b.const(x)
        return x

    return pytree.tree_map(as_var, tree)


def _as_tracers(b: TraceBuilder, tree):
    return pytree.tree_map(lambda v: Tracer(b, v) if isinstance(v, Var) else v, tree)


_FUNCTION_APPLY = torch.autograd.Function.apply.__func__.__code__


def _refuse_custom_function() -> None:
    """An op run inside the forward of a custom torch.autograd.Function (torch runs it with grad
    mode off) called by the traced function: torch.func applies the Function's own backward, jvp
    and vmap rules, which a trace of its forward would silently replace (a straight-through
    estimator would get round's zero gradient).  Refused, with torch.func's error where it has one."""
    if torch.is_grad_enabled():
        return
    frame, found, inside = sys._getframe(1), None, None
    while frame is not None:  # an apply between this op and the outermost trace
        if frame.f_code is _FUNCTION_APPLY and found is None:
            found = frame.f_locals.get("cls")
        elif frame.f_code is _TRACE:
            inside = inside or found
        frame = frame.f_back
    if inside is None:
        return
    transformed = any(t.api in ("vmap", *GRAD_APIS) for t in trace_stack())
    if transformed and not torch.autograd.function._is_setup_context_defined(inside.setup_context):
        raise RuntimeError(
            "In order to use an autograd.Function with functorch transforms (vmap, grad, jvp, jacrev, ...), it must "
            "override the setup_context staticmethod. For more details, please see "
            "https://pytorch.org/docs/main/notes/extending.func.html"
        )
    raise NotImplementedError(
        f"tritonfunc: the autograd.Function {inside.__name__} is not supported inside a tritonfunc transform: "
        "tritonfunc would trace its forward and ignore its backward, jvp and vmap rules"
    )


def _dispatch(func, args, kwargs):
    _refuse_custom_function()
    b = _innermost_builder(args, kwargs)
    if func in _DATA_DEPENDENT:
        folded = [_constant_value(b, x) for x in args] if func in _HOST_READS else [None]
        if all(v is not None for v in folded):  # values no input reaches (a count made a tensor)
            with _disable_current_modes():
                return func(*folded)
        try:
            _refuse_data_dependence(control_flow=func is not aten._local_scalar_dense.default)
        except RuntimeError as e:
            if func in (aten.nonzero.default, aten.equal.default):  # torch.func's vmap has its own words
                _askable(e)
            raise
    if _writes_self(func):
        return _inplace(b, func, args, kwargs)
    if _out_variant(func):
        raise _askable(NotImplementedError(f"tritonfunc: {func} writes into its out= argument, which is not supported"))
    lowering = lowering_for(func)
    decomposing = _decomposing()
    decomp = None
    if lowering is None and func not in TORCH_CALLS and func not in decomposing:
        decomp = decomposition_table.get(func) or _aten_form(func)
    if decomp is not None:
        # A decomposition is worth it only if it lowers entirely: if any piece of it would be a
        # torch call, the op the user wrote is the better torch call (and the name they know).
        # (A prims op's ATen form can come back to the op being decomposed: then run it.)
        mark = len(b.nodes)
        decomposing.add(func)
        try:
            result = decomp(*args, **kwargs)
        except NotImplementedError:
            pass
        else:
            if all(n.prim.strategy != P.OPAQUE for n in b.nodes[mark:]):
                _follow_views(func, args, result)
                return result
        finally:
            decomposing.discard(func)
        del b.nodes[mark:]
    meta_args, meta_kwargs = _shape_stand_ins(func, args, kwargs)
    if "device" in kwargs:  # x.to(dtype, device=x.device), as torch.softmax(x, dtype=...) calls it
        meta_kwargs["device"] = "meta"
    try:
        out_meta = func(*meta_args, **meta_kwargs)
    except NotImplementedError as e:  # e.g. boolean-mask indexing: its shape depends on the values
        raise _askable(
            NotImplementedError(
                f"tritonfunc: operator {func} is not supported: its output shape depends on tensor values, which "
                f"a traced graph cannot represent ({e})"
            )
        ) from e
    except (RuntimeError, IndexError, ValueError, TypeError) as e:  # a shape check failed
        _askable(e)
        raise
    for t in pytree.tree_leaves(out_meta):
        if isinstance(t, torch.Tensor):
            _check_real_dtype(t, f"the result of {func}")
    vargs, vkwargs = _as_vars(b, (args, kwargs))
    with b:
        if lowering is not None:
            try:
                out = lowering(b, out_meta, *vargs, **vkwargs)
            except AssertionError as e:  # a primitive's shape rule: arguments the meta kernel let by
                raise _askable(RuntimeError(f"tritonfunc: {func} got arguments it cannot lower: {e}")) from e
        else:
            out, written = fallback.emit_aten_call(func, vargs, vkwargs, out_meta)
            _write_results(b, func, args, kwargs, written)
    out, updates = (out.result, out.args) if isinstance(out, Updates) else (out, {})
    result = _as_tracers(b, out)
    if updates:
        _write_updates(b, func, args, kwargs, updates)
    if lowering is not None and getattr(func, "is_view", False) and isinstance(args[0], Tracer):
        _make_views(b, func, args, kwargs, result)
    else:
        _follow_views(func, args, result)
    return _mark_like(b, func, args, result)


# Factories that make a tensor like their argument: under torch.func's vmap the result is batched
# when the argument is (the documented way to avoid in-place errors on fresh tensors).
_LIKE_FACTORIES = {
    aten.zeros_like,
    aten.ones_like,
    aten.empty_like,
    aten.full_like,
    aten.rand_like,
    aten.randn_like,
    aten.randint_like,
    aten.new_zeros,
    aten.new_ones,
    aten.new_empty,
    aten.new_full,
    aten.new_empty_strided,
}


def _mark_like(b: TraceBuilder, func, args, result):
    if func.overloadpacket in _LIKE_FACTORIES and isinstance(result, Tracer) and isinstance(args[0], torch.Tensor):
        result._storage.like = _as_vars(b, args[0])
    return result


def _write_updates(b: TraceBuilder, func, args, kwargs, updates: dict) -> None:
    """Writes the new values of arguments an op updates inside itself (batch norm's running
    statistics).  torch.func allows that to captured tensors under grad too, since it happens inside
    the op; vmap refuses an unbatched one next to batched inputs, which vmap_graph asks torch.func."""
    tensor_args = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    writes = tuple(tensor_args.index(i) for i in updates)
    b.checks.append(OpCall(func, _as_vars(b, (tuple(args), dict(kwargs))), None, writes))
    for i, new in updates.items():
        target = _stand_in(b, args[i])
        with b:
            value = b.broadcast_to(b.cast(new, target.dtype), tuple(target.shape))
        write(b, target, value)


def _made() -> dict:
    """The real tensors made inside the functions traced by this thread's outermost trace from
    Python values alone (torch.tensor(...)), by id: constants a cached call may keep."""
    if not hasattr(_local, "made"):
        _local.made = {}
    return _local.made


def _is_made(x: torch.Tensor) -> bool:
    return _made().get(id(x)) is x


def _shadow(b: TraceBuilder, func, args, kwargs, out) -> None:
    """Traces `func(*args, **kwargs)`, which just ran on real tensors read from outside the function
    (captured, or computed from captured ones), on tracers standing for them; the results' tracers
    are their shadows, which the graph uses wherever the real results reach it."""

    def stand_in(x):
        if isinstance(x, torch.Tensor) and not isinstance(x, Tracer):
            shadow = b.shadow.get(id(x))
            return shadow[1] if shadow is not None and shadow[0] is x else Tracer(b, b.const(x))
        return x

    shadow_args, shadow_kwargs = pytree.tree_map(stand_in, (args, kwargs))
    try:
        shadows = func(*shadow_args, **shadow_kwargs)
    except Exception:  # noqa: BLE001  (no shadow: a graph using the result cannot be cached)
        return
    for real, shadow in zip(pytree.tree_leaves(out), pytree.tree_leaves(shadows)):
        if isinstance(real, torch.Tensor) and isinstance(shadow, Tracer):
            b.shadow[id(real)] = (real, shadow)


def _decomposing() -> set:
    """The ops this thread is decomposing right now."""
    if not hasattr(_local, "decomposing"):
        _local.decomposing = set()
    return _local.decomposing


def _aten_form(func):
    """A prims op (left by torch's decompositions) as the ATen ops that implement it."""
    if func.namespace == "prims" and getattr(func, "impl_aten", None) is not None:
        return func.impl_aten
    return None


def _writes_self(func) -> bool:
    """An in-place op: writes its first argument (and only that)."""
    arguments = func._schema.arguments
    written = [a.name for a in arguments if a.alias_info is not None and a.alias_info.is_write]
    return written == [arguments[0].name] and not arguments[0].kwarg_only


def _out_variant(func) -> bool:
    return any(a.kwarg_only and a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)


def _make_views(b: TraceBuilder, func, args, kwargs, result) -> None:
    """Marks the results of a lowered view op as windows on args[0]'s storage."""
    base: Tracer = args[0]
    outs = result if isinstance(result, (list, tuple)) else [result]
    multi = isinstance(result, (list, tuple))
    for i, r in enumerate(outs):
        step = ViewStep(func, tuple(args[1:]), dict(kwargs), i if multi else None, not torch.is_grad_enabled())
        r._storage, r._chain = base._storage, base._chain + (step,)
        r._cache = (base._storage.version, r._cache[1])
        r._lost = base._lost


def _follow_views(func, args, result) -> None:
    """A view op that came back through a decomposition or a torch call: its results are views
    only if they came out as views of args[0]; otherwise a later write to either would not reach
    the other, so such a pair may not be written and read again (see Tracer._var)."""
    if not (getattr(func, "is_view", False) and args and isinstance(args[0], Tracer)):
        return
    base: Tracer = args[0]
    for r in pytree.tree_leaves(result):
        if isinstance(r, Tracer) and r._storage is not base._storage:
            r._lost = (base._storage, base._storage.version)
            base._lost = base._lost or (r._storage, r._storage.version)


def _replay(b: TraceBuilder, var: Var, chain: tuple[ViewStep, ...]) -> Var:
    """A view's value from its storage's: its view ops applied again (they cost nothing in a kernel)."""
    for step in chain:
        meta = torch.empty(var.shape, dtype=var.dtype, device="meta")
        out_meta = step.func(meta, *step.args, **step.kwargs)
        with b, torch.set_grad_enabled(not step.no_grad):
            out = lowering_for(step.func)(b, out_meta, var, *step.args, **step.kwargs)
        var = out[step.index] if step.index is not None else out
    return var


def replay_view(tensor: torch.Tensor, chain: tuple[ViewStep, ...]) -> torch.Tensor:
    """The same view ops applied to a real tensor: what the traced function returned, as a view of
    the caller's tensor."""
    for step in chain:
        out = step.func(tensor, *step.args, **step.kwargs)
        tensor = out[step.index] if step.index is not None else out
    return tensor


# ---------------------------------------------------------------------------------------------
# Writes: in-place ops.


def _op_name(func) -> str:
    """torch's name for an op in its messages: aten::add_.Tensor, aten::copy_."""
    overload = func._overloadname
    return func._schema.name + ("" if overload == "default" else f".{overload}")


def _captured_error(func) -> RuntimeError:
    return RuntimeError(
        f"During a grad (vjp, jvp, grad, etc) transform, the function provided attempted to call in-place "
        f"operation ({_op_name(func)}) that would mutate a captured Tensor. This is not supported; please rewrite "
        f"the function being transformed to explicitly accept the mutated Tensor(s) as inputs."
    )


def _target(b: TraceBuilder, func, x: torch.Tensor) -> Tracer:
    """The tracer of `b` an in-place op writes to.  A tensor from outside the trace (a closure, a
    module buffer, an enclosing trace's tracer) gets one that stands for it from now on, and its
    new value is written back after the run; a real tensor the function made itself
    (torch.tensor(...)) gets one too, with no write-back.  Writing a tensor captured by a
    grad/vjp/jvp trace is torch.func's error."""
    t = _stand_in(b, x)
    origin = t._storage.origin
    if isinstance(origin, Tracer):  # an enclosing trace's tensor, or one made by this trace's function
        home = max(origin._builder.level, origin._born)  # from an op on enclosing tensors (x.clone())
    elif origin is None or isinstance(origin, int):  # this trace's own
        home = b.level
    else:  # from outside every trace
        home = -1
    if any(s.api in GRAD_APIS and s.level > home for s in trace_stack()):
        raise _captured_error(func)
    return t


def _whole(x: Tracer) -> Tracer:
    """One tracer, of x's own trace, for the whole of x's storage: what a deeper trace captures for
    every tensor sharing that storage, so that a write through one of them is seen by the others."""
    storage = x._storage
    if storage.whole is None:
        storage.whole = Tracer(x._builder, storage.var, storage)
        storage.whole._born = x._born
    return storage.whole


def _captures(b: TraceBuilder, x) -> bool:
    """Whether trace b has a tracer standing for x (or for the storage x, an enclosing trace's tensor, shares)."""
    if id(x) in b.captured:
        return True
    return isinstance(x, Tracer) and x._storage.whole is not None and id(x._storage.whole) in b.captured


def _stand_in(b: TraceBuilder, x: torch.Tensor) -> Tracer:
    if isinstance(x, Tracer) and x._builder is b:
        return x
    if id(x) in b.captured:
        return b.captured[id(x)]
    if isinstance(x, Tracer):  # an enclosing trace's tensor
        whole = _whole(x)
        if x is not whole:  # x as a view of the whole storage's stand-in
            base = _stand_in(b, whole)
            t = Tracer(b, _replay(b, base._storage.var, x._chain), base._storage, chain=x._chain)
            b.captured[id(x)] = t
            return t
    _check_real_dtype(x, "a captured tensor")
    memory = tensor_memory(x)
    for other in b.captured.values():
        if memory is not None and tensor_memory(other._storage.origin) == memory:
            raise NotImplementedError(
                "tritonfunc: two tensors sharing the memory of a captured tensor are written in place; "
                "tritonfunc cannot follow that aliasing (clone one of them, or pass the tensor as an argument)"
            )
    local = _is_local(x)
    var = b.const(x)
    t = Tracer(b, var, _Storage(var, origin=None if local else x))
    b.captured[id(x)] = t
    return t


def tensor_memory(x) -> Any:
    """What identifies the memory a captured tensor lives in (None when unknown)."""
    if x is None or isinstance(x, int):
        return None
    if isinstance(x, Tracer):
        return x._storage
    try:
        return (x.device, x.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):
        return None


def memory_overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors may share elements: tracers of one storage, or real tensors whose spans
    in one storage intersect."""
    if isinstance(a, Tracer) or isinstance(b, Tracer):
        return isinstance(a, Tracer) and isinstance(b, Tracer) and a._storage is b._storage
    if tensor_memory(a) is None or tensor_memory(a) != tensor_memory(b):
        return False

    def offsets(t):  # the byte offset of every element in its storage
        out = torch.zeros((), dtype=torch.int64)
        for n, stride in zip(t.shape, t.stride()):
            out = (out[..., None] + torch.arange(n) * stride).flatten()
        return (out * t.element_size() + t.data_ptr()).flatten()

    if a.numel() == 0 or b.numel() == 0:
        return False
    return bool(torch.isin(offsets(a), offsets(b)).any())


def _check_not_stale(b: TraceBuilder, x: torch.Tensor) -> None:
    """A captured tensor read after another one sharing its memory (a view of it, its base) was
    written: its constant would hold the old values."""
    memory = tensor_memory(x)
    if memory is None:
        return
    for t in b.captured.values():
        if t._storage.version > 0 and tensor_memory(t._storage.origin) == memory:
            raise NotImplementedError(
                "tritonfunc: a captured tensor is read after an in-place update through another tensor sharing "
                "its memory; tritonfunc cannot follow that aliasing (clone it, or pass it as an argument)"
            )


def _check_leaf(target: Tracer) -> None:
    if target._storage.diff and torch.is_grad_enabled():
        if target._chain:
            raise RuntimeError("a view of a leaf Variable that requires grad is being used in an in-place operation.")
        raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")


def _inplace(b: TraceBuilder, func, args, kwargs):
    """x.op_(...): computes op(...) out of place, then writes the result into x."""
    target = _target(b, func, args[0])
    if torch.Tag.inplace_view in func.tags:
        return _metadata_inplace(b, func, target, args, kwargs)
    if target._lost is not None:
        raise NotImplementedError(
            f"tritonfunc: in-place operator {func} on a view that tritonfunc cannot follow back to its base"
        )
    _check_leaf(target)
    args = (target, *args[1:])
    overload = _functional_form(func)
    if func is aten.copy_.default:  # src cast to self's dtype and broadcast to its shape
        with b:
            new = b.broadcast_to(b.cast(_as_vars(b, args[1]), target.dtype), tuple(target.shape))
    elif overload is None:
        raise NotImplementedError(f"tritonfunc: in-place operator {func} is not supported (no out-of-place form)")
    else:
        result = overload(*args, **kwargs)
        if tuple(result.shape) != tuple(target.shape):
            raise RuntimeError(
                f"output with shape {list(target.shape)} doesn't match the broadcast shape {list(result.shape)}"
            )
        if not torch.can_cast(result.dtype, target.dtype):
            raise RuntimeError(
                f"result type {_type_name(result.dtype)} can't be cast to the desired output type "
                f"{_type_name(target.dtype)}"
            )
        new = _as_vars(b, result)
    record_check(b, func, args, kwargs)
    write(b, target, new)
    return target


def _functional_form(func):
    """The out-of-place overload of an in-place op: add_.Tensor -> add.Tensor, pow_.Scalar ->
    pow.Tensor_Scalar (the one whose arguments have the same types)."""
    functional = getattr(aten, func.overloadpacket.__name__[:-1], None)
    if functional is None:
        return None
    same = getattr(functional, func._overloadname, None)
    if same is not None:
        return same
    types = [str(a.type) for a in func._schema.arguments]
    for name in functional.overloads():
        candidate = getattr(functional, name)
        if [str(a.type) for a in candidate._schema.arguments] == types:
            return candidate
    return None


def _type_name(dtype: torch.dtype) -> str:
    """torch's ScalarType name in its messages: Float, Long, Bool."""
    return torch.empty((), dtype=dtype, device="meta").type().split(".")[-1].replace("Tensor", "")


def record_check(b: TraceBuilder, func, args, kwargs) -> None:
    """Notes an in-place op or a random draw for vmap's checks (vars as they were before it)."""
    target = args[0] if args else None
    like = target._storage.like if isinstance(target, Tracer) and target._builder is b else None
    b.checks.append(OpCall(func, _as_vars(b, (tuple(args), dict(kwargs))), like))


def write(b: TraceBuilder, target: Tracer, new: Var) -> None:
    """Gives `target` the value `new`: scattered back through its view chain into its storage,
    so every view of that storage sees it.  Under no_grad the value changes but the gradient
    path stays the old value's, as torch's in-place ops under no_grad do."""
    old = target._var
    if new.dtype != target.dtype:
        with b:
            new = b.cast(new, target.dtype)
    if not torch.is_grad_enabled() and new.dtype.is_floating_point:
        new = _keep_gradient_path(b, old, new)
    storage = target._storage
    with torch.enable_grad():  # the scatter is bookkeeping: gradients flow through it
        values = [storage.var]
        for step in target._chain[:-1]:
            values.append(_replay(b, values[-1], (step,)))
        value = new
        for step, base in zip(reversed(target._chain), reversed(values)):
            value = _unview(b, step, base, value)
    storage.var = value
    storage.version += 1
    target._cache = (storage.version, new)


def _keep_gradient_path(b: TraceBuilder, old: Var, new: Var, forward_too: bool = False) -> Var:
    """new's value with old's derivative: new - (old' - old) where old' is old without one.
    (old' - old) is exactly +0 for finite values, and new - 0 is new, signed zeros included; where
    old is not finite the value is new itself.  After an in-place op under no_grad, old' is old under
    no_grad, which forward mode ignores (as torch's forward AD does): there the derivative is new's.
    After a write through a detached alias (`forward_too`), both modes keep old's derivative."""
    with b:
        if forward_too:
            new, old_without = P.stop_gradient(new), P.stop_gradient(old)
        else:
            old_without = b.emit(P.copy, [old], no_grad=True)
        with torch.enable_grad():
            kept = new - (old_without - old)
            finite = b.lt(b.abs(old_without), b.like(old, float("inf")))
            return b.where(finite, kept, new)


def _unview(b: TraceBuilder, step: ViewStep, base: Var, new: Var) -> Var:
    """The storage-side value after writing `new` into view `step` of `base`."""
    packet = step.func.overloadpacket
    args = step.args
    with b:
        if packet is aten.detach:  # torch changes the value, not the base's autograd history
            return _keep_gradient_path(b, base, new, forward_too=True) if base.dtype.is_floating_point else new
        if packet in (aten.alias, aten.lift_fresh, aten.real):
            return new
        if packet in (aten.view, aten._unsafe_view, aten.reshape, aten.unsqueeze, aten.squeeze) or step.func in (
            torch.ops.prims.reshape.default,
            torch.ops.prims.squeeze.default,
        ):
            return b.reshape(new, base.shape)
        if packet in (aten.permute, aten.transpose, aten.t):
            perm = _permutation(step, len(base.shape))
            return b.transpose(new, P.inverse_permutation(perm))
        if packet is aten.slice:
            dim = args[0] if args else step.kwargs.get("dim", 0)
            start = args[1] if len(args) > 1 else step.kwargs.get("start")
            end = args[2] if len(args) > 2 else step.kwargs.get("end")
            stride = args[3] if len(args) > 3 else step.kwargs.get("step", 1)
            return _unslice(b, base, new, dim % len(base.shape), start, end, stride)
        if packet is aten.select:
            dim, index = args[0] % len(base.shape), args[1] % base.shape[args[0]]
            shape = list(base.shape)
            shape[dim] = 1
            return _unslice(b, base, b.reshape(new, tuple(shape)), dim, index, index + 1, 1)
        if packet in (aten.split, aten.split_with_sizes, aten.unbind):
            where = 0 if packet is aten.unbind else 1  # unbind(dim), split(size, dim)
            dim = (args[where] if len(args) > where else step.kwargs.get("dim", 0)) % len(base.shape)
            meta = step.func(torch.empty(base.shape, device="meta"), *args, **step.kwargs)
            start = sum(m.shape[dim] for m in meta[: step.index]) if packet is not aten.unbind else step.index
            if packet is aten.unbind:
                shape = list(base.shape)
                shape[dim] = 1
                new = b.reshape(new, tuple(shape))
            return _unslice(b, base, new, dim, start, start + new.shape[dim], 1)
    raise NotImplementedError(
        f"tritonfunc: in-place update through a view made by {step.func} is not supported; clone the view first"
    )


def _permutation(step: ViewStep, rank: int) -> list[int]:
    packet = step.func.overloadpacket
    if packet is aten.permute:
        return [d % rank for d in step.args[0]]
    perm = list(range(rank))
    if packet is aten.t or rank < 2:
        return perm[::-1]
    d0, d1 = step.args[0] % rank, step.args[1] % rank
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return perm


def _unslice(b: Builder, base: Var, new: Var, dim: int, start, end, step: int) -> Var:
    """base with base[start:end:step] (along dim) replaced by new: new padded into place, selected."""
    size = base.shape[dim]
    start, _, _ = slice(start, end, step).indices(size)
    n = new.shape[dim]
    if n == 0:
        return base
    rank = len(base.shape)
    lo, hi, interior = [0] * rank, [0] * rank, [0] * rank
    lo[dim], interior[dim] = start, step - 1
    hi[dim] = size - (start + (n - 1) * step + 1)
    params = dict(lo=tuple(lo), hi=tuple(hi), interior=tuple(interior))
    placed = b.emit(P.pad, [new], **params)
    marks = b.emit(P.pad, [b.full(1, torch.int32, new.shape)], **params)
    return b.where(b.ne(marks, b.like(marks, 0)), placed, base)


def _metadata_inplace(b: TraceBuilder, func, target: Tracer, args, kwargs) -> Tracer:
    """x.t_(), x.unsqueeze_(0), ...: x becomes that view of its storage, and its shape changes."""
    name = func.overloadpacket.__name__
    packet = getattr(aten, name[:-1], None)
    # the view of the same overload (transpose_.default's is transpose.int)
    view = next((getattr(packet, o, None) for o in (func._overloadname, "int") if hasattr(packet, o)), None)
    if view is None or lowering_for(view) is None:
        raise NotImplementedError(f"tritonfunc: in-place operator {func} is not supported")
    _check_leaf(target)
    if not isinstance(target._storage.origin, (int, type(None))):
        raise NotImplementedError(f"tritonfunc: {func} on a captured tensor is not supported (pass it as an argument)")
    old = target._var
    step = ViewStep(view, tuple(args[1:]), dict(kwargs), None, not torch.is_grad_enabled())
    new = _replay(b, old, (step,))
    target._chain = target._chain + (step,)
    target._cache = (target._storage.version, new)
    with no_dispatch():  # the tracer's own sizes follow, as FunctionalTensor does for these ops
        func(target, *args[1:], **kwargs)
    return target


def _write_results(b: TraceBuilder, func, args, kwargs, written: dict[int, Var], record: bool = True) -> None:
    """A torch call that writes some of its tensor arguments: their new values (from the call's
    extra outputs) are written into them."""
    if not written:
        return
    tensors = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    if record:
        record_check(b, func, args, kwargs)
    for i, new in written.items():
        target = _target(b, func, tensors[i])
        _check_leaf(target)
        write(b, target, new)


_HOST_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default}
FOLD_NODES = 64  # the most nodes (and elements) computed to read a constant on the host


def _constant_value(b: Builder, x) -> torch.Tensor | None:
    """x's value when it depends on no input of the trace, neither argument nor captured tensor
    (torch.cov makes its sample count a tensor and checks it on the host): computed from the
    nodes that make it, which only a trace's shapes and Python numbers decide.  None otherwise."""
    if not isinstance(x, Tracer) or x.numel() > FOLD_NODES:
        return None
    producers = {v: n for n in b.nodes for v in n.outs}
    needed: set[int] = set()
    todo = [x._var]
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.prim.random:  # an input of the trace, or a draw the kernels make
            return None
        if id(node) not in needed:
            needed.add(id(node))
            todo.extend(node.inputs)
            if len(needed) > FOLD_NODES:
                return None
    values: dict[Var, torch.Tensor] = {}
    with _disable_current_modes():  # real tensors, not traced ones
        for node in (n for n in b.nodes if id(n) in needed):
            if node.inputs:
                outs = node.prim.impl(*[values[v] for v in node.inputs], **node.params)
            else:
                outs = node.prim.impl(device=torch.device("cpu"), **node.params)  # read on the host anyway
            values.update(zip(node.outs, outs if node.prim.multiple_results else (outs,)))
    return values[x._var]


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


_AUTOGRAD_ENTRIES = {torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward}


class _FunctionWatch(TorchFunctionMode):
    """Active while a function is traced; sees every torch call the user writes, traced values or not.

    Notes that the function runs torch's autograd engine itself (torch.autograd.grad, .backward()),
    typically over a graph of captured tensors.  What the trace records then depends on that graph,
    which no guard sees (an identity backward records nothing at all), so such a trace is never
    replayed.  Refuses, in torch.func's words, what torch.func refuses at this level: autograd's own
    API inside a transform, and random calls vmap has no rule for (before they reach ATen)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _AUTOGRAD_ENTRIES:
            _local.autograd_read = True
        elif func is torch.Tensor.requires_grad_ and any(t.api in ("vmap", *GRAD_APIS) for t in trace_stack()):
            what = "requires_grad_() (or perhaps using torch.autograd.functional.* APIs)"
            raise RuntimeError(_REFUSED.format(what, "requires_grad_()"))
        elif func is torch.Tensor.retain_grad and any(t.api in ("grad", "vjp") for t in trace_stack()):
            raise RuntimeError(_REFUSED.format("retain_grad()", "retain_grad()"))
        elif func in _RANDOM_FUNCTIONS and any(t.api == "vmap" for t in trace_stack()):
            if func in _RANDOM_FACTORIES and (kwargs or {}).get("out") is not None:  # reaches ATen as resize_, fill
                raise RuntimeError(_RANDOM_OUT)
            if func in _RRELUS:  # even in eval mode
                raise RuntimeError("vmap: we do not yet support aten::rrelu. Please file an issue")
        return func(*args, **(kwargs or {}))


_RANDOM_OUT = (
    "vmap: We do not support calling out variants of random operations inside of vmap. Please use non-out variants "
    "as a workaround"
)
# The out= random overloads torch.func's vmap refuses (with _RANDOM_OUT) when no operand is batched.
_RANDOM_OUTS = {
    getattr(getattr(aten, name), overload)
    for name, overloads in {
        "bernoulli": ["out"],
        "multinomial": ["out"],
        "normal": ["float_Tensor_out", "Tensor_Tensor_out", "float_float_out"],
        "rrelu_with_noise": ["out"],
    }.items()
    for overload in overloads
}
_RANDOM_FACTORIES = {torch.rand, torch.randn, torch.randint, torch.randperm}
_RANDOM_FUNCTIONS = _RANDOM_FACTORIES | _RRELUS


# torch.func's words for autograd's own API used inside a transform (under vmap or a gradient
# transform for requires_grad_, under grad and vjp for retain_grad).
_REFUSED = (
    "You are attempting to call Tensor.{0} inside of a function being transformed by a functorch transform. This is "
    "unsupported, please attempt to use the functorch transforms (e.g. grad, vjp, jacrev, jacfwd, hessian) or call "
    "{1} outside of a function being transformed instead."
)


class _TracingMode(TorchDispatchMode):
    """Active while a function is traced: catches the operators that take no tracer (factories,
    seeded random draws, in-place ops on captured tensors), which would otherwise never reach one.

    Nested traces stack one mode each; the innermost trace's mode does the work, and an op it runs
    passes through the modes of the traces around it untouched (handled twice, an in-place op on a
    tensor computed from captured ones would be applied twice to its shadow)."""

    def __init__(self, builder: TraceBuilder):
        super().__init__()
        self.builder = builder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if trace_stack()[-1] is not self.builder:  # an inner trace's mode has handled this op
            return func(*args, **kwargs)
        _refuse_custom_function()
        # An op with a lowering of its own is lowered as usual, though tagged random (the fused
        # attention ops are, for their dropout).
        random = torch.Tag.nondeterministic_seeded in func.tags and lowering_for(func) is None
        factory = func.overloadpacket in FACTORIES and kwargs.get("layout") in (None, torch.strided)
        leaves = pytree.tree_leaves((args, kwargs))
        if _on_meta(leaves, kwargs):  # shapes only: tritonfunc's own work, under an enclosing trace's mode
            return func(*args, **kwargs)
        if random and _out_variant(func):
            if func in _RANDOM_OUTS and any(t.api == "vmap" for t in trace_stack()):
                if not any(isinstance(x, Tracer) for x in pytree.tree_leaves(args)):  # unbatched operands
                    raise RuntimeError(_RANDOM_OUT)
            raise NotImplementedError(f"tritonfunc: {func} writes into its out= argument, which is not supported")
        if random or factory:
            return self._draw_or_make(func, args, kwargs, random, leaves)
        if any(isinstance(x, Tracer) for x in leaves):
            return func(*args, **kwargs)
        b = trace_stack()[-1]
        if b.captured:
            for x in leaves:
                if isinstance(x, torch.Tensor) and id(x) not in b.captured:
                    _check_not_stale(b, x)
        if any(isinstance(x, torch.Tensor) and id(x) in b.captured for x in leaves):
            # a captured tensor written earlier in this trace: its reads see the new value
            args, kwargs = pytree.tree_map(
                lambda x: b.captured.get(id(x), x) if isinstance(x, torch.Tensor) else x, (args, kwargs)
            )
            return func(*args, **kwargs)
        if _writes_self(func) and isinstance(args[0], torch.Tensor) and not _is_local(args[0]):
            return _inplace(b, func, args, kwargs)  # a captured tensor: a write-back, or an error
        out = func(*args, **kwargs)
        # A value computed here from captured tensors depends on their contents: it is traced too
        # (its shadow), so a graph that uses it recomputes it from them at every call.
        derived = func not in _LIFTS and any(isinstance(x, torch.Tensor) and not _is_made(x) for x in leaves)
        if func in _DATA_DEPENDENT:
            if derived:  # the trace now depends on a captured tensor's contents
                _local.host_read = True
            return out
        # A tensor made here is the function's own to mutate (a view only if its base is).
        fresh = func in _LIFTS or not getattr(func, "is_view", False) or _is_local(args[0])
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                if fresh:
                    b.local[id(t)] = t
                if not derived:
                    _made()[id(t)] = t
        if derived:
            _shadow(b, func, args, kwargs, out)
        return out

    def _draw_or_make(self, func, args, kwargs, random, leaves):
        factory = not random
        b = innermost_builder(leaves) or trace_stack()[-1]
        target = None
        if random and _writes_self(func):  # an in-place fill: x.normal_(), dropout's noise
            target = _target(b, func, args[0])
            _check_leaf(target)
            args = (target, *args[1:])
        if random:
            args, kwargs = _generator_as_keyword(func, args, kwargs)
            check_params(func, args, kwargs)
            tensors = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
            if tensors and not in_dropout():  # vmap's randomness rules (dropout's noise is a draw of its own)
                record_check(b, func, args, kwargs)
        meta_kwargs = {k: (None if k == "generator" else v) for k, v in kwargs.items()}
        if not any(isinstance(x, torch.Tensor) for x in pytree.tree_leaves(args)):  # a factory: shape only
            meta_kwargs["device"] = "meta"
        out = fallback.meta_result(func, pytree.tree_map(_to_meta, args), meta_kwargs)
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                _check_real_dtype(t, f"the result of {func}")
        vargs, vkwargs = _as_vars(b, (args, {k: v for k, v in kwargs.items() if k != "generator"}))
        vkwargs["generator"] = kwargs.get("generator")
        with b:
            if factory:
                result = lower_factory(b, func, out, vargs, vkwargs)
            else:
                result, written = lower_random(b, func, out, vargs, vkwargs)
                _write_results(b, func, args, kwargs, written, record=False)
        if target is not None:
            write(b, target, result)
            return target
        return _mark_like(b, func, args, _as_tracers(b, result))


def _on_meta(leaves, kwargs) -> bool:
    device = kwargs.get("device")
    if device is not None and torch.device(device).type == "meta":
        return True
    return any(isinstance(x, torch.Tensor) and not isinstance(x, Tracer) and x.is_meta for x in leaves)


_LIFTS = {aten.lift_fresh.default, aten.lift_fresh_copy.default}  # torch.tensor(data) inside the function


def _generator_as_keyword(func, args, kwargs):
    names = [a.name for a in func._schema.arguments]
    if "generator" in names and len(args) > names.index("generator"):
        i = names.index("generator")
        return args[:i] + args[i + 1 :], {**kwargs, "generator": args[i]}
    return args, kwargs


def _is_local(x) -> bool:
    return isinstance(x, torch.Tensor) and any(id(x) in t.local and t.local[id(x)] is x for t in trace_stack())


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
    Seeds stay seeds of the enclosing graph (one per random op, however often it is inlined), and
    the in-place records go along for vmap's checks.
    """
    env: dict[Var, Var] = {}
    for v, t in zip(graph.inputs, inputs):
        if isinstance(t, Seed):
            env[v] = b.seed(t)
        else:
            env[v] = _as_vars(b, t)
    for n in graph.nodes:
        outs = b.emit(n.prim, [env[v] for v in n.inputs], no_grad=n.no_grad, no_fwd_grad=n.no_fwd_grad, **n.params)
        env.update(zip(n.outs, outs if n.prim.multiple_results else (outs,)))
    b.checks.extend(op.renamed(env) for op in graph.checks)
    return [Tracer(b, env[v]) for v in graph.outputs]


# ---------------------------------------------------------------------------------------------
# The entry point.


TENSOR = object()  # marks the output leaves that are graph outputs


@dataclass
class Write:
    """A tensor the traced function changed in place: an input (by position among the tensor
    leaves) or a captured tensor.  When `changed`, its new value is one of the trailing graph
    outputs; `metadata` lists the in-place view ops (x.t_()) to replay on it."""

    target: int | torch.Tensor
    changed: bool
    metadata: tuple[ViewStep, ...] = ()


@dataclass
class Traced:
    """A traced function: the graph (outputs: the function's tensor outputs, then the new values
    of the tensors it wrote), the output's structure and non-tensor leaves, and the writes."""

    graph: Graph
    out_spec: Any
    statics: list  # per output leaf: TENSOR (a graph output) or the leaf itself
    writes: list[Write]
    returns_input: dict[int, int]  # output tensor index -> input position, for `return x.add_(1)`
    # ids of the real tensors the function made from Python values while traced (torch.tensor(...)):
    # constants that depend on nothing but the guarded values the function read.
    made: frozenset[int] = frozenset()
    # The function read a value computed from captured tensors on the host (.item(), bool()): what
    # it traced depends on their contents.
    host_read: bool = False
    # output tensor index -> (input position, view chain): outputs that are views of an input, as
    # torch returns them (`vmap(f)(x)` returning x's own rows, `x.t()`)
    returns_view: dict = field(default_factory=dict)
    # torch's autograd engine ran inside the function (torch.autograd.grad over captured tensors'
    # graph): what it traced depends on an autograd graph that no guard sees.
    autograd_read: bool = False

    @property
    def num_outputs(self) -> int:
        """The function's own tensor outputs (before the written values)."""
        return len(self.graph.outputs) - sum(w.changed for w in self.writes)


def trace(
    fn: Callable,
    args: tuple,
    kwargs: dict | None = None,
    *,
    device=None,
    api: str | None = None,
    diff=None,
    batch_size: int | None = None,
) -> Traced:
    """Traces fn(*args, **kwargs).  Tensor leaves of args become graph inputs, in flattened order;
    `diff` marks the ones being differentiated (in-place ops on them are refused, as torch does
    for leaves that require grad); `batch_size` is a vmap's."""
    kwargs = kwargs or {}
    leaves, in_spec = pytree.tree_flatten((args, kwargs))
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    diff = list(diff) if diff is not None else [False] * len(tensors)
    if device is None:
        device = tensors[0].device if tensors else torch.device("cpu")
    stack = trace_stack()
    if not stack:
        _local.made, _local.host_read, _local.autograd_read = {}, False, False
    b = TraceBuilder((stack[-1].level + 1) if stack else 0, torch.device(device), api=api, batch_size=batch_size)
    wrapped, inputs = [], []
    for x in leaves:
        if isinstance(x, torch.Tensor):
            if api != "call":  # a whole call's transform checks its inputs in its own words
                _check_real_dtype(x, "an input")
            v = Var(x.shape, x.dtype)
            b.inputs.append(v)
            t = Tracer(b, v, _Storage(v, origin=len(inputs), diff=diff[len(inputs)]))
            inputs.append(t)
            wrapped.append(t)
        else:
            wrapped.append(x)
    targs, tkwargs = pytree.tree_unflatten(wrapped, in_spec)
    stack.append(b)
    try:
        # A no_grad (or disabled forward AD) around the transform does not reach inside it.
        with (
            torch.enable_grad(),
            torch.autograd.forward_ad._set_fwd_grad_enabled(True),
            _TracingMode(b),
            _FunctionWatch(),
        ):
            out = fn(*targs, **tkwargs)
    finally:
        stack.pop()
    out_leaves, out_spec = pytree.tree_flatten(out)
    outputs, statics, returns_input, returns_view = [], [], {}, {}
    for x in out_leaves:
        if isinstance(x, Tracer) and x._builder is b:
            for i, t in enumerate(inputs):
                if x is t:
                    returns_input[len(outputs)] = i
            origin = x._storage.origin
            if isinstance(origin, int) and x._chain and x._lost is None and not inputs[origin]._chain:
                returns_view[len(outputs)] = (origin, x._chain)
            outputs.append(x._var)
            statics.append(TENSOR)
        elif isinstance(x, torch.Tensor):
            outputs.append(_as_vars(b, x))
            statics.append(TENSOR)
        else:
            statics.append(x)
    writes = []
    for i, t in enumerate(inputs):
        changed = t._storage.version > 0
        if changed or t._chain:
            writes.append(Write(i, changed, t._chain))
    # one write-back per storage (the views of an enclosing trace's tensor share its stand-in's)
    written = {id(t._storage): t for t in b.captured.values() if t._storage.origin is not None}
    captured = [t for t in written.values() if t._storage.version > 0]
    writes += [Write(t._storage.origin, True) for t in captured]
    outputs += [t._storage.var for t in inputs if t._storage.version > 0]
    outputs += [t._storage.var for t in captured]
    graph = b.graph(outputs)
    for n in graph.nodes:
        if n.prim.strategy == P.OPAQUE:
            fallback.warn_not_fused(n.prim.name)
    made = frozenset(_made()) if not stack else frozenset()
    host_read = getattr(_local, "host_read", False) if not stack else False
    autograd_read = getattr(_local, "autograd_read", False) if not stack else False
    if not stack:
        _local.made = {}  # hold no tensor past the trace
    return Traced(graph, out_spec, statics, writes, returns_input, made, host_read, returns_view, autograd_read)


_TRACE = trace.__code__
