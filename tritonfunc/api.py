"""The public entry points.  For this stage: jit (the forward alone) and explain."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.utils import _pytree as pytree

from . import runtime
from .codegen import generate
from .schedule import schedule
from .trace import trace


def _tensor_leaves(args, kwargs) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]


def _device_of(tensors: list[torch.Tensor]) -> torch.device:
    return tensors[0].device if tensors else torch.device("cpu")


def jit(fn: Callable) -> Callable:
    """Traces `fn` at each call, fuses it into Triton kernels and runs them.

    Tensor arguments (in any pytree) are inputs; tensors the function captures are read at each
    call, so a closure never sees stale values.  Kernels are cached by graph and strides.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = _tensor_leaves(args, kwargs)
        device = _device_of(tensors)
        graph, out_spec, statics = trace(fn, args, kwargs, device=device)
        outs = iter(runtime.execute(graph, tensors + graph.const_values, device))
        leaves = [next(outs) if s is None else s for s in statics]
        return pytree.tree_unflatten(leaves, out_spec)

    return wrapper


def explain(fn: Callable) -> Callable[..., str]:
    """`explain(f)(*args)` returns the traced graph, its kernel groups and their Triton source."""

    def explained(*args, **kwargs) -> str:
        tensors = _tensor_leaves(args, kwargs)
        graph, _, _ = trace(fn, args, kwargs, device=_device_of(tensors))
        inputs = tensors + graph.const_values
        sched = schedule(graph)
        strides = {v: tuple(t.stride()) for v, t in zip(graph.inputs, inputs)}
        parts = ["# graph", graph.pretty(), "", f"# {len(sched.kernels)} kernel(s)"]
        for i, kernel in enumerate(sched.kernels):
            ks = generate(kernel, strides)
            parts += [
                "",
                f"## kernel {i}: {ks.name}  grid={ks.grid}  bytes read={ks.bytes_read} written={ks.bytes_written}",
                ks.source,
            ]
        return "\n".join(parts)

    return explained
