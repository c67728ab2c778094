"""torch.autograd and torch.func around tritonfunc: one autograd.Function runs any graph.

A tritonfunc call whose inputs require grad (grad mode on), or that runs under a torch.func
transform, runs its graph through `GraphFunction`:

  - forward: the graph's Program (fused kernels), on the inputs' plain values;
  - backward: the graph's own VJP (`vjp_graph`), run the same way, so it is fused kernels too and is
    itself differentiable: double backward and MAML's second order are exact;
  - jvp (forward AD, torch.func.jvp): the graph's `jvp_graph`;
  - vmap (torch.func.vmap): the graph's `vmap_graph`, the batch on the kernels' grid.

Every derived graph is made once per graph and kept beside it (`Call`).  Nothing is saved between
forward and backward but the inputs: the backward recomputes what it needs inside its kernels
(recompute, not store: the fused backward re-reads the inputs, which it needs anyway).
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from . import runtime
from .graph import Graph
from .transforms import jvp_graph, vjp_graph, vmap_graph


def _float(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


class Call:
    """A graph and what tritonfunc derives from it for autograd, made once and kept."""

    def __init__(self, graph: Graph, run=None):
        self.graph = graph
        self._run = run  # runs the graph on plain tensors (default: runtime.execute)
        self._derived: dict = {}

    def execute(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._run is not None:
            return self._run(inputs)
        device = inputs[0].device if inputs else torch.device("cpu")
        return runtime.execute(self.graph, inputs, device)

    def _derive(self, key, make) -> Call:
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

    def backward(self, wrt: tuple[bool, ...], seeded: tuple[bool, ...]) -> Call:
        """Inputs: this graph's inputs, then a cotangent per seeded output; outputs: the cotangents
        of the inputs marked in `wrt`."""

        def make():
            g = self.graph
            as_args = Graph(g.inputs, g.nodes, g.outputs, 0, [], g.checks)  # every input differentiable
            back = vjp_graph(as_args, list(wrt), ct_for=list(seeded))
            return Call(Graph(back.inputs, back.nodes, back.outputs[len(g.outputs) :], 0, [], back.checks))

        return self._derive(("backward", wrt, seeded), make)

    def tangent(self, marked: tuple[bool, ...]) -> Call:
        """Inputs: this graph's inputs, then a tangent per marked input; outputs: the outputs'
        tangents."""

        def make():
            g = self.graph
            as_args = Graph(g.inputs, g.nodes, g.outputs, 0, [], g.checks)
            forward, _ = jvp_graph(as_args, list(marked))
            return Call(Graph(forward.inputs, forward.nodes, forward.outputs[len(g.outputs) :], 0, [], forward.checks))

        return self._derive(("tangent", marked), make)

    def batched(self, flags: tuple[bool, ...], size: int, randomness: str) -> tuple[Call, list[bool]]:
        def make():
            g = self.graph
            as_args = Graph(g.inputs, g.nodes, g.outputs, 0, [], g.checks)
            new, out_batched = vmap_graph(as_args, list(flags), size, randomness)
            call = Call(new)
            call.out_batched = out_batched
            return call

        call = self._derive(("vmap", flags, size, randomness), make)
        return call, call.out_batched


def needs_autograd(inputs: list[torch.Tensor]) -> bool:
    """Whether running a graph on these inputs must be recorded: grad mode on and an input that
    requires grad, an input of an enclosing torch.func transform, or a forward-mode dual tensor
    (torch.autograd.forward_ad: its tangent goes through GraphFunction's jvp)."""
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    dual = fwAD._current_level >= 0  # a dual_level is open
    for t in inputs:
        if wrapped(t) or (t.requires_grad and torch.is_grad_enabled()):
            return True
        if dual and fwAD.unpack_dual(t).tangent is not None:
            return True
    return False


def run(call: Call, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """call's graph on inputs, recorded by autograd (and torch.func) where it must be."""
    if not needs_autograd(inputs):
        return call.execute(inputs)
    return list(GraphFunction.apply(call, *inputs))


class GraphFunction(torch.autograd.Function):
    """A tritonfunc graph as one differentiable, batchable op."""

    @staticmethod
    def forward(call: Call, *inputs):
        return tuple(call.execute([t.detach() for t in inputs]))

    @staticmethod
    def setup_context(ctx, inputs, output):
        call, *tensors = inputs
        ctx.call = call
        ctx.save_for_backward(*tensors)
        ctx.save_for_forward(*tensors)
        ctx.mark_non_differentiable(*[o for o in output if not _float(o)])

    @staticmethod
    def backward(ctx, *cts):
        tensors = ctx.saved_tensors
        wrt = tuple(bool(n) and _float(t) for n, t in zip(ctx.needs_input_grad[1:], tensors))
        seeded = tuple(ct is not None and _float(ct) for ct in cts)
        if not any(wrt) or not any(seeded):
            return (None,) * (1 + len(tensors))
        back = ctx.call.backward(wrt, seeded)
        grads = iter(run(back, list(tensors) + [ct for ct, s in zip(cts, seeded) if s]))
        return (None, *[next(grads) if w else None for w in wrt])

    @staticmethod
    def jvp(ctx, _call_tangent, *tangents):
        tensors = ctx.saved_tensors
        marked = tuple(t is not None and _float(x) for t, x in zip(tangents, tensors))
        forward = ctx.call.tangent(marked)
        pushed = run(forward, list(tensors) + [t for t, m in zip(tangents, marked) if m])
        return tuple(pushed)

    @staticmethod
    def vmap(info, in_dims, call: Call, *inputs):
        flags = tuple(d is not None for d in in_dims[1:])
        moved = [x if d is None or d == 0 else x.movedim(d, 0) for x, d in zip(inputs, in_dims[1:])]
        batched, out_batched = call.batched(flags, info.batch_size, info.randomness)
        outs = run(batched, moved)
        return tuple(outs), tuple(0 if b else None for b in out_batched)
