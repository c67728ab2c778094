"""Transforms: Graph -> Graph rewrites.  Each one walks the graph once, asking every node's
primitive for its rule (primitives.py, fallback.py), and emits a new graph of the same primitives,
so transforms compose with each other and with tracing to any depth.

  jvp_graph: forward mode.  inputs (args, tangents, consts) -> (outputs, output tangents)
  vjp_graph: reverse mode.  inputs (args, output cotangents, consts) -> (outputs, input cotangents)
  vmap_graph: batching.  Batched values carry the batch as their leading axis, so the scheduler
      sees one bigger graph and the batch becomes part of every kernel's grid.

Reverse mode uses a VJP rule per primitive (elementwise primitives give their partial derivatives,
linear ones their transpose), not linearize-then-transpose: the rules are shorter and the forward
values the backward needs are recomputed inside the fused backward kernels instead of stored.
A symbolic zero is `None` throughout: zero tangents and cotangents cost nothing.
"""

from __future__ import annotations

import torch

from . import fallback
from . import primitives as P
from .graph import Builder, Graph, Node, Seed, Var, current_builder
from .primitives import OPAQUE, Primitive, with_batch_axis


def _differentiable(v: Var) -> bool:
    return v.dtype.is_floating_point


def _sum(terms: list[Var]) -> Var | None:
    total = None
    for t in terms:
        total = t if total is None else total + t
    return total


def _as_list(x, n: int) -> list:
    return list(x) if n > 1 or isinstance(x, (list, tuple)) else [x]


def jvp_rule(prim: Primitive, primals: list[Var], tangents: list, outs: tuple[Var, ...], params) -> list:
    """The output tangents (None: zero) of one node, given its input tangents."""
    if any(t is not None and t.dtype != x.dtype for t, x in zip(tangents, primals)):
        return _mixed_jvp_rule(prim, primals, tangents, outs, params)
    if prim.jvp is not None:
        return _as_list(prim.jvp(primals, tangents, outs if prim.multiple_results else outs[0], **params), len(outs))
    (out,) = outs
    if prim.deriv is not None:
        partials = prim.deriv(out, *primals, **params)
        return [_sum([t * d for t, d in zip(tangents, partials) if t is not None and d is not None])]
    if prim.transpose is not None:  # linear: the tangent goes through the primitive itself
        if prim is P.add and None in tangents:
            return [next(t for t in tangents if t is not None)]
        filled = [t if t is not None else P.like(x, 0) for t, x in zip(tangents, primals)]
        return [prim(*filled, **params)]
    raise NotImplementedError(f"tritonfunc: primitive {prim.name} has no forward-mode rule")


def _widest(dtypes) -> torch.dtype:
    dtypes = list(dtypes)
    wide = dtypes[0]
    for d in dtypes[1:]:
        wide = torch.promote_types(wide, d)
    return wide


def _mixed_jvp_rule(prim: Primitive, primals: list[Var], tangents: list, outs: tuple[Var, ...], params) -> list:
    """Tangents of another dtype than their primals (a float64 tangent for a float32 input), as
    torch's forward AD computes them: each formula promotes.  A partial derivative is computed in the
    primal's dtype, then multiplied in the wider one; a linear primitive runs in its tangents' dtype;
    a custom rule runs on primals widened to the tangents' dtype (exact: widening is)."""
    b = current_builder()
    present = [t for t in tangents if t is not None]
    if prim.deriv is not None:
        partials = prim.deriv(outs[0], *primals, **params)
        terms = [(t, d) for t, d in zip(tangents, partials) if t is not None and d is not None]
        wide = _widest([t.dtype for t, _ in terms] + [d.dtype for _, d in terms]) if terms else None
        return [_sum([b.cast(t, wide) * b.cast(d, wide) for t, d in terms])]
    if prim.transpose is not None:
        wide = _widest(t.dtype for t in present)
        if prim is P.add and None in tangents:
            return [present[0]]
        filled = [b.cast(t, wide) if t is not None else b.full(0, wide, x.shape) for t, x in zip(tangents, primals)]
        return [prim(*filled, **params)]
    if prim.strategy == OPAQUE:
        raise NotImplementedError(
            f"tritonfunc: jvp through {prim.name} with tangents of another dtype than their primals is not supported"
        )
    wide = _widest([t.dtype for t in present] + [x.dtype for x in primals if x.dtype.is_floating_point])

    def widen(v):
        return b.cast(v, wide) if v is not None and v.dtype.is_floating_point else v

    pushed = prim.jvp(
        [widen(x) for x in primals],
        [widen(t) for t in tangents],
        tuple(widen(o) for o in outs) if prim.multiple_results else widen(outs[0]),
        **params,
    )
    return _as_list(pushed, len(outs))


