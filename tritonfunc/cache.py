"""The call path: a transform's call is traced once, guarded, and replayed.

A call of a tritonfunc transform on real tensors (`vmap(grad(f))(x)`, `jacrev(f)(x)`, `jit(f)(x)`)
is traced *as a whole*: the transform's own body runs on tracers, the transforms inside it inline
into the same trace, so the whole composition is one graph and one Program.  The result is cached
under a key of everything that decides that Program:

  - the transform stack and its parameters down to the user's function code (`guards.recipe_key`:
    `vmap(grad(f))` rebuilt at every loop iteration still hits, since wrappers are keyed by what
    they are, not by identity);
  - the arguments' pytree structure; each tensor's shape, dtype, strides, device and
    requires_grad; the value of each argument that is a number, string, bool, None, dtype or
    device (other objects are guarded like captured values);
  - grad mode, forward-AD mode, the default dtype, autocast, torch's TF32 setting for matmuls, and
    the backend.

Everything the function reads besides its arguments is guarded (guards.py): values compared at each
call, captured tensors re-read at each call.  A call whose key matches and whose guards pass does a
dictionary lookup, the guard checks, reads the captured tensors, draws its random seeds, and runs
the Program: no tracing.  A guard that fails traces again (the new variant is kept beside the old,
up to VARIANTS per key); a function whose reads cannot be guarded is traced at every call, never
stale (`explain` says why).  Entries are bounded (least recently used first out) and hold no user
object but code objects and classes: captured tensors are found anew at each call.

Set TRITONFUNC_CACHE=0, or call `set_cache(enabled=False)`, to trace at every call.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from dataclasses import dataclass, field

import torch
from torch.utils import _pytree as pytree

from . import autograd, runtime
from . import guards as G
from .graph import Seed, bind_consts
from .kernels.contraction import matmul_allows_tf32
from .trace import Traced, Tracer, replay_view, trace, trace_stack

MAX_ENTRIES = 256  # cached calls kept, least recently used dropped first
VARIANTS = 8  # traced variants kept per key (a guard that fails adds one)

AUTOGRAD_READ = "it runs torch's autograd over tensors it captured (torch.autograd.grad, .backward())"

# Argument leaves hashed by value in the key (anything else is guarded as a root).
KEY_SCALARS = (bool, int, float, str, type(None), torch.dtype, torch.device)


@dataclass
class Settings:
    enabled: bool = os.environ.get("TRITONFUNC_CACHE", "1") != "0"
    max_entries: int = MAX_ENTRIES
    # Replay each cached Program on CUDA as one CUDA graph (runtime.GraphReplay): opt-in, since it
    # copies the inputs in and the outputs out.
    cuda_graphs: bool = os.environ.get("TRITONFUNC_CUDA_GRAPHS") == "1"


SETTINGS = Settings()


@dataclass
class Stats:
    hits: int = 0
    misses: int = 0  # traced: a new key
    retraces: int = 0  # traced: a known key whose guards failed
    unguardable: int = 0  # traced: a function whose reads cannot be guarded


STATS = Stats()


@dataclass(eq=False)
class Entry:
    """One traced call: its Traced (graph, outputs, writes), its guards, and what to run."""

    traced: Traced
    guards: G.Guards | None  # None: unguardable, never replayed
    reason: str | None  # why it is unguardable
    consts: list  # per graph constant: ("source", i) re-read via guard i, ("made", tensor), ("seed", Seed)
    writes: list  # per write: ("input", position) or ("const", position)
    executables: dict = field(default_factory=dict)  # backend -> runtime.Executable
    memo: dict = field(default_factory=dict)  # what a caller derives from the trace (cache.traced)

    def __post_init__(self):
        t = self.traced
        self.plain = not (t.writes or t.returns_input or t.returns_view)
        self.single = self.plain and t.out_spec.is_leaf() and t.statics == [TENSOR]


_entries: collections.OrderedDict[tuple, list[Entry]] = collections.OrderedDict()
_lock = threading.Lock()


def set_cache(enabled: bool | None = None, max_entries: int | None = None, cuda_graphs: bool | None = None) -> None:
    """Turns the trace cache on or off, bounds the number of cached calls, or makes cached calls on
    CUDA replay CUDA graphs."""
    if enabled is not None:
        SETTINGS.enabled = enabled
    if cuda_graphs is not None:
        SETTINGS.cuda_graphs = cuda_graphs
    if max_entries is not None:
        SETTINGS.max_entries = max_entries
        with _lock:
            _evict()


def cache_info() -> dict:
    """What the caches hold and how calls went: hits, misses, retraces, unguardable traces."""
    with _lock:
        entries = sum(len(v) for v in _entries.values())
    return {
        "enabled": SETTINGS.enabled,
        "entries": entries,
        "max_entries": SETTINGS.max_entries,
        "hits": STATS.hits,
        "misses": STATS.misses,
        "retraces": STATS.retraces,
        "unguardable": STATS.unguardable,
        "loaded_kernels": len(runtime._MODULES),
        "max_loaded_kernels": runtime.MAX_LOADED_KERNELS,
    }


def clear_caches() -> None:
    """Drops every cached call, executable and loaded kernel (sources on disk stay)."""
    with _lock:
        _entries.clear()
    runtime.clear()
    STATS.hits = STATS.misses = STATS.retraces = STATS.unguardable = 0


def _evict() -> None:
    while sum(len(v) for v in _entries.values()) > SETTINGS.max_entries and _entries:
        _entries.popitem(last=False)


# ---------------------------------------------------------------------------------------------
# The key.


class _Uncached(Exception):
    pass


def _key(wrapper, leaves: list, spec, device: torch.device, backend: str) -> tuple:
    parts = []
    for x in leaves:
        if isinstance(x, torch.Tensor):
            # tracers of an enclosing torch.func transform
            if isinstance(x, Tracer) or torch._C._functorch.is_functorch_wrapped_tensor(x):
                raise _Uncached
            parts.append((x.shape, x.dtype, x.stride(), x.device, x.requires_grad))
        elif type(x) in KEY_SCALARS:
            parts.append((type(x), x))
        else:
            parts.append(type(x))
    return (
        _memo(wrapper, "__tritonfunc_key__", G.recipe_key),
        spec,
        tuple(parts),
        torch.is_grad_enabled(),
        torch._C._is_fwd_grad_enabled(),
        torch.get_default_dtype(),
        torch.is_autocast_enabled(),
        matmul_allows_tf32(),  # float32 contractions follow it
        backend,
    )


def _flatten(tree, leaves: list):
    """The common arguments (tensors, numbers, tuples and lists of them) flattened into `leaves`,
    with a hashable structure, faster than pytree; None for anything else."""
    kind = type(tree)
    if kind is torch.Tensor or kind in KEY_SCALARS:
        leaves.append(tree)
        return kind
    if kind is tuple or kind is list:
        children = []
        for x in tree:
            spec = _flatten(x, leaves)
            if spec is None:
                return None
            children.append(spec)
        return (kind, *children)
    return None


def _roots(wrapper, leaves: list) -> list:
    """The user's functions, then the arguments that are neither tensors nor key scalars."""
    objects = [x for x in leaves if not isinstance(x, torch.Tensor) and type(x) not in KEY_SCALARS]
    return _memo(wrapper, "__tritonfunc_roots__", G.roots_of) + objects


