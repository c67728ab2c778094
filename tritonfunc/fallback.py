"""The opaque fallback: an ATen op with no lowering runs as a torch call between kernels.

Such an op becomes an OPAQUE node: a primitive made for that op whose reference implementation
is the op itself, run by torch on the buffers of the kernels around it.  Its derivative and
batching rules apply torch.func to that one op, and are OPAQUE primitives themselves (a function
of tensors, like the op), so every composition nests: `vmap(jacrev(grad(f)))` through a
convolution is a vmap of a vjp of a vjp of `aten.convolution`, each a torch call.

This is the only module where torch's autodiff runs.  Fused work on either side still fuses: the
scheduler only stores the opaque node's inputs and reads its outputs like graph inputs.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# torch.func's transforms from their defining modules, not `torch.func.vmap`: a user (or a test
# harness) that swaps tritonfunc in for torch.func (`torch.func.vmap = tritonfunc.vmap`) would
# otherwise send a fallback op's batching rule back into tritonfunc, forever.
from torch._functorch.apis import vmap as torch_vmap
from torch._functorch.eager_transforms import jvp as torch_jvp
from torch._functorch.eager_transforms import vjp as torch_vjp
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import _disable_current_modes

from .graph import Var, current_builder
from .primitives import OPAQUE, Primitive, check_rules, register


class NotFusedWarning(UserWarning):
    """An op ran as a torch call between kernels instead of inside one."""


_warned: set[str] = set()
_lock = threading.Lock()


def warn_not_fused(op_name: str) -> None:
    with _lock:
        if op_name in _warned:
            return
        _warned.add(op_name)
    warnings.warn(
        f"tritonfunc: {op_name} has no fused lowering; it runs as a torch call between the generated kernels",
        NotFusedWarning,
        stacklevel=4,
    )


@dataclass(frozen=True)
class Call:
    """The non-tensor arguments of one call of an ATen op: its (args, kwargs) pytree with each
    tensor replaced by a marker, so the node's inputs fill them back in."""

    func: Any  # the OpOverload
    spec: Any  # pytree spec of (args, kwargs)
    leaves: tuple  # non-tensor leaves, TENSOR where a tensor goes
    out_spec: Any  # pytree spec of the op's result
    out_tensors: tuple[bool, ...]  # per output leaf: a tensor (else None)

    def rebuild(self, tensors) -> tuple[tuple, dict]:
        it = iter(tensors)
        leaves = [next(it) if x is TENSOR else x for x in self.leaves]
        return pytree.tree_unflatten(leaves, self.spec)

    def __repr__(self) -> str:
        args, kwargs = pytree.tree_unflatten(list(self.leaves), self.spec)
        shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        return f"({', '.join(shown)})"

    def __hash__(self) -> int:
        return hash(repr(self))

    def __eq__(self, other) -> bool:
        return isinstance(other, Call) and self.func is other.func and repr(self) == repr(other)


class _Marker:
    def __repr__(self) -> str:
        return "%"


TENSOR = _Marker()


# ---------------------------------------------------------------------------------------------
# Opaque primitives: a function of tensors (returning a tuple of tensors), a shape rule, and rules
# derived with torch.func.

_OPAQUE: dict[str, Primitive] = {}


def _opaque(name: str, fn: Callable, shape_rule: Callable, *, random: bool = False) -> Primitive:
    """The opaque primitive `name` (made once: a name fixes the function it stands for)."""
    with _lock:
        if name in _OPAQUE:
            return _OPAQUE[name]
        prim = Primitive(name, "opaque", shape_rule, fn, strategy=OPAQUE, multiple_results=True, random=random)
        prim.jvp = lambda primals, tangents, outs, **params: _jvp_rule(prim, primals, tangents, outs, params)
        prim.vjp = lambda primals, outs, cts, **params: _vjp_rule(prim, primals, outs, cts, params)
        prim.batch = lambda xs, batched, size, randomness="error", **params: _batch_rule(
            prim, xs, batched, size, randomness, params
        )
        register(prim)
        check_rules(prim)
        _OPAQUE[name] = prim
        return prim


def _floating(aval) -> bool:
    return aval[1].is_floating_point or aval[1].is_complex


def _selecting(fn, primals, wrt):
    """fn as a function of primals[wrt] only."""

    def partial(*chosen):
        full = list(primals)
        for i, x in zip(wrt, chosen):
            full[i] = x
        return fn(*full)

    return partial