def vjp_rule(prim: Primitive, primals: list[Var], outs: tuple[Var, ...], cts: list, params) -> list:
    """The input cotangents (None: zero) of one node, given its output cotangents."""
    if prim.vjp is not None:
        if prim.multiple_results:
            return prim.vjp(primals, outs, cts, **params)
        return prim.vjp(primals, outs[0], cts[0], **params)
    (out,), (ct,) = outs, cts
    if prim.deriv is not None:
        return [None if d is None else ct * d for d in prim.deriv(out, *primals, **params)]
    if prim.transpose is not None:
        return prim.transpose(ct, out, *primals, **params)
    raise NotImplementedError(f"tritonfunc: primitive {prim.name} has no reverse-mode rule")


class _Copier:
    """A builder for the new graph, with the old graph's inputs and nodes copied into it, and extra
    inputs shaped like `extra_inputs` (of `extra_dtypes`, default theirs)."""

    def __init__(self, graph: Graph, extra_inputs: list[Var], extra_dtypes: list | None = None):
        self.b = Builder()
        self.args = [Var(v.shape, v.dtype) for v in graph.arg_inputs]
        self.consts = [Var(v.shape, v.dtype) for v in graph.const_inputs]
        extra_dtypes = extra_dtypes or [v.dtype for v in extra_inputs]
        self.extra = [Var(v.shape, d) for v, d in zip(extra_inputs, extra_dtypes)]
        self.env: dict[Var, Var] = dict(zip(graph.inputs, self.args + self.consts))
        self.graph = graph

    def copy(self, node: Node) -> tuple[Var, ...]:
        outs = self.b.emit(
            node.prim,
            [self.env[v] for v in node.inputs],
            no_grad=node.no_grad,
            no_fwd_grad=node.no_fwd_grad,
            **node.params,
        )
        outs = outs if node.prim.multiple_results else (outs,)
        self.env.update(zip(node.outs, outs))
        return outs

    def finish(self, outputs: list[Var]) -> Graph:
        g = self.graph
        checks = [op.renamed(self.env) for op in g.checks]
        inputs = self.args + self.extra + self.consts
        return Graph(inputs, self.b.nodes, outputs, len(self.consts), list(g.const_values), checks)


def _carries_derivative(node: Node, out: Var, forward: bool = False) -> bool:
    """Whether a node's output has a derivative.  Reverse mode obeys the user's no_grad blocks,
    forward mode the blocks with forward AD disabled, as torch's two modes do."""
    if node.no_fwd_grad if forward else node.no_grad:
        return False
    return not node.prim.nondiff and _differentiable(out)