def _memo(wrapper, attribute: str, compute):
    """compute(wrapper), kept on tritonfunc's own wrappers (what they wrap never changes)."""
    value = getattr(wrapper, attribute, None)
    if value is None:
        value = compute(wrapper)
        if hasattr(wrapper, G.RECIPE):
            setattr(wrapper, attribute, value)
    return value


# ---------------------------------------------------------------------------------------------
# A call.


def call(wrapper, impl, args: tuple, kwargs: dict):
    """`impl(*args, **kwargs)`, the body of the transform `wrapper`, through the cache."""
    if trace_stack():  # nested in another transform's trace: it inlines there
        return impl(*args, **kwargs)
    found = _lookup(wrapper, impl, args, kwargs, {"api": "call"})
    if found is None:
        return _under_torch_func(impl, args, kwargs)
    entry, tensors, values, device, backend = found
    return _run(entry, tensors, values, device, backend)


def _under_torch_func(impl, args: tuple, kwargs: dict):
    """A call on tensors of an enclosing torch.func transform (grad, vmap, jvp of a tritonfunc
    function): traced on their shapes, then run as one autograd.Function whose derivative and
    batching rules are tritonfunc's own (autograd.py), which torch.func applies.  Traced at every
    call (such calls come from torch.func's own loops)."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    if any(isinstance(x, Tracer) for x in tensors) or not tensors:
        return impl(*args, **kwargs)
    device = tensors[0].device
    shapes = [torch.empty(x.shape, dtype=x.dtype, device="meta") if isinstance(x, torch.Tensor) else x for x in leaves]
    placeholder_args, placeholder_kwargs = pytree.tree_unflatten(shapes, spec)
    with torch._C._DisableFuncTorch():  # the trace is ours alone: torch.func must not wrap its tracers
        t = trace(impl, placeholder_args, placeholder_kwargs, device=device, api="call")
    if t.writes:
        raise NotImplementedError(
            "tritonfunc: a function that writes tensors in place cannot run under a torch.func transform"
        )
    inputs = tensors + bind_consts(list(t.graph.const_values), device)
    results = iter(autograd.run(autograd.Call(t.graph), inputs))
    return pytree.tree_unflatten([next(results) if s is TENSOR else s for s in t.statics], t.out_spec)


def traced(holder, fn, args: tuple, kwargs: dict, **trace_kwargs) -> tuple[Traced, list, dict]:
    """`trace(fn, args, kwargs, **trace_kwargs)` through the cache, for the transforms that return
    functions (vjp's vjp_fn, linearize's jvp_fn) and so cannot be traced as a whole: the Traced,
    this call's constants (seeds still to draw), and a memo kept with the entry for what the caller
    derives from the trace (its backward graph, its output structure)."""
    found = None if trace_stack() else _lookup(holder, fn, args, kwargs, trace_kwargs)
    if found is None:
        tensors = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
        t = trace(fn, args, kwargs, device=tensors[0].device if tensors else None, **trace_kwargs)
        return t, list(t.graph.const_values), {}
    entry, tensors, values, device, backend = found
    return entry.traced, _consts(entry, values), entry.memo


def _lookup(wrapper, impl, args, kwargs, trace_kwargs):
    """The cached entry for this call (tracing one if needed): (entry, tensors, the current source
    values or None, device, backend); None where the call must not be cached at all."""
    leaves = []
    spec = None if kwargs else _flatten(args, leaves)
    if spec is None:
        leaves, spec = pytree.tree_flatten((args, kwargs))
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    backend = runtime.backend_for(device)
    try:
        key = _key(wrapper, leaves, spec, device, backend) + tuple(sorted(trace_kwargs.items(), key=str))
    except (_Uncached, TypeError):  # tracers of an enclosing torch.func transform; unhashable trace options
        return None
    roots = _roots(wrapper, leaves)
    if not SETTINGS.enabled:
        return _build(impl, args, kwargs, device, roots, trace_kwargs), tensors, None, device, backend
    with _lock:
        variants = _entries.get(key)
        if variants is not None:
            _entries.move_to_end(key)
            variants = list(variants)
    for entry in variants or ():
        values = entry.guards.resolve(roots) if entry.guards is not None else None
        if values is not None:
            STATS.hits += 1
            return entry, tensors, values, device, backend
    entry = _build(impl, args, kwargs, device, roots, trace_kwargs)
    if variants:
        STATS.retraces += 1
    else:
        STATS.misses += 1
    if entry.guards is None:
        STATS.unguardable += 1
        values = None
    else:
        values = entry.guards.resolve(roots)
        _forget_captured(entry)
        with _lock:
            _entries.setdefault(key, []).insert(0, entry)
            del _entries[key][VARIANTS:]
            _entries.move_to_end(key)
            _evict()
    return entry, tensors, values, device, backend


# A random op given a torch.Generator draws its seed from that object; a replay would draw from the
# object the first call's trace met, though the function may make a new one at every call (a
# generator seeded inside the function gives the same draws each call in torch, not here).
GENERATOR_READ = "it draws from a torch.Generator object, which a replay would take from the first call"
HOST_READ = "it reads a value computed from captured tensors on the host (.item(), bool())"


def _never_replayed(traced: Traced) -> str | None:
    """Why a trace is traced again at every call whatever its guards would say, or None."""
    if traced.host_read:
        return HOST_READ
    if traced.autograd_read:
        return AUTOGRAD_READ
    if any(isinstance(c, Seed) and c.generator is not None for c in traced.graph.const_values):
        return GENERATOR_READ
    return None


def _build(impl, args, kwargs, device, roots, trace_kwargs) -> Entry:
    traced = trace(impl, args, kwargs, device=device, **trace_kwargs)
    graph = traced.graph
    tensor_consts = [c for c in graph.const_values if not isinstance(c, Seed)]
    try:
        reason = _never_replayed(traced)
        if reason is not None:
            raise G.Unguardable(reason)
        guards = G.discover(roots, tensor_consts, set(traced.made))
        reason = None
    except G.Unguardable as e:
        guards, reason = None, str(e)
    consts, ordinal = [], 0
    for c in graph.const_values:
        if isinstance(c, Seed):
            consts.append(("seed", c))
            continue
        sourced = guards is not None and guards.sources[ordinal] >= 0
        consts.append(("source", ordinal) if sourced else ("made", c))
        ordinal += 1
    writes = []
    for w in traced.writes:
        if isinstance(w.target, int):
            writes.append(("input", w.target))
        else:  # a captured tensor written back: found anew at each call, as the constant it is
            position = next((i for i, c in enumerate(graph.const_values) if c is w.target), None)
            if position is None and guards is not None:
                guards, reason = None, "it writes a captured tensor it never reads"
            writes.append(("const", position))
    return Entry(traced, guards, reason, consts, writes)


_CAPTURED = object()  # a write's target in a cached entry: the captured tensor is found at each call


def _forget_captured(entry: Entry) -> None:
    """A cached entry keeps no captured tensor alive: the graph's constants it re-reads become
    meta placeholders (their shapes and dtypes), and so do the targets of its write-backs."""
    graph = entry.traced.graph
    graph.const_values = [
        torch.empty(c.shape, dtype=c.dtype, device="meta") if kind == "source" else c
        for c, (kind, _) in zip(graph.const_values, entry.consts)
    ]
    entry.traced.writes = [
        w if isinstance(w.target, int) else dataclasses.replace(w, target=_CAPTURED) for w in entry.traced.writes
    ]


def _execute(entry: Entry, inputs: list, backend: str, replay: bool) -> list:
    """The entry's Program on plain tensors (a CUDA graph replay of it, with `replay` on CUDA)."""
    graph = entry.traced.graph
    if backend == "torch":
        return runtime.evaluate(graph, inputs)
    replay = replay and backend == "triton"
    executable = entry.executables.get("cuda_graph" if replay else backend)
    inputs = [t.detach() for t in inputs]
    if executable is None:
        executable = entry.executables.get(backend) or runtime.build(graph, inputs, interpret=backend == "interpreter")
        entry.executables[backend] = executable
        if replay:
            executable = entry.executables["cuda_graph"] = runtime.GraphReplay(executable, inputs)
    return executable(inputs)