def jvp_prim(parent: Primitive, wrt: tuple[int, ...]) -> Primitive:
    """Inputs: the primals, then tangents of primals[wrt]; outputs: tangents of the floating outputs."""

    def fn(*tensors, **params):
        n = len(tensors) - len(wrt)
        primals, tangents = tensors[:n], tensors[n:]
        run = lambda *xs: _floating_outputs(parent.impl(*xs, **params))  # noqa: E731
        return torch_jvp(_selecting(run, primals, wrt), tuple(primals[i] for i in wrt), tuple(tangents))[1]

    def shape_rule(*avals, **params):
        outs = parent.shape_rule(*avals[: len(avals) - len(wrt)], **params)
        return [a for a in outs if _floating(a)]

    return _opaque(f"jvp{list(wrt)}({parent.name})", fn, shape_rule, random=parent.random)


def vjp_prim(parent: Primitive, wrt: tuple[int, ...], seeded: tuple[int, ...]) -> Primitive:
    """Inputs: the primals, then cotangents of outputs[seeded]; outputs: cotangents of primals[wrt]."""

    def fn(*tensors, **params):
        n = len(tensors) - len(seeded)
        primals, cts = tensors[:n], tensors[n:]
        run = lambda *xs: tuple(parent.impl(*xs, **params)[i] for i in seeded)  # noqa: E731
        _, pull = torch_vjp(_selecting(run, primals, wrt), *[primals[i] for i in wrt])
        return pull(tuple(cts))

    def shape_rule(*avals, **params):
        return [avals[i] for i in wrt]

    return _opaque(f"vjp{list(wrt)}{list(seeded)}({parent.name})", fn, shape_rule, random=parent.random)


def batch_prim(parent: Primitive, batched: tuple[bool, ...], size: int, randomness: str) -> Primitive:
    """The same op with a leading batch axis on the inputs marked `batched` and on every output."""
    # A leading placeholder carries the batch size, so that an op none of whose inputs is batched
    # (a random draw under "different") is still mapped `size` times.
    in_dims = (0, *(0 if b else None for b in batched))

    def fn(*tensors, **params):
        run = lambda _, *xs: parent.impl(*xs, **params)  # noqa: E731
        placeholder = torch.empty(size, 0, device=tensors[0].device if tensors else "cpu")
        return tuple(torch_vmap(run, in_dims=in_dims, randomness=randomness)(placeholder, *tensors))

    def shape_rule(*avals, **params):
        per_example = [(s[1:], d) if b else (s, d) for (s, d), b in zip(avals, batched)]
        return [((size, *s), d) for s, d in parent.shape_rule(*per_example, **params)]

    name = f"vmap[{','.join('0' if b else '_' for b in batched)}:{size}]({parent.name})"
    if parent.random:
        name = f"{name}[randomness={randomness}]"
    return _opaque(name, fn, shape_rule, random=parent.random)


def _floating_outputs(outs) -> tuple:
    return tuple(o for o in outs if o.is_floating_point() or o.is_complex())


# Per opaque primitive: inputs its derivative rules leave alone.
_NO_DERIVATIVE: dict[str, set[int]] = {}


def _jvp_rule(prim, primals, tangents, outs, params):
    skip = _NO_DERIVATIVE.get(prim.name, ())
    wrt = tuple(i for i, t in enumerate(tangents) if t is not None and i not in skip)
    if not wrt:
        return [None] * len(outs)
    pushed = iter(jvp_prim(prim, wrt)(*primals, *[tangents[i] for i in wrt], **params))
    return [next(pushed) if _floating((o.shape, o.dtype)) else None for o in outs]


def _vjp_rule(prim, primals, outs, cts, params):
    seeded = tuple(i for i, ct in enumerate(cts) if ct is not None)
    skip = _NO_DERIVATIVE.get(prim.name, ())
    wrt = tuple(i for i, x in enumerate(primals) if _floating((x.shape, x.dtype)) and i not in skip)
    if not seeded or not wrt:
        return [None] * len(primals)
    pulled = iter(vjp_prim(prim, wrt, seeded)(*primals, *[cts[i] for i in seeded], **params))
    return [next(pulled) if i in wrt else None for i in range(len(primals))]


def _batch_rule(prim, xs, batched, size, randomness, params):
    return batch_prim(prim, tuple(batched), size, randomness)(*xs, **params)


# ---------------------------------------------------------------------------------------------
# ATen ops as opaque nodes.