def jvp_graph(graph: Graph, wrt: list[bool], tangent_dtypes: list | None = None) -> tuple[Graph, list[bool]]:
    """Adds one tangent input per argument marked in `wrt` (of `tangent_dtypes`, default the
    argument's) and one tangent output per output.

    Returns the new graph and, per output, whether it is independent of the marked arguments
    (its tangent is then zeros; jvp's strict mode refuses it).
    """
    marked = [v for v, w in zip(graph.arg_inputs, wrt) if w]
    c = _Copier(graph, marked, tangent_dtypes)
    tangent: dict[Var, Var] = {v: t for v, t in zip(marked, c.extra) if _differentiable(v)}
    with c.b:
        for node in graph.nodes:
            outs = c.copy(node)
            tans = [tangent.get(v) for v in node.inputs]
            if any(t is not None for t in tans) and any(_carries_derivative(node, o, forward=True) for o in node.outs):
                pushed = jvp_rule(node.prim, [c.env[v] for v in node.inputs], tans, outs, node.params)
                for v, t in zip(node.outs, pushed):
                    if t is not None and _carries_derivative(node, v, forward=True):
                        tangent[v] = t
        outs = [c.env[v] for v in graph.outputs]
        independent = [v not in tangent for v in graph.outputs]
        touts = [tangent[v] if v in tangent else P.like(o, 0) for v, o in zip(graph.outputs, outs)]
    return c.finish(outs + touts), independent


def vjp_graph(graph: Graph, wrt: list[bool], ct_for: list | None = None) -> Graph:
    """Adds a cotangent output per argument marked in `wrt`.  Each output's cotangent, per `ct_for`
    (default all True), is a new input (True), the constant 1 ("ones", grad's seed) or absent
    (False: not differentiated, like has_aux's aux)."""
    ct_for = ct_for or [True] * len(graph.outputs)
    seeded = [v for v, s in zip(graph.outputs, ct_for) if s is True]
    c = _Copier(graph, seeded)
    active = {v for v, w in zip(graph.arg_inputs, wrt) if w and _differentiable(v)}
    with c.b:
        for node in graph.nodes:
            c.copy(node)
            if any(v in active for v in node.inputs):
                active.update(v for v in node.outs if _carries_derivative(node, v))
        cts: dict[Var, list[Var]] = {}
        for v, ct in zip(seeded, c.extra):
            if v in active:
                cts.setdefault(v, []).append(ct)
        for v, s in zip(graph.outputs, ct_for):
            if s == "ones" and v in active:
                cts.setdefault(v, []).append(c.b.full(1, v.dtype, v.shape))
        for node in reversed(graph.nodes):
            if not any(v in cts for v in node.outs):
                continue
            out_cts = [_sum(cts.pop(v)) if v in cts else None for v in node.outs]
            primals = [c.env[v] for v in node.inputs]
            outs = tuple(c.env[v] for v in node.outs)
            for v, in_ct in zip(node.inputs, vjp_rule(node.prim, primals, outs, out_cts, node.params)):
                if in_ct is not None and v in active:
                    cts.setdefault(v, []).append(in_ct)
        grads = []
        for v, w in zip(graph.arg_inputs, wrt):
            if w:
                total = _sum(cts.get(v, []))
                grads.append(total if total is not None else c.b.full(0, v.dtype, v.shape))
    return c.finish([c.env[v] for v in graph.outputs] + grads)


RANDOMNESS = ("error", "different", "same")


def _random_error():
    return RuntimeError(
        "vmap: called random operation while in randomness error mode. Please either use the 'same' or "
        "'different' randomness flags on vmap or perform the randomness operation out of vmap"
    )


