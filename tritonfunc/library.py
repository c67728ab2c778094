"""tritonfunc under torch.compile: a transform's call as one custom op, `tritonfunc::call`.

Dynamo cannot trace tritonfunc's tracing machinery, so under torch.compile a transform's wrapper
hands its call to a function Dynamo leaves in the graph as it is (`allow_in_graph`).  When the
graph runs eagerly (the "eager" backend), that function is the ordinary cached call.  When
AOTAutograd traces it with fake tensors (the "aot_eager" and "inductor" backends), it traces the
transform from the tensors' shapes and records one op, `tritonfunc::call(key, inputs)`, whose fake
kernel gives the outputs' shapes and whose real kernel runs the graph's Program; its autograd
formula is the graph's VJP, recorded as another `tritonfunc::call`.  The key names the graph in a
registry kept for the process (compiled code refers to it).

make_fx (and torch's other graph tracers: a fake tensor mode, functionalization's mode) records a
transform's call, and a vjp_fn's or jvp_fn's run, the same way: one `tritonfunc::call` op.

What it cannot do (each raises an error that says so): captured tensors (pass them as arguments
under torch.compile), random draws and in-place writes inside the compiled call.
"""

from __future__ import annotations

import itertools
import threading
import weakref

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import _disable_current_modes

from . import autograd
from .graph import Graph, Seed
from .trace import TENSOR, trace

_CALLS: dict[str, tuple[autograd.Call, list, torch.device]] = {}  # key -> (graph, output avals, device)
_keys = itertools.count()
_lock = threading.Lock()


def _register(graph: Graph, device: torch.device) -> str:
    with _lock:
        key = f"g{next(_keys)}"
        _CALLS[key] = (autograd.Call(graph), [(v.shape, v.dtype) for v in graph.outputs], device)
    return key


@torch.library.custom_op("tritonfunc::call", mutates_args=())
def call_op(key: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Runs the registered graph `key` on inputs (a fresh tensor per output)."""
    call, _, _ = _CALLS[key]
    outs = call.execute([t.contiguous() if not t.is_contiguous() else t for t in inputs])
    ids = {id(t) for t in inputs}
    return [t.clone() if id(t) in ids else t for t in outs]  # a custom op's outputs alias nothing


@call_op.register_fake
def _(key: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    _, avals, device = _CALLS[key]
    return [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in avals]


def _setup_context(ctx, inputs, output):
    key, tensors = inputs
    ctx.key = key
    ctx.save_for_backward(*tensors)


def _backward(ctx, cts):
    tensors = ctx.saved_tensors
    call, avals, device = _CALLS[ctx.key]
    wrt = tuple(t.is_floating_point() for t in tensors)
    seeded = tuple(ct is not None and dtype.is_floating_point for ct, (_, dtype) in zip(cts, avals))
    if not any(wrt) or not any(seeded):
        return None, [None] * len(tensors)
    back = call.backward(wrt, seeded)
    key = getattr(back, "library_key", None)
    if key is None:
        key = back.library_key = _register(back.graph, device)
    grads = iter(call_op(key, list(tensors) + [ct for ct, s in zip(cts, seeded) if s]))
    return None, [next(grads) if w else None for w in wrt]


call_op.register_autograd(_backward, setup_context=_setup_context)


def _symbolic(t) -> bool:
    """A tensor of a torch.compile trace (fake, functional, proxied), not a real one."""
    return isinstance(t, torch.Tensor) and type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter)


def graph_tracing() -> bool:
    """Whether a tracer of torch's own is recording the ops run now (make_fx's proxy mode, a fake
    tensor mode, functionalization's mode): a transform's call is then one `tritonfunc::call` op,
    which it records and can run again, rather than the kernels' internals."""
    if not torch._C._len_torch_dispatch_stack():  # the common case, at every call: no mode at all
        return False
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import FunctionalTensorMode
    from torch.fx.experimental.proxy_tensor import ProxyTorchDispatchMode

    modes = torch.utils._python_dispatch._get_current_dispatch_mode_stack()
    return any(isinstance(m, (ProxyTorchDispatchMode, FakeTensorMode, FunctionalTensorMode)) for m in modes)


def record(graph: Graph, inputs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """A graph run (vjp_fn's, linearize's jvp_fn's) as one `tritonfunc::call` op, under graph_tracing."""
    return list(call_op(_register(graph, device), inputs))


# The transforms' wrappers by token, held weakly: a wrapper built at every step of a loop costs one
# counter step here (marking a new function for Dynamo at each construction cost ~55 us and grew
# Dynamo's tables without bound).
_wrappers: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_tokens = itertools.count()


def enroll(wrapper, impl) -> int:
    """A token for `wrapper` (whose body is `impl`), for compiled_entry."""
    token = next(_tokens)
    wrapper._tritonfunc_impl = impl
    _wrappers[token] = wrapper
    return token


@torch.compiler.allow_in_graph
def compiled_entry(token: int, *args):
    """What Dynamo leaves in a compiled graph for a transform's call: the transform by its token (a
    constant of the graph) and the call's arguments."""
    wrapper = _wrappers.get(token)
    if wrapper is None:
        raise RuntimeError("tritonfunc: the transform this compiled function calls no longer exists; keep it alive")
    return compiled_call(wrapper, wrapper._tritonfunc_impl, args)


def compiled_call(wrapper, impl, args: tuple):
    """The call of a transform inside a torch.compile'd function or under make_fx (see the module's
    docstring)."""
    from .cache import call as cached_call

    leaves, spec = pytree.tree_flatten(args)
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    if not any(_symbolic(t) for t in tensors) and not graph_tracing():  # a compiled graph running eagerly
        return cached_call(wrapper, impl, args, {})
    device = tensors[0].device if tensors else torch.device("cpu")
    with _disable_current_modes(), torch._C._DisableFuncTorch():
        shapes = [torch.empty(x.shape, dtype=x.dtype, device="meta") if torch.is_tensor(x) else x for x in leaves]
        traced = trace(impl, pytree.tree_unflatten(shapes, spec), {}, device=device, api="call")
    graph = traced.graph
    if any(isinstance(c, Seed) for c in graph.const_values):
        raise NotImplementedError("tritonfunc: random draws inside a call traced by torch.compile are not supported")
    if graph.const_values:
        c = graph.const_values[0]
        raise NotImplementedError(
            f"tritonfunc: under torch.compile, a tritonfunc function cannot read a captured tensor (a {c.dtype} "
            f"tensor of shape {tuple(c.shape)}): pass it as an argument"
        )
    if traced.writes:
        raise NotImplementedError("tritonfunc: in-place writes inside a call traced by torch.compile are not supported")
    outs = iter(call_op(_register(graph, device), tensors))
    return pytree.tree_unflatten([next(outs) if s is TENSOR else s for s in traced.statics], traced.out_spec)