def aten_prim(func, seeded: bool = False, written: tuple[int, ...] = ()) -> Primitive:
    """The opaque primitive running the ATen overload `func`; params: `call`, a `Call`.

    `seeded`: a random op whose first input is a seed; it draws from a generator seeded with it,
    so the op is a function of its inputs (repeatable, and torch.func's derivatives and batching
    of it see the same draws).  `written`: the tensor inputs the op writes (an in-place op, rrelu's
    noise); the call writes copies, whose values are extra outputs after the op's own.
    """

    def run(tensors, call: Call):
        seed = None
        if seeded:
            seed, tensors = tensors[0], tensors[1:]
        tensors = [t.clone() if i in written else t for i, t in enumerate(tensors)]
        args, kwargs = call.rebuild(tensors)
        out = _seeded_call(func, seed, args, kwargs) if seeded else func(*args, **kwargs)
        results = tuple(x for x, is_tensor in zip(pytree.tree_leaves(out), call.out_tensors) if is_tensor)
        return results + tuple(tensors[i] for i in written)

    def fn(*tensors, call: Call):
        return run(list(tensors), call)

    def shape_rule(*avals, call: Call):
        # Outside any trace's dispatch mode: these are real meta tensors, not traced factories.
        with _disable_current_modes():
            scalars = cpu_scalar_operands(func, [s for s, _ in avals])
            metas = [
                torch.empty((), dtype=d) if scalars and not s else torch.empty(s, dtype=d, device="meta")
                for s, d in avals
            ]
            try:
                outs = run(metas, call)
            except NotImplementedError:  # no meta kernel (binomial): small real tensors tell the shapes
                outs = run(_stand_ins(metas), call)
        return [(tuple(x.shape), x.dtype) for x in outs]

    random = torch.Tag.nondeterministic_seeded in func.tags
    name = str(func) + ("[seeded]" if seeded else "") + (f"[writes {list(written)}]" if written else "")
    prim = _opaque(name, fn, shape_rule, random=random)
    if random:  # what a draw writes into (rrelu's noise) is an output only: no derivative flows into it
        _NO_DERIVATIVE[prim.name] = {i + seeded for i in written}
    return prim


def cpu_scalar_operands(func, shapes) -> bool:
    """Whether func's 0-d operands stand in for its shape rule as CPU scalars, not meta tensors: for
    a prim beside larger operands.  torch's references leave CPU scalars unbroadcast
    (torch.fmax(x, 0-d)), and the prims' shape checks accept a 0-d operand only as one."""
    return func.namespace == "prims" and any(len(s) > 0 for s in shapes)


def _stand_ins(metas: list[torch.Tensor]) -> list[torch.Tensor]:
    """CPU zeros for meta tensors, for the few ops without a meta kernel."""
    return [torch.zeros(m.shape, dtype=m.dtype) for m in metas]


def meta_result(func, args, kwargs):
    """func's result on meta tensors (its shapes and dtypes), through real zeros on the CPU for an
    op without a meta kernel (binomial), its random draws from a private generator state."""
    try:
        return func(*args, **kwargs)
    except NotImplementedError:
        real = lambda x: torch.zeros(x.shape, dtype=x.dtype) if isinstance(x, torch.Tensor) else x  # noqa: E731
        with torch.random.fork_rng(devices=[]):
            out = func(*pytree.tree_map(real, args), **pytree.tree_map(real, kwargs))
        return pytree.tree_map(lambda x: x.to("meta") if isinstance(x, torch.Tensor) else x, out)


def _seeded_call(func, seed: torch.Tensor, args, kwargs):
    """func with its random draws from a generator seeded by `seed`."""
    names = {a.name for a in func._schema.arguments}
    takes_generator = "generator" in names
    if seed.device.type == "meta":  # shapes only: a factory makes meta tensors, and nothing is drawn
        extra = {"generator": None} if takes_generator else {}
        if "device" in names:
            extra["device"] = "meta"
        return func(*args, **{**kwargs, **extra})
    if takes_generator:
        generator = torch.Generator(device=seed.device).manual_seed(int(seed))
        return func(*args, **kwargs, generator=generator)
    devices = [seed.device] if seed.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        return func(*args, **kwargs)


def _written_leaves(func, args, kwargs, leaves) -> tuple[int, ...]:
    """Positions among the tensor leaves of (args, kwargs) of the arguments func writes."""
    arguments = func._schema.arguments
    bound = {a.name: v for a, v in zip(arguments, args)} | dict(kwargs)
    tensors = [x for x in leaves if isinstance(x, Var)]
    positions = []
    for a in arguments:
        if a.alias_info is not None and a.alias_info.is_write and isinstance(bound.get(a.name), Var):
            positions.append(next(i for i, t in enumerate(tensors) if t is bound[a.name]))
    return tuple(positions)