def _consts(entry: Entry, values: list | None) -> list:
    """This call's constants: sources re-read, made tensors kept, seeds to draw."""
    if values is None:  # an entry traced for this call alone: the constants it found
        return list(entry.traced.graph.const_values)
    return [values[what] if kind == "source" else what for kind, what in entry.consts]


def report(fn, args: tuple, kwargs: dict, traced: Traced) -> list[str]:
    """What a cached call of `fn` would guard, or why it is traced at every call (for explain)."""
    leaves = pytree.tree_leaves((args, kwargs))
    tensor_consts = [c for c in traced.graph.const_values if not isinstance(c, Seed)]
    if not SETTINGS.enabled:
        return ["the trace cache is off (TRITONFUNC_CACHE=0 or set_cache(enabled=False)): traced at every call"]
    reason = _never_replayed(traced)
    if reason is not None:
        return [f"traced at every call: {reason}"]
    try:
        guards = G.discover(_roots(fn, leaves), tensor_consts, set(traced.made))
    except G.Unguardable as e:
        return [f"traced at every call: {e}"]
    lines = [f"traced once per key, then replayed while {len(guards.guards)} guard(s) hold:"]
    return lines + [f"  {line}" for line in guards.describe()]


def _run(entry: Entry, tensors: list, values: list | None, device: torch.device, backend: str):
    """Runs the entry on this call's tensors; `values`: the current source tensors (None when the
    entry is unguardable and runs once, on the constants its trace found)."""
    traced = entry.traced
    consts = _consts(entry, values)
    inputs = list(tensors) + bind_consts(consts, device)
    if autograd.needs_autograd(inputs):  # recorded: its backward is tritonfunc's own VJP Program
        if traced.writes:
            raise NotImplementedError(
                "tritonfunc: a function that writes its inputs or captured tensors in place cannot be recorded by "
                "autograd (an input or a captured tensor requires grad); use out-of-place operations"
            )
        call = entry.executables.get("autograd")
        if call is None:
            call = entry.executables["autograd"] = autograd.Call(
                traced.graph, lambda ins: _execute(entry, ins, backend, replay=False)
            )
        results = autograd.run(call, inputs)
    else:
        results = _execute(entry, inputs, backend, replay=values is not None and SETTINGS.cuda_graphs)
    if entry.plain:  # no write-backs or aliasing: the outputs as they are
        if entry.single:
            return results[0]
        outs = iter(results)
        return pytree.tree_unflatten([next(outs) if s is TENSOR else s for s in traced.statics], traced.out_spec)
    n = traced.num_outputs
    from .api import _alias_inputs, _write_back  # the write-back rules live with the transforms

    if traced.writes:
        targets = [tensors[what] if kind == "input" else consts[what] for kind, what in entry.writes]
        _write_back(traced, tensors, results[n:], targets=targets)
    outs = _alias_inputs(traced, results[:n], tensors)
    for k, (position, chain) in traced.returns_view.items():
        try:
            outs[k] = replay_view(tensors[position], chain)
        except RuntimeError:  # a reshape the trace saw as a view, which these strides do not allow: a copy
            pass
    outs = iter(outs)
    return pytree.tree_unflatten([next(outs) if s is TENSOR else s for s in traced.statics], traced.out_spec)


from .trace import TENSOR  # noqa: E402