def vmap_graph(
    graph: Graph, batched: list[bool], size: int, randomness: str = "error", level: int = 1
) -> tuple[Graph, list[bool]]:
    """Adds a leading batch axis of `size` to the arguments marked in `batched` and to everything
    computed from them.  Returns the new graph and, per output, whether it is batched.

    In-place ops and random draws are then checked against torch.func's rules (`level`: this
    vmap's nesting level, which torch.func's messages name)."""
    b = Builder()
    args = [Var((size, *v.shape) if bt else v.shape, v.dtype) for v, bt in zip(graph.arg_inputs, batched)]
    consts = [Var(v.shape, v.dtype) for v in graph.const_inputs]
    env: dict[Var, Var] = dict(zip(graph.inputs, args + consts))
    is_batched: dict[Var, bool] = {v: bt for v, bt in zip(graph.arg_inputs, batched)}
    # A draw is this function's own when its seed is a seed input (drawn when the graph runs).  One
    # seeded by a fixed value (a vjp_fn replaying its forward's draws) is a function of its inputs.
    seeds = {v for v, c in zip(graph.const_inputs, graph.const_values) if isinstance(c, Seed)}
    with b:
        for node in graph.nodes:
            ins = [env[v] for v in node.inputs]
            flags = [is_batched.get(v, False) for v in node.inputs]
            start = len(b.nodes)
            fresh = node.prim.random and bool(node.inputs) and node.inputs[0] in seeds
            if fresh and randomness == "error":
                raise _random_error()
            if node.prim is P.rand and fresh:
                if randomness == "same" and any(flags):
                    raise RuntimeError(
                        "Vmap does not currently support same randomness with a batched tensor input. Please file "
                        "an issue with functorch"
                    )
                shape = (size, *node.params["shape"]) if randomness == "different" else node.params["shape"]
                if randomness == "different":
                    ins = [ins[0]] + [with_batch_axis(v, f, size) for v, f in zip(ins[1:], flags[1:])]
                outs = P.rand(*ins, **{**node.params, "shape": shape})
                now_batched = randomness == "different"
            elif node.prim is P.rand:  # the same values for every example: they ignore the data input
                outs = P.rand(ins[0], **node.params)
                now_batched = False
            elif any(flags) or (fresh and randomness == "different"):  # "same": one draw
                extra = {"randomness": randomness if fresh else "same"} if node.prim.random else {}
                outs = node.prim.batch(ins, flags, size, **extra, **node.params)
                now_batched = True
            else:
                outs = b.emit(node.prim, ins, **node.params)
                now_batched = False
            for emitted in b.nodes[start:]:
                emitted.no_grad, emitted.no_fwd_grad = node.no_grad, node.no_fwd_grad
            outs = outs if node.prim.multiple_results else (outs,)
            for v, o in zip(node.outs, outs):
                env[v] = o
                is_batched[v] = now_batched
    for op in graph.checks:
        _check_batched_op(op, is_batched, size, randomness, level)
    outs = [env[v] for v in graph.outputs]
    checks = [op.renamed(env) for op in graph.checks]
    new = Graph(args + consts, b.nodes, outs, len(consts), list(graph.const_values), checks)
    return new, [is_batched.get(v, False) for v in graph.outputs]


def _check_batched_op(op, is_batched: dict[Var, bool], size: int, randomness: str, level: int) -> None:
    """Raises torch.func's error where vmap refuses an in-place op or a random draw: a batched
    value written into an unbatched tensor, "different" in-place randomness on an unbatched
    tensor, "same" randomness with a batched argument.  torch.func itself gives the verdict and
    its words, on stand-in tensors, once this graph's batching makes a refusal possible."""
    tensors = op.vars
    if not tensors:
        return
    self_batched = is_batched.get(tensors[0], False) or (op.like is not None and is_batched.get(op.like, False))
    others_batched = any(is_batched.get(v, False) for v in tensors[1:])
    random = torch.Tag.nondeterministic_seeded in op.func.tags
    first = op.func._schema.arguments[0] if op.func._schema.arguments else None
    writes_self = first is not None and first.alias_info is not None and first.alias_info.is_write
    suspicious = writes_self and not self_batched and (others_batched or (random and randomness == "different"))
    suspicious |= random and randomness == "same" and (others_batched or (self_batched and not writes_self))
    if op.writes:  # writes beyond its schema: an unbatched one beside batched inputs
        unbatched = any(not is_batched.get(tensors[i], False) for i in op.writes)
        suspicious |= unbatched and any(is_batched.get(v, False) for v in tensors)
    if suspicious:
        error = fallback.vmap_error(op.func, op.args, is_batched, size, randomness, level)
        if error is not None:
            raise error