def emit_aten(func, args, kwargs, out_meta):
    """Records `func(*args, **kwargs)` (tensors already replaced by vars; an op that writes none of
    its arguments) as an opaque node of the current builder; returns the result in the op's own
    structure, with vars for tensors."""
    result, written = emit_aten_call(func, args, kwargs, out_meta)
    assert not written, f"{func} writes its arguments: use emit_aten_call"
    return result


def emit_aten_call(func, args, kwargs, out_meta, seed: Var | None = None):
    """Records `func(*args, **kwargs)` (tensors already replaced by vars) as an opaque node of the
    current builder.  Returns the result in the op's own structure, with vars for tensors, and the
    new values of the tensor arguments it writes, by their position among its tensor arguments."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    inputs = [x for x in leaves if isinstance(x, Var)]
    out_leaves, out_spec = pytree.tree_flatten(out_meta)
    call = Call(
        func,
        spec,
        tuple(TENSOR if isinstance(x, Var) else x for x in leaves),
        out_spec,
        tuple(isinstance(x, torch.Tensor) for x in out_leaves),
    )
    written = _written_leaves(func, args, kwargs, leaves)
    prim = aten_prim(func, seeded=seed is not None, written=written)
    outs = list(current_builder().emit(prim, ([seed] if seed is not None else []) + inputs, call=call))
    new_values = dict(zip(written, outs[len(outs) - len(written) :]))
    outs = iter(outs)
    result = pytree.tree_unflatten([next(outs) if isinstance(x, torch.Tensor) else x for x in out_leaves], out_spec)
    return result, new_values


# ---------------------------------------------------------------------------------------------
# vmap's rules for in-place ops and random draws, asked of torch.func itself.


def vmap_error(func, args, batched: dict, size: int, randomness: str, level: int) -> Exception | None:
    """The error torch.func's vmap raises for `func(*args)` (the (args, kwargs) pytree, tensors as
    vars), with the vars in `batched` mapped over a batch of `size`, or None if it raises none.
    Runs the op on small stand-in tensors (zeros; ones for floating point, a valid probability),
    its random draws from a private generator state."""
    (pos, kw), leaves = args, pytree.tree_leaves(args)
    tensors = [x for x in leaves if isinstance(x, Var)]

    def stand_in(v: Var) -> torch.Tensor:
        shape = ((size,) if batched.get(v, False) else ()) + v.shape
        return torch.ones(shape, dtype=v.dtype) if v.dtype.is_floating_point else torch.zeros(shape, dtype=v.dtype)

    def op(*values):
        it = iter(values)
        a, k = pytree.tree_map(lambda x: next(it) if isinstance(x, Var) else x, (pos, kw))
        return func(*a, **k)

    # A leading placeholder carries the batch size, as in batch_prim: vmap needs one batched input.
    in_dims = (0, *(0 if batched.get(v, False) else None for v in tensors))
    try:
        with torch.random.fork_rng(devices=[]):
            placeholder = torch.empty(size, 0)
            torch_vmap(lambda _, *xs: op(*xs), in_dims=in_dims, randomness=randomness)(
                placeholder, *[stand_in(v) for v in tensors]
            )
    except Exception as e:  # noqa: BLE001  (whatever torch.func raises is the answer)
        message = str(e).replace("at level 1.", f"at level {level}.")
        return type(e)(message)
    return None


def replay_batched(op, tensor: torch.Tensor, in_dim: int | None, args, kwargs) -> None:
    """An in-place metadata op (x.t_(), x.unsqueeze_(0)) a vmapped function applied to its
    argument, applied to the caller's tensor the way torch.func's vmap does."""
    if in_dim is None:
        op(tensor, *args, **kwargs)
    else:
        torch_vmap(lambda x: op(x, *args, **kwargs), in_dims=in_dim)(tensor)


def replay_view_batched(tensor: torch.Tensor, chain: tuple, batched: bool) -> torch.Tensor | None:
    """The view ops a vmapped function applied to its argument (a per-example chain of
    trace.ViewStep), applied to the batched argument (batch first) the way torch.func's vmap does:
    the result is a view of it.  None where the real tensor's strides allow no such view (a
    reshape the trace saw as a view): torch's reshape copies there, like the computed result."""
    from .trace import replay_view

    try:
        if not batched:
            return replay_view(tensor, chain)
        return torch_vmap(lambda x: replay_view(x, chain))(tensor)
    except RuntimeError:
        return None
