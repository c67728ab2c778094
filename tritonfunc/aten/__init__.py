"""The ATen lowering library: each ATen op expressed with primitives, one module per family.

A lowering is registered with `@lowers(op, ...)` and called while tracing as
`lowering(builder, out_meta, *args, **kwargs)`: the trace's builder (also the current builder, so
var arithmetic works), the op's result computed on meta tensors (torch's own shapes and dtypes),
then the op's arguments with tensors replaced by vars.  Ops with no lowering go through torch's
decomposition table, and what is left runs as a torch call (fallback.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

aten = torch.ops.aten
prims_ops = torch.ops.prims

LOWERINGS: dict[Any, Callable] = {}
VIEW_OPS: set = set()  # results alias their operand (in-place updates through them are refused)


def lowers(*ops, view: bool = False):
    """Registers a lowering for ATen overload packets or overloads."""

    def register(fn):
        for op in ops:
            if op in LOWERINGS:  # two families claiming one op: the later would win silently
                raise RuntimeError(f"tritonfunc: {op} is lowered twice ({LOWERINGS[op].__module__}, {fn.__module__})")
            LOWERINGS[op] = fn
            if view:
                VIEW_OPS.update([op] if not hasattr(op, "overloads") else [getattr(op, o) for o in op.overloads()])
        return fn

    return register


class Updates(NamedTuple):
    """What a lowering returns for an op that also updates arguments in place (batch norm's running
    statistics): the op's result, and the new value of each updated argument by position.  Tracing
    writes each back with `copy_`, so in-place rules apply as to the user's own code."""

    result: Any
    args: dict[int, Any]


def lowering_for(func) -> Callable | None:
    return LOWERINGS.get(func) or LOWERINGS.get(func.overloadpacket)


from . import attention, contractions, elementwise, nn, pooling, random, reductions, scatter, shapes  # noqa: E402, F401  (fill the tables)
