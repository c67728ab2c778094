"""Transforms: Graph -> Graph rewrites.  Each one walks the graph once, asking every node's
primitive for its rule (primitives.py), and emits a new graph of the same primitives, so
transforms compose with each other and with tracing to any depth.

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

from . import primitives as P
from .graph import Graph, Var
from .primitives import with_batch_axis
from .trace import Builder


def _differentiable(v: Var) -> bool:
    return v.dtype.is_floating_point


class _Copier:
    """A builder for the new graph, with the old graph's inputs and nodes copied into it."""

    def __init__(self, graph: Graph, extra_inputs: list[Var]):
        self.b = Builder(level=-1, device=None, track_grad_mode=False)
        self.args = [Var(v.shape, v.dtype) for v in graph.arg_inputs]
        self.consts = [Var(v.shape, v.dtype) for v in graph.const_inputs]
        self.extra = [Var(v.shape, v.dtype) for v in extra_inputs]
        self.env: dict[Var, Var] = dict(zip(graph.inputs, self.args + self.consts))
        self.graph = graph

    def copy(self, node) -> Var:
        out = self.b.emit(node.prim, [self.env[v] for v in node.inputs], no_grad=node.no_grad, **node.params)
        self.env[node.out] = out
        return out

    def finish(self, outputs: list[Var]) -> Graph:
        return Graph(
            self.args + self.extra + self.consts, self.b.nodes, outputs, len(self.consts), list(self.graph.const_values)
        )


def _sum(b: Builder, terms: list[Var]) -> Var | None:
    total = None
    for t in terms:
        total = t if total is None else b.add(total, t)
    return total


def jvp_rule(b: Builder, prim: P.Primitive, primals, tangents, out, params) -> Var | None:
    if prim.jvp is not None:
        return prim.jvp(b, primals, tangents, out, **params)
    if prim.deriv is not None:
        partials = prim.deriv(b, primals, out, **params)
        return _sum(b, [b.mul(t, d) for t, d in zip(tangents, partials) if t is not None and d is not None])
    if prim.transpose is not None:  # linear: the tangent goes through the primitive itself
        if prim is P.add and None in tangents:
            return next(t for t in tangents if t is not None)
        filled = [t if t is not None else b.like(x, 0) for t, x in zip(tangents, primals)]
        return b.emit(prim, filled, **params)
    raise NotImplementedError(f"tritonfunc: primitive {prim.name} has no forward-mode rule")


def vjp_rule(b: Builder, prim: P.Primitive, primals, out, ct, params) -> list[Var | None]:
    if prim.vjp is not None:
        return prim.vjp(b, primals, out, ct, **params)
    if prim.deriv is not None:
        return [None if d is None else b.mul(ct, d) for d in prim.deriv(b, primals, out, **params)]
    if prim.transpose is not None:
        return prim.transpose(b, ct, primals, out, **params)
    raise NotImplementedError(f"tritonfunc: primitive {prim.name} has no reverse-mode rule")


def _carries_derivative(node, forward: bool = False) -> bool:
    """Whether a node's output has a derivative.  Reverse mode obeys the user's no_grad blocks;
    forward mode, like torch's forward AD, does not."""
    if node.no_grad and not forward:
        return False
    return not (node.prim.nondiff or not _differentiable(node.out))


def jvp_graph(graph: Graph, wrt: list[bool]) -> tuple[Graph, list[bool]]:
    """Adds one tangent input per argument marked in `wrt` and one tangent output per output.

    Returns the new graph and, per output, whether it is independent of the marked arguments
    (its tangent is then zeros; jvp's strict mode refuses it).
    """
    marked = [v for v, w in zip(graph.arg_inputs, wrt) if w]
    c = _Copier(graph, marked)
    b = c.b
    tangent: dict[Var, Var] = {}
    for v, t in zip(marked, c.extra):
        if _differentiable(v):
            tangent[v] = t
    for node in graph.nodes:
        out = c.copy(node)
        tans = [tangent.get(v) for v in node.inputs]
        if _carries_derivative(node, forward=True) and any(t is not None for t in tans):
            t = jvp_rule(b, node.prim, [c.env[v] for v in node.inputs], tans, out, node.params)
            if t is not None:
                tangent[node.out] = t
    outs = [c.env[v] for v in graph.outputs]
    independent = [v not in tangent for v in graph.outputs]
    touts = [tangent[v] if v in tangent else b.like(o, 0) for v, o in zip(graph.outputs, outs)]
    return c.finish(outs + touts), independent


