"""The public entry points, with torch.func's signatures, semantics and error messages.

Every transform follows the same path: trace the user's function into a graph, rewrite the graph
(transforms.py), then run it (runtime.py), or, when called on tracers inside another transform,
record the rewritten graph into the enclosing trace (trace.inline) so transforms nest.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree as pytree

from . import autograd, cache, fallback, library, runtime
from .graph import Graph, Seed, bind_consts
from .guards import RECIPE
from .schedule import KernelStep
from .trace import TENSOR, Traced, Tracer, inline, innermost_builder, memory_overlaps, trace, trace_stack
from .transforms import RANDOMNESS, jvp_graph, vjp_graph, vmap_graph

# ---------------------------------------------------------------------------------------------
# Running graphs.


def _tensor_leaves(tree) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def _device_of(tensors: list[torch.Tensor]) -> torch.device:
    return tensors[0].device if tensors else torch.device("cpu")


def run_graph(graph: Graph, args: list[torch.Tensor], consts: list | None = None) -> list[torch.Tensor]:
    """Runs `graph` on tensors, or records it into an enclosing trace.  `consts` are the values of
    its constants for this run (default: the graph's own, seeds drawn now)."""
    consts = list(graph.const_values) if consts is None else consts
    b = innermost_builder(list(args) + consts)
    if b is not None:
        return inline(b, graph, list(args) + consts)
    device = _device_of(_tensor_leaves((args, consts)))
    inputs = list(args) + bind_consts(consts, device)
    if trace_stack():  # on captured tensors inside an enclosing trace, which records each torch op
        return runtime.evaluate(graph, inputs)
    if library.graph_tracing():  # make_fx records one op that it can run again
        return library.record(graph, inputs, device)
    if autograd.needs_autograd(inputs):  # vjp's and linearize's runs, recorded as cache.call's are
        return autograd.run(autograd.Call(graph), inputs)
    return runtime.execute(graph, inputs, device)


def _call_consts(const_values: list, tensors: list) -> list:
    """One call's constants, for the graphs derived from one trace that run separately (a forward
    and its vjp_fn): seeds drawn once, so they share their random draws.  Inside an enclosing
    trace they become seed inputs of it (drawn when it runs), held as its tracers: a vjp_fn later
    called inside a deeper transform replays those draws instead of drawing anew."""
    b = innermost_builder(tensors + _tensor_leaves(const_values))
    if b is not None:
        return [Tracer(b, b.seed(c)) if isinstance(c, Seed) else c for c in const_values]
    return bind_consts(const_values, _device_of(_tensor_leaves((tensors, const_values))))


def _outputs_only(graph: Graph, start: int, stop: int | None = None) -> Graph:
    """The same graph keeping outputs[start:stop]; the scheduler drops what they do not need."""
    return Graph(
        graph.inputs, graph.nodes, graph.outputs[start:stop], graph.num_consts, graph.const_values, graph.checks
    )


# ---------------------------------------------------------------------------------------------
# Writing back what the function changed in place.


def _write_back(traced: Traced, inputs: list[torch.Tensor], values: list, replay=None, targets=None) -> None:
    """Copies the new values of the tensors the traced function wrote (`values`, in the order of
    `traced.writes`) into the caller's tensors (`inputs`, the trace's tensor arguments, or the
    captured tensor itself), then replays in-place metadata changes (x.t_()) on them.  Inside an
    enclosing trace the copy is an in-place op of that trace.  `replay(position, op, args, kwargs)`
    replaces the metadata replay (vmap's is per example); `targets`, the tensor each write goes to
    (a cached call finds its captured tensors anew)."""
    _check_unaliased(traced, inputs)
    values = iter(values)
    for k, w in enumerate(traced.writes):
        if targets is not None:
            target = targets[k]
        else:
            target = inputs[w.target] if isinstance(w.target, int) else w.target
        if w.changed:
            _copy_into(target, next(values))
        for step in w.metadata:
            name = step.func.overloadpacket.__name__ + "_"
            op = getattr(getattr(torch.ops.aten, name), step.func._overloadname)
            if replay is not None and isinstance(w.target, int):
                replay(w.target, op, step.args, step.kwargs)
            else:
                op(target, *step.args, **step.kwargs)


def _check_unaliased(traced: Traced, inputs: list[torch.Tensor]) -> None:
    """The trace saw each argument as its own tensor: one written in place must not share memory
    with another (f(x, x)), whose reads would not have seen the write."""
    for w in traced.writes:
        if isinstance(w.target, int):
            if any(j != w.target and memory_overlaps(inputs[w.target], t) for j, t in enumerate(inputs)):
                raise NotImplementedError(
                    "tritonfunc: an argument written in place shares memory with another argument; tritonfunc "
                    "traces them as separate tensors (pass a clone)"
                )


def _copy_into(target: torch.Tensor, value: torch.Tensor) -> None:
    if isinstance(target, Tracer) or isinstance(value, Tracer):
        target.copy_(value)
    else:
        with torch.no_grad():
            target.copy_(value)


def _snapshot(traced: Traced, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The arguments as they were before the call wrote into them, for a later backward or
    tangent run (vjp_fn, linearize's jvp_fn) that recomputes the forward."""
    written = {w.target for w in traced.writes if w.changed and isinstance(w.target, int)}
    return [t.clone() if i in written and not isinstance(t, Tracer) else t for i, t in enumerate(tensors)]


def _snapshot_consts(traced: Traced, consts: list) -> list:
    """The same for the constants: a tensor the function wrote that an enclosing trace made
    (x.clone() of an enclosing transform's value, written inside vjp or linearize) is read by the
    later run with the value it had before the write, as the forward read it."""
    written = {id(w.target) for w in traced.writes if w.changed and isinstance(w.target, torch.Tensor)}
    return [c.clone() if isinstance(c, torch.Tensor) and id(c) in written else c for c in consts]


def _alias_inputs(traced: Traced, outs: list, tensors: list[torch.Tensor]) -> list:
    """`return x.add_(1)` returns x itself, as in torch."""
    outs = list(outs)
    for k, i in traced.returns_input.items():
        if not any(w.metadata for w in traced.writes if w.target == i):
            outs[k] = tensors[i]
    return outs


# ---------------------------------------------------------------------------------------------
# jit and explain: the forward alone.


class _Transform:
    """What a call of a transform is, for the trace cache: its name, parameters and function."""

    def __init__(self, name: str, params: tuple, func: Callable):
        setattr(self, RECIPE, (name, repr(params), func))


def _transform(name: str, params: tuple, func: Callable, impl: Callable) -> Callable:
    """The public wrapper of a transform: `impl` (its body, which works on real tensors and, nested
    in another transform, on tracers) called through the trace cache (cache.py)."""

    def wrapper(*args, **kwargs):
        if not trace_stack() and (torch.compiler.is_compiling() or library.graph_tracing()):  # one op (library.py)
            if kwargs:
                raise NotImplementedError("tritonfunc: under torch.compile, pass a transform's arguments by position")
            return library.compiled_entry(token, *args)
        return cache.call(wrapper, impl, args, kwargs)

    if torch.compiler.is_compiling() and not trace_stack():
        raise NotImplementedError(
            "tritonfunc: create tritonfunc transforms outside the function torch.compile compiles (e.g. "
            "`step = tritonfunc.vmap(tritonfunc.grad(loss))` first), then call them inside it"
        )
    token = library.enroll(wrapper, impl)  # what a compiled graph names the transform by
    _named_like(wrapper, func)
    setattr(wrapper, RECIPE, (name, repr(params), func))  # repr: hashable, whatever the user passed
    return wrapper


def _named_like(wrapper: Callable, func: Callable) -> None:
    """functools.wraps without copying func's __dict__: a wrapped wrapper's cache memos
    (cache._memo) must not become the outer wrapper's."""
    functools.update_wrapper(wrapper, func, updated=())


def jit(fn: Callable) -> Callable:
    """Traces `fn` once per kind of call, fuses it into Triton kernels and runs them.

    Tensor arguments (in any pytree) are inputs; tensors the function captures are read at each
    call (guarded, see cache.py), so a closure never sees stale values.
    """
    return _transform("jit", (), fn, fn)


def explain(fn: Callable) -> Callable[..., str]:
    """`explain(f)(*args)` returns the traced graph and the Program's steps: each generated kernel
    with its Triton source, and each torch call."""

    def explained(*args, **kwargs) -> str:
        tensors = _tensor_leaves((args, kwargs))
        device = _device_of(tensors)
        traced = trace(fn, args, kwargs, device=device)
        graph = traced.graph
        program = runtime.program_for(graph, tensors + bind_consts(graph.const_values, device, placeholder_seeds=True))
        kernels = len(program.kernel_steps)
        parts = [
            "# graph",
            graph.pretty(),
            "",
            f"# {len(program.steps)} step(s): {kernels} kernel(s), {len(program.steps) - kernels} torch call(s)",
        ]
        for i, step in enumerate(program.steps):
            if isinstance(step, KernelStep):
                ks = step.source
                parts += [
                    "",
                    f"## step {i}: kernel {ks.name}  grid={ks.grid}  "
                    f"bytes read={ks.bytes_read} written={ks.bytes_written}",
                    ks.source,
                ]
            else:
                parts += ["", f"## step {i}: torch call (not fused) {runtime.describe_torch_call(step.node)}"]
        parts += ["", "# cache", *cache.report(fn, args, kwargs, traced)]
        return "\n".join(parts)

    return explained


# ---------------------------------------------------------------------------------------------
# Argument checks, in torch.func's words.

argnums_t = int | tuple[int, ...]


def _wrap_argnum(argnum, num_args: int) -> int:
    if not isinstance(argnum, int):
        raise RuntimeError(f"argnum must be int, got: {type(argnum)}")
    if 0 <= argnum < num_args:
        return argnum
    if -num_args <= argnum < 0:
        return argnum + num_args
    raise RuntimeError(f"Got argnum={argnum}, but only {num_args} positional inputs")


def _check_argnums(argnums, num_args: int) -> argnums_t:
    if isinstance(argnums, int):
        return _wrap_argnum(argnums, num_args)
    if not isinstance(argnums, tuple):
        raise RuntimeError(f"argnums must be int or Tuple[int, ...], got: {type(argnums)}")
    wrapped = tuple(_wrap_argnum(a, num_args) for a in argnums)
    if len(wrapped) == 0:
        raise RuntimeError("argnums must be non-empty")
    if len(set(wrapped)) != len(wrapped):
        raise RuntimeError(f"argnums elements must be unique, got {wrapped}")
    return wrapped


def _check_tensor_leaves(tree, differentiated: bool = True) -> None:
    for x in pytree.tree_leaves(tree):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"Thing passed to transform API must be Tensor, got {type(x)}")
        if differentiated and not (x.is_floating_point() or x.is_complex()):
            raise RuntimeError("only Tensors of floating point dtype can require gradients")


def _check_real(flat: list, api: str, what: str) -> None:
    for i, t in enumerate(flat):
        if isinstance(t, torch.Tensor) and t.is_complex():
            raise RuntimeError(
                f"{api}: Expected all {what} to be real but received complex tensor at flattened input idx: {i}"
            )


def _check_aux(aux) -> None:
    for x in pytree.tree_leaves(aux):
        if not isinstance(x, torch.Tensor):
            raise RuntimeError(f"Expected tensors, got unsupported type {type(x)}")


def _check_nonempty_tensor_output(flat: list, api: str) -> None:
    if (len(flat) == 1 and flat[0] is None) or len(flat) < 1:
        raise RuntimeError(f"{api}: Expected f to be a function that has non-empty output (got output = {flat})")
    for o in flat:
        if not isinstance(o, torch.Tensor):
            raise RuntimeError(f"{api}: expected f(*primals) to return only tensors, got unsupported type {type(o)}")


def _split_aux(out, has_aux: bool, api: str):
    if not has_aux:
        return out, None
    if not (isinstance(out, tuple) and len(out) == 2):
        raise RuntimeError(f"{api}: output of function f should be a tuple: (output, aux) if has_aux is True")
    _check_aux(out[1])
    return out


def _as_tuple(argnums) -> tuple[int, ...]:
    return (argnums,) if isinstance(argnums, int) else argnums


def _child_spec(spec, i: int):
    return spec.child(i) if hasattr(spec, "child") else spec.children_specs[i]


def _arg_leaf_mask(args: tuple, kwargs: dict, selected: set[int]) -> list[bool]:
    """Per tensor leaf of (args, kwargs), in trace input order: does it belong to a selected arg?"""
    mask = []
    for i, a in enumerate(args):
        mask += [i in selected] * len(_tensor_leaves(a))
    return mask + [False] * len(_tensor_leaves(kwargs))


# ---------------------------------------------------------------------------------------------
# Reverse mode: vjp, grad_and_value, grad.


def vjp(func: Callable, *primals, has_aux: bool = False):
    """Returns (func(*primals), vjp_fn) or, with has_aux, (output, vjp_fn, aux)."""
    return _vjp(func, primals, has_aux, compute_output=True)


def _vjp(func: Callable, primals: tuple, has_aux: bool, compute_output: bool):
    """vjp; without compute_output the outputs are uninitialised tensors of the right shapes (jacrev
    only needs their shapes, and the backward kernels recompute what they need)."""
    _check_tensor_leaves(primals)
    api = "vjp(f, *primals)"
    spec_box = {}

    def traced(*args):
        out, aux = _split_aux(func(*args), has_aux, api)
        flat, spec_box["out"] = pytree.tree_flatten(out)
        _check_nonempty_tensor_output(flat, api)
        for o in flat:
            if not (o.is_floating_point() or o.is_complex()):
                raise RuntimeError(
                    f"vjp(f, ...): All outputs of f must be floating-point or complex Tensors, got Tensor "
                    f"with dtype {o.dtype}"
                )
        spec_box["n_out"] = len(flat)
        return (out, aux) if has_aux else out

    tensors = _tensor_leaves(primals)
    holder = _Transform("vjp", (has_aux,), func)
    t, const_values, memo = cache.traced(holder, traced, primals, {}, api="vjp", diff=(True,) * len(tensors))
    graph, full_spec, n_fn = t.graph, t.out_spec, t.num_outputs
    if "out" not in memo:  # traced just now: what the function returned
        memo["out"] = (spec_box["out"], spec_box["n_out"])
    out_spec, n_out = memo["out"]
    consts = _call_consts(const_values, tensors)
    if compute_output or has_aux or t.writes or innermost_builder(tensors + consts) is not None:
        results = run_graph(graph, tensors, consts)
    else:
        device = _device_of(tensors)
        results = [torch.empty(v.shape, dtype=v.dtype, device=device) for v in graph.outputs]
    saved, consts = _snapshot(t, tensors), _snapshot_consts(t, consts)
    _write_back(t, tensors, results[n_fn:])
    primals_out = pytree.tree_unflatten(results[:n_out], out_spec)
    if "backward" not in memo:
        backward = vjp_graph(graph, [True] * len(tensors), ct_for=[True] * n_out + [False] * (len(results) - n_out))
        memo["backward"] = _outputs_only(backward, len(graph.outputs))
    backward = memo["backward"]
    primal_specs = [pytree.tree_flatten(p)[1] for p in primals]
    out_avals = [(v.shape, v.dtype) for v in graph.outputs[:n_out]]

    def vjp_fn(cotangents, retain_graph: bool = True, create_graph: bool | None = None):
        flat_ct, ct_spec = pytree.tree_flatten(cotangents)
        if ct_spec != out_spec:
            raise RuntimeError(
                "Expected pytree structure of cotangents to be the same as pytree structure of outputs to the "
                f"function. cotangents: {pytree.treespec_pprint(ct_spec)}, primal output: "
                f"{pytree.treespec_pprint(out_spec)}"
            )
        cts = []
        for i, (ct, (shape, dtype)) in enumerate(zip(flat_ct, out_avals)):
            if tuple(ct.shape) != shape:
                raise RuntimeError(
                    f"Mismatch in shape: grad_output[{i}] has a shape of {ct.shape} and output[{i}] has a shape "
                    f"of {torch.Size(shape)}."
                )
            cts.append(ct if ct.dtype == dtype else ct.to(dtype))
        grads = iter(run_graph(backward, saved + cts, consts))
        return tuple(pytree.tree_unflatten([next(grads) for _ in range(s.num_leaves)], s) for s in primal_specs)

    if has_aux:
        return primals_out, vjp_fn, pytree.tree_unflatten(results[n_out:n_fn], _child_spec(full_spec, 1))
    return primals_out, vjp_fn


def _grad_transform(func: Callable, argnums, has_aux: bool, with_value: bool) -> Callable:
    api = "grad_and_value(f)(*args)"

    def impl(*args, **kwargs):
        selected = _check_argnums(argnums, len(args))
        diff_args = args[selected] if isinstance(selected, int) else tuple(args[i] for i in selected)
        _check_tensor_leaves(diff_args)

        def traced(*a, **k):
            out, aux = _split_aux(func(*a, **k), has_aux, api)
            if not isinstance(out, torch.Tensor):
                raise RuntimeError(f"{api}: Expected f(*args) to return a Tensor, got {type(out)}")
            if out.dim() != 0:
                raise RuntimeError(
                    f"{api}: Expected f(*args) to return a scalar Tensor, got tensor with {out.dim()} dims. "
                    "Maybe you wanted to use the vjp or jacrev APIs instead?"
                )
            return (out, aux)

        tensors = _tensor_leaves((args, kwargs))
        wrt = _arg_leaf_mask(args, kwargs, set(_as_tuple(selected)))
        t = trace(traced, args, kwargs, device=_device_of(tensors), api="grad", diff=wrt)
        graph, out_spec, n_fn = t.graph, t.out_spec, t.num_outputs
        n = len(graph.outputs)
        backward = vjp_graph(graph, wrt, ct_for=["ones"] + [False] * (n - 1))
        # grad alone never computes the value: the backward kernels recompute what they need.
        keep = 0 if with_value else 1
        results = run_graph(_outputs_only(backward, keep), tensors)
        value = results[0] if with_value else None
        aux_leaves, grads = results[1 - keep : n_fn - keep], iter(results[n - keep :])
        _write_back(t, tensors, results[n_fn - keep : n - keep])
        # Cotangents come in argument order; the result follows argnums' order.
        per_arg = {i: [next(grads) for _ in _tensor_leaves(args[i])] for i in sorted(_as_tuple(selected))}
        grad = tuple(pytree.tree_unflatten(per_arg[i], pytree.tree_flatten(args[i])[1]) for i in _as_tuple(selected))
        grad = grad[0] if isinstance(selected, int) else grad
        aux = pytree.tree_unflatten(aux_leaves, _child_spec(out_spec, 1)) if has_aux else None
        if with_value:
            return (grad, (value, aux)) if has_aux else (grad, value)
        return (grad, aux) if has_aux else grad

    return _transform("grad_and_value" if with_value else "grad", (argnums, has_aux), func, impl)


def grad_and_value(func: Callable, argnums: argnums_t = 0, has_aux: bool = False) -> Callable:
    """Returns a function computing (gradient, value), or (gradient, (value, aux)) with has_aux."""
    return _grad_transform(func, argnums, has_aux, with_value=True)


def grad(func: Callable, argnums: argnums_t = 0, has_aux: bool = False) -> Callable:
    """The gradient of a scalar function with respect to the arguments in `argnums`."""
    return _grad_transform(func, argnums, has_aux, with_value=False)


# ---------------------------------------------------------------------------------------------
# Forward mode: jvp, linearize.

_JVP = "jvp(f, primals, tangents)"


def _check_tensor_list(flat: list, api: str, argname: str) -> None:
    if len(flat) == 0:
        raise RuntimeError(f"{api}: Expected {argname} to contain at least one Tensor.")
    for x in flat:
        if not isinstance(x, torch.Tensor):
            raise RuntimeError(f"{api}: Expected {argname} to only contain Tensors, got {type(x)}")


def _forward(func: Callable, has_aux: bool, api: str):
    """func checked as jvp and linearize check it, and where its output's structure is noted."""
    spec_box = {}

    def traced(*args):
        out, aux = _split_aux(func(*args), has_aux, api)
        flat, spec_box["out"] = pytree.tree_flatten(out)
        _check_nonempty_tensor_output(flat, api)
        spec_box["n_out"] = len(flat)
        return (out, aux) if has_aux else out

    return traced, spec_box


def _trace_forward(func: Callable, primals: tuple, has_aux: bool, api: str):
    traced, spec_box = _forward(func, has_aux, api)
    t = trace(traced, primals, {}, device=_device_of(_tensor_leaves(primals)), api="jvp")
    return t, spec_box["out"], spec_box["n_out"]


def jvp(func: Callable, primals: Any, tangents: Any, *, strict: bool = False, has_aux: bool = False):
    """Returns (func(*primals), J @ tangents), or a 3-tuple with aux."""
    if not isinstance(primals, tuple):
        raise RuntimeError(f"{_JVP}: Expected primals to be a tuple. E.g. it should be valid to call f(*primals).")
    impl = functools.partial(_jvp, func, strict=strict, has_aux=has_aux)
    return cache.call(_Transform("jvp", (strict, has_aux), func), impl, (primals, tangents), {})


def _jvp(func: Callable, primals: Any, tangents: Any, *, strict: bool, has_aux: bool):
    if not isinstance(primals, tuple):
        raise RuntimeError(f"{_JVP}: Expected primals to be a tuple. E.g. it should be valid to call f(*primals).")
    flat_primals, primals_spec = pytree.tree_flatten(primals)
    flat_tangents, tangents_spec = pytree.tree_flatten(tangents)
    if primals_spec != tangents_spec:
        raise RuntimeError(
            f"{_JVP}: Expected primals and tangents to have the same python structure. For example, if primals "
            f"is a tuple of 3 tensors, tangents also must be. Got primals with structure {primals_spec} and "
            f"tangents with structure {tangents_spec}"
        )
    _check_tensor_list(flat_primals, _JVP, "primals")
    _check_tensor_list(flat_tangents, _JVP, "tangents")
    for p, t in zip(flat_primals, flat_tangents):
        for what, x in (("primal", p), ("tangent", t)):  # forward_ad.make_dual's checks, in its order
            if not (x.is_floating_point() or x.is_complex()):
                raise ValueError(f"Expected {what} to be floating point or complex, but got: {x.dtype}")
        if p.shape != t.shape:
            raise RuntimeError(
                "Trying to set a forward gradient that has a different size than that of the original Tensor, "
                f"this is not supported. Tensor is of size {list(p.shape)} while the given forward gradient is of "
                f"size {list(t.shape)}."
            )
    t, out_spec, n_out = _trace_forward(func, primals, has_aux, _JVP)
    graph, full_spec, n_fn = t.graph, t.out_spec, t.num_outputs
    # A tangent keeps its own dtype, as in torch: float64 tangents of float32 inputs give float64 ones.
    tangent_dtypes = [t.dtype if t.is_floating_point() else p.dtype for p, t in zip(flat_primals, flat_tangents)]
    forward, independent = jvp_graph(graph, [True] * len(flat_primals), tangent_dtypes)
    if strict and any(independent[:n_out]):
        raise RuntimeError(
            "jvp(f, primals, tangents, strict=True): The output of f is independent of the inputs. This is not "
            "allowed with strict=True."
        )
    n = len(graph.outputs)
    tangents_in = [t if t.dtype == d else t.to(d) for t, d in zip(flat_tangents, tangent_dtypes)]
    results = run_graph(forward, flat_primals + tangents_in)
    primals_out = pytree.tree_unflatten(results[:n_out], out_spec)
    tangents_out = pytree.tree_unflatten(results[n : n + n_out], out_spec)
    # A written input's tangent is written into the caller's tangent, as torch's forward AD does.
    _write_back(t, flat_primals, results[n_fn:n])
    tangent_writes = [w for w in t.writes if w.changed]
    for w, new in zip(tangent_writes, results[n + n_fn :]):
        if isinstance(w.target, int):
            _copy_into(flat_tangents[w.target], new)
    if has_aux:
        return primals_out, tangents_out, pytree.tree_unflatten(results[n_out:n_fn], _child_spec(full_spec, 1))
    return primals_out, tangents_out


def linearize(func: Callable, *primals) -> tuple[Any, Callable]:
    """Returns (func(*primals), jvp_fn) where jvp_fn(*tangents) is the JVP at primals."""
    _check_tensor_leaves(primals)
    flat_primals, primals_argspec = pytree.tree_flatten(primals)
    traced, spec_box = _forward(func, False, "linearize(f, *primals)")
    t, const_values, memo = cache.traced(_Transform("linearize", (), func), traced, primals, {}, api="jvp")
    if "out" not in memo:  # traced just now: what the function returned
        memo["out"] = (spec_box["out"], spec_box["n_out"])
    out_spec, n_out = memo["out"]
    graph, n = t.graph, len(t.graph.outputs)
    consts = _call_consts(const_values, flat_primals)
    results = run_graph(graph, flat_primals, consts)
    saved, consts = _snapshot(t, flat_primals), _snapshot_consts(t, consts)
    _write_back(t, flat_primals, results[n_out:])
    output = pytree.tree_unflatten(results[:n_out], out_spec)
    if "tangents" not in memo:
        forward, _ = jvp_graph(graph, [True] * len(flat_primals))
        memo["tangents"] = _outputs_only(forward, n, n + n_out)
    tangent_graph = memo["tangents"]

    def jvp_fn(*tangents):
        flat_tangents, tangent_argspec = pytree.tree_flatten(tangents)
        if tangent_argspec != primals_argspec:
            raise RuntimeError(
                f"Expected the tangents {tangent_argspec} to have the same argspec as the primals {primals_argspec}"
            )
        for idx, (t, p) in enumerate(zip(flat_tangents, flat_primals)):
            for what in ("shape", "device", "dtype"):
                if getattr(t, what) != getattr(p, what):
                    raise RuntimeError(
                        f"tangent:{idx} with {what} {getattr(t, what)} in flattened pytree doesn't match the "
                        f"{what} {getattr(p, what)} of the corresponding primal."
                    )
        return pytree.tree_unflatten(run_graph(tangent_graph, saved + flat_tangents, consts), out_spec)

    return output, jvp_fn


# ---------------------------------------------------------------------------------------------
# vmap.

in_dims_t = int | tuple
out_dims_t = int | tuple | None


def _get_name(func: Callable) -> str:
    if hasattr(func, "__name__"):
        return func.__name__
    if isinstance(func, functools.partial):
        return f"functools.partial({_get_name(func.func)}, ...)"
    return repr(func)


def _process_batched_inputs(in_dims, args: tuple, func: Callable):
    name = _get_name(func)
    if not isinstance(in_dims, (int, tuple)):
        raise ValueError(
            f"vmap({name}, in_dims={in_dims}, ...)(<inputs>): expected `in_dims` to be int or a (potentially "
            f"nested) tuple matching the structure of inputs, got: {type(in_dims)}."
        )
    if len(args) == 0:
        raise ValueError(
            f"vmap({name})(<inputs>): got no inputs. Maybe you forgot to add inputs, or you are trying to vmap "
            f"over a function with no inputs. The latter is unsupported."
        )
    flat_args, args_spec = pytree.tree_flatten(args)
    flat_in_dims = pytree._broadcast_to_and_flatten(in_dims, args_spec)
    if flat_in_dims is None:
        raise ValueError(
            f"vmap({name}, in_dims={in_dims}, ...)(<inputs>): in_dims is not compatible with the structure of "
            f"`inputs`. in_dims has structure {pytree.tree_flatten(in_dims)[1]} but inputs has structure "
            f"{args_spec}."
        )
    for i, (arg, in_dim) in enumerate(zip(flat_args, flat_in_dims)):
        if not isinstance(in_dim, int) and in_dim is not None:
            raise ValueError(
                f"vmap({name}, in_dims={in_dims}, ...)(<inputs>): Got in_dim={in_dim} for an input but in_dim "
                f"must be either an integer dimension or None."
            )
        if isinstance(in_dim, int) and not isinstance(arg, torch.Tensor):
            raise ValueError(
                f"vmap({name}, in_dims={in_dims}, ...)(<inputs>): Got in_dim={in_dim} for an input but the input "
                f"is of type {type(arg)}. We cannot vmap over non-Tensor arguments, please use None as the "
                f"respective in_dim"
            )
        if in_dim is not None and (in_dim < -arg.dim() or in_dim >= arg.dim()):
            raise ValueError(
                f"vmap({name}, in_dims={in_dims}, ...)(<inputs>): Got in_dim={in_dim} for some input, but that "
                f"input is a Tensor of dimensionality {arg.dim()} so expected in_dim to satisfy "
                f"-{arg.dim()} <= in_dim < {arg.dim()}."
            )
        if in_dim is not None and in_dim < 0:
            flat_in_dims[i] = in_dim % arg.dim()
    sizes = [arg.size(d) for d, arg in zip(flat_in_dims, flat_args) if d is not None]
    if not sizes:
        raise ValueError("vmap: Expected at least one Tensor to vmap over")
    if any(s != sizes[0] for s in sizes):
        raise ValueError(
            f"vmap: Expected all tensors to have the same size in the mapped dimension, got sizes {sizes} for "
            f"the mapped dimension"
        )
    return sizes[0], flat_in_dims, flat_args, args_spec


def _check_out_dims(out_dims, func: Callable) -> None:
    for x in pytree.tree_leaves(out_dims) if out_dims is not None else []:
        if not (isinstance(x, int) or x is None):
            raise ValueError(
                f"vmap({_get_name(func)}, ..., out_dims={out_dims}): `out_dims` must be an int, None or a python "
                "collection of ints representing where in the outputs the vmapped dimension should appear."
            )


def _flat_out_dims(out_dims, out_spec, func: Callable) -> list:
    if out_spec.is_leaf():  # a single output: an int, a 1-tuple or None
        if isinstance(out_dims, int) or out_dims is None:
            return [out_dims]
        if isinstance(out_dims, tuple) and len(out_dims) == 1:
            return list(out_dims)
        flat = None
    else:
        flat = pytree._broadcast_to_and_flatten(out_dims, out_spec)
    if flat is None:
        raise ValueError(
            f"vmap({_get_name(func)}, ..., out_dims={out_dims})(<inputs>): out_dims is not compatible with the "
            f"structure of `outputs`. out_dims has structure {pytree.tree_flatten(out_dims)[1]} but outputs has "
            f"structure {out_spec}."
        )
    return flat


def _vmap_once(func, size, flat_in_dims, flat_args, args_spec, out_dims, randomness, kwargs):
    """One vmap over the whole batch: trace per example, batch the graph, run it."""
    name = _get_name(func)
    tensors = [a for a in flat_args if isinstance(a, torch.Tensor)] + _tensor_leaves(kwargs)
    device = _device_of(tensors)
    moved, examples = [], []
    for a, d in zip(flat_args, flat_in_dims):
        if d is None:
            examples.append(a)
            if isinstance(a, torch.Tensor):
                moved.append(a)
        else:
            examples.append(torch.empty(a.shape[:d] + a.shape[d + 1 :], dtype=a.dtype, device="meta"))
            moved.append(a if d == 0 else a.movedim(d, 0))
    batched = [d is not None for a, d in zip(flat_args, flat_in_dims) if isinstance(a, torch.Tensor)]
    batched += [False] * len(_tensor_leaves(kwargs))
    t = trace(func, pytree.tree_unflatten(examples, args_spec), kwargs, device=device, api="vmap", batch_size=size)
    out_spec, statics, n_fn = t.out_spec, t.statics, t.num_outputs
    # torch.func counts every transform around this one (not the trace of a whole call, cache.py)
    level = sum(1 for s in trace_stack() if s.api != "call") + 1
    batched_graph, out_batched = vmap_graph(t.graph, batched, size, randomness, level)
    inputs = moved + _tensor_leaves(kwargs)
    values = run_graph(batched_graph, inputs)
    for w, is_batched in zip([w for w in t.writes if w.changed], out_batched[n_fn:]):
        if is_batched and isinstance(w.target, int) and not batched[w.target]:  # vmap_graph's checks prevent it
            raise RuntimeError("tritonfunc: vmap would write a batched value into an unbatched tensor")
    originals = [(a, d) for a, d in zip(flat_args, flat_in_dims) if isinstance(a, torch.Tensor)]

    def replay(position, op, args, op_kwargs):  # an in-place metadata change, per example as torch.func does
        tensor, in_dim = originals[position] if position < len(originals) else (inputs[position], None)
        fallback.replay_batched(op, tensor, in_dim, args, op_kwargs)

    _write_back(t, inputs, values[n_fn:], replay)
    values = _alias_inputs(t, values[:n_fn], inputs)
    out_batched = [batched[t.returns_input[k]] if k in t.returns_input else b for k, b in enumerate(out_batched)]
    for k, (position, chain) in t.returns_view.items():  # a view of an input is returned as one, as torch.func
        view = fallback.replay_view_batched(inputs[position], chain, batched[position])
        if view is not None:
            values[k], out_batched[k] = view, batched[position]
    results = iter(zip(values, out_batched))
    flat_out = []
    for static, out_dim in zip(statics, _flat_out_dims(out_dims, out_spec, func)):
        value, is_batched = next(results) if static is TENSOR else (static, False)
        if out_dim is None:
            if is_batched:
                raise ValueError(f"vmap({name}, ...): `{name}` can not return a BatchedTensor when out_dim is None")
            flat_out.append(value)
            continue
        if static is not TENSOR:
            raise ValueError(
                f"vmap({name}, ...): `{name}` must only return Tensors, got type {type(value)}. Did you mean to "
                "set out_dims= to None for output?"
            )
        if not is_batched:  # an output that does not depend on the batch is broadcast to it
            value = value.unsqueeze(0).expand(size, *value.shape)
        flat_out.append(value if out_dim == 0 else value.movedim(0, out_dim))
    return pytree.tree_unflatten(flat_out, out_spec)


def vmap(
    func: Callable,
    in_dims: in_dims_t = 0,
    out_dims: out_dims_t = 0,
    randomness: str = "error",
    *,
    chunk_size: int | None = None,
) -> Callable:
    """Maps `func` over a batch axis of its inputs; the batch becomes part of every kernel's grid.

    chunk_size splits the batch into ceil(B / chunk_size) runs (one launch each where the function
    fuses into one kernel), bounding the memory of intermediates.

    randomness follows torch.func: "error" refuses random ops, "same" draws once for the whole
    batch (and refuses batched arguments to a draw), "different" draws each example independently
    (and refuses in-place draws into unbatched tensors); with chunk_size, "same" restores torch's
    generator state before each chunk.  Elementwise draws use Triton's Philox generator, the rest
    torch's kernels, seeded from torch's generator (or the one passed) each time the function
    runs: torch.manual_seed makes runs repeatable, but the values differ from torch's.
    In-place updates of the arguments are written back to the caller's tensors, as in torch.func.
    """
    if randomness not in RANDOMNESS:
        raise RuntimeError(f"Only allowed values for randomness are 'error', 'different', or 'same'. Got {randomness}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"vmap: chunk_size should be None or greater than 0. (got {chunk_size})")

    def impl(*args, **kwargs):  # one vmap over the whole batch
        _check_out_dims(out_dims, func)
        size, flat_in_dims, flat_args, args_spec = _process_batched_inputs(in_dims, args, func)
        return _vmap_once(func, size, flat_in_dims, flat_args, args_spec, out_dims, randomness, kwargs)

    whole = _transform("vmap", (in_dims, out_dims, randomness), func, impl)
    if chunk_size is None:
        return whole

    def chunked(*args, **kwargs):
        """Runs the whole-batch vmap (one cached Program per chunk shape) on each chunk.  Nested in
        another transform, the batch is one: its kernels' grid covers it."""
        _check_out_dims(out_dims, func)
        size, flat_in_dims, flat_args, args_spec = _process_batched_inputs(in_dims, args, func)
        if size == 0 or innermost_builder(flat_args + _tensor_leaves(kwargs)) is not None:
            return whole(*args, **kwargs)
        sizes = [chunk_size] * (size // chunk_size) + ([size % chunk_size] if size % chunk_size else [])
        bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        rng_state = torch.get_rng_state() if randomness == "same" else None
        outputs = []
        for lo, hi in zip(bounds, bounds[1:]):
            if rng_state is not None:  # "same": every chunk sees the same draws
                torch.set_rng_state(rng_state)
            chunk = [a if d is None else a.narrow(d, lo, hi - lo) for a, d in zip(flat_args, flat_in_dims)]
            outputs.append(whole(*pytree.tree_unflatten(chunk, args_spec), **kwargs))
        flat_chunks = [pytree.tree_flatten(o)[0] for o in outputs]
        out_spec = pytree.tree_flatten(outputs[0])[1]
        flat_dims = _flat_out_dims(out_dims, out_spec, func)
        merged = [
            pieces[0] if d is None else torch.cat(pieces, dim=d) for pieces, d in zip(zip(*flat_chunks), flat_dims)
        ]
        return pytree.tree_unflatten(merged, out_spec)

    _named_like(chunked, func)
    setattr(chunked, RECIPE, ("vmap", repr((in_dims, out_dims, randomness, chunk_size)), func))
    return chunked


# ---------------------------------------------------------------------------------------------
# Jacobians and Hessians: vmap over vjp (reverse) or jvp (forward) with a standard basis.


def _with_args(func: Callable, args: tuple, argnums) -> Callable:
    """func as a function of args[argnums] only, the other arguments fixed."""

    def partial_func(*diff):
        new = list(args)
        for i, d in zip(_as_tuple(argnums), diff):
            new[i] = d
        return func(*new)

    return partial_func


def _basis_row(index: torch.Tensor, flat: list[torch.Tensor]) -> list[torch.Tensor]:
    """Row `index` of an identity over the concatenated elements of `flat`, split and shaped per
    tensor.  Under vmap over the indices the rows are computed in the kernel (iota == index), so a
    Jacobian never reads an n x n basis from memory."""
    total = sum(t.numel() for t in flat)
    row = (torch.arange(total, device=index.device) == index).to(flat[0].dtype)
    return [p.reshape(t.shape) for p, t in zip(row.split([t.numel() for t in flat]), flat)]


def jacrev(
    func: Callable,
    argnums: argnums_t = 0,
    *,
    has_aux: bool = False,
    chunk_size: int | None = None,
    _preallocate_and_copy: bool = False,
) -> Callable:
    """The Jacobian by reverse mode: one vjp, then vmap of its vjp_fn over the output basis."""
    if not (chunk_size is None or chunk_size > 0):
        raise ValueError("jacrev: `chunk_size` should be greater than 0.")

    def impl(*args):
        selected = _check_argnums(argnums, len(args))
        diff = tuple(args[i] for i in _as_tuple(selected))
        _check_real(pytree.tree_leaves(diff), "jacrev", "inputs")
        result = _vjp(_with_args(func, args, selected), diff, has_aux, compute_output=False)
        output, vjp_fn = result[0], result[1]
        flat_out, out_spec = pytree.tree_flatten(output)
        _check_real(flat_out, "jacrev", "outputs")
        pull_row = lambda i: vjp_fn(pytree.tree_unflatten(_basis_row(i, flat_out), out_spec))  # noqa: E731
        indices = torch.arange(sum(o.numel() for o in flat_out), device=flat_out[0].device)
        if chunk_size == 1:  # a plain loop, as torch.func does: no vmap restrictions apply
            rows = [pull_row(i) for i in indices]
            grads = pytree.tree_map(lambda *xs: torch.stack(xs), *rows) if rows else None
        else:
            grads = vmap(pull_row, chunk_size=chunk_size)(indices)
        flat_in, in_spec = pytree.tree_flatten(diff)
        flat_grads = pytree.tree_leaves(grads)
        jac = []
        offsets = [0]
        for o in flat_out:
            offsets.append(offsets[-1] + o.numel())
        for k, o in enumerate(flat_out):
            per_input = [
                g[offsets[k] : offsets[k + 1]].reshape((*o.shape, *x.shape)) for g, x in zip(flat_grads, flat_in)
            ]
            per_input = pytree.tree_unflatten(per_input, in_spec)
            jac.append(per_input[0] if isinstance(selected, int) else per_input)
        jac = pytree.tree_unflatten(jac, out_spec)
        return (jac, result[2]) if has_aux else jac

    return _transform("jacrev", (argnums, has_aux, chunk_size), func, impl)


def jacfwd(func: Callable, argnums: argnums_t = 0, has_aux: bool = False, *, randomness: str = "error") -> Callable:
    """The Jacobian by forward mode: vmap of jvp over the input basis."""

    def impl(*args):
        selected = _check_argnums(argnums, len(args))
        diff = tuple(args[i] for i in _as_tuple(selected))
        _check_tensor_leaves(diff, differentiated=False)
        _check_real(pytree.tree_leaves(diff), "jacfwd", "inputs")
        flat_in, in_spec = pytree.tree_flatten(diff)
        partial_func = _with_args(func, args, selected)

        def push_jvp(index):
            tangents = pytree.tree_unflatten(_basis_row(index, flat_in), in_spec)
            result = jvp(partial_func, diff, tangents, has_aux=has_aux)
            return (result[1], result[2]) if has_aux else result[1]

        indices = torch.arange(sum(x.numel() for x in flat_in), device=flat_in[0].device)
        pushed = vmap(push_jvp, randomness=randomness)(indices)
        tangents_out, aux = pushed if has_aux else (pushed, None)
        flat_out, out_spec = pytree.tree_flatten(tangents_out)
        numels = [x.numel() for x in flat_in]
        jac = []
        for t in flat_out:  # [N, *out] -> [*out, N] -> per input [*out, *in]
            cols = t.movedim(0, -1).split(numels, dim=-1)
            per_input = [c.reshape((*t.shape[1:], *x.shape)) for c, x in zip(cols, flat_in)]
            per_input = pytree.tree_unflatten(per_input, in_spec)
            jac.append(per_input[0] if isinstance(selected, int) else per_input)
        jac = pytree.tree_unflatten(jac, out_spec)
        if has_aux:
            return jac, pytree.tree_map(lambda a: a[0], aux)
        return jac

    return _transform("jacfwd", (argnums, has_aux, randomness), func, impl)


def hessian(func: Callable, argnums: argnums_t = 0) -> Callable:
    """Forward-over-reverse, as torch.func: jacfwd(jacrev(func, argnums), argnums)."""
    return jacfwd(jacrev(func, argnums), argnums)