def vjp_graph(graph: Graph, wrt: list[bool], ct_for: list | None = None) -> Graph:
    """Adds a cotangent output per argument marked in `wrt`.  Each output's cotangent, per `ct_for`
    (default all True), is a new input (True), the constant 1 ("ones", grad's seed) or absent
    (False: not differentiated, like has_aux's aux)."""
    ct_for = ct_for or [True] * len(graph.outputs)
    seeded = [v for v, s in zip(graph.outputs, ct_for) if s is True]
    c = _Copier(graph, seeded)
    b = c.b
    active = {v for v, w in zip(graph.arg_inputs, wrt) if w and _differentiable(v)}
    for node in graph.nodes:
        c.copy(node)
        if _carries_derivative(node) and any(v in active for v in node.inputs):
            active.add(node.out)
    cts: dict[Var, list[Var]] = {}
    for v, ct in zip(seeded, c.extra):
        if v in active:
            cts.setdefault(v, []).append(ct)
    for v, s in zip(graph.outputs, ct_for):
        if s == "ones" and v in active:
            cts.setdefault(v, []).append(b.full(1, v.dtype, v.shape))
    for node in reversed(graph.nodes):
        if node.out not in cts:
            continue
        ct = _sum(b, cts.pop(node.out))
        primals = [c.env[v] for v in node.inputs]
        for v, in_ct in zip(node.inputs, vjp_rule(b, node.prim, primals, c.env[node.out], ct, node.params)):
            if in_ct is not None and v in active:
                cts.setdefault(v, []).append(in_ct)
    grads = []
    for v, w in zip(graph.arg_inputs, wrt):
        if w:
            total = _sum(b, cts.get(v, []))
            grads.append(total if total is not None else b.full(0, v.dtype, v.shape))
    return c.finish([c.env[v] for v in graph.outputs] + grads)


RANDOMNESS = ("error", "different", "same")


def vmap_graph(graph: Graph, batched: list[bool], size: int, randomness: str = "error") -> tuple[Graph, list[bool]]:
    """Adds a leading batch axis of `size` to the arguments marked in `batched` and to everything
    computed from them.  Returns the new graph and, per output, whether it is batched."""
    b = Builder(level=-1, device=None, track_grad_mode=False)
    args = [Var((size, *v.shape) if bt else v.shape, v.dtype) for v, bt in zip(graph.arg_inputs, batched)]
    consts = [Var(v.shape, v.dtype) for v in graph.const_inputs]
    env: dict[Var, Var] = dict(zip(graph.inputs, args + consts))
    is_batched: dict[Var, bool] = {v: bt for v, bt in zip(graph.arg_inputs, batched)}
    for node in graph.nodes:
        ins = [env[v] for v in node.inputs]
        flags = [is_batched.get(v, False) for v in node.inputs]
        if node.prim is P.rand:
            if randomness == "error":
                raise RuntimeError(
                    "vmap: called random operation while in randomness error mode. Please either use the 'same' or "
                    "'different' randomness flags on vmap or perform the randomness operation out of vmap"
                )
            if randomness == "same" and any(flags):
                raise RuntimeError(
                    "Vmap does not currently support same randomness with a batched tensor input. Please file an "
                    "issue with functorch"
                )
            shape = (size, *node.params["shape"]) if randomness == "different" else node.params["shape"]
            if randomness == "different":
                ins = [ins[0]] + [with_batch_axis(b, v, f, size) for v, f in zip(ins[1:], flags[1:])]
            out = b.emit(P.rand, ins, no_grad=node.no_grad, **{**node.params, "shape": shape})
            is_batched[node.out] = randomness == "different"
        elif any(flags):
            start = len(b.nodes)
            out = node.prim.batch(b, ins, flags, size, **node.params)
            for emitted in b.nodes[start:]:
                emitted.no_grad = node.no_grad
            is_batched[node.out] = True
        else:
            out = b.emit(node.prim, ins, no_grad=node.no_grad, **node.params)
        env[node.out] = out
    outs = [env[v] for v in graph.outputs]
    new = Graph(args + consts, b.nodes, outs, len(consts), list(graph.const_values))
    return new, [is_batched.get(v, False) for v in graph.outputs]
