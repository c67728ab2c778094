"""The graph: a flat SSA list of primitive applications, printable like a jaxpr.

A `Var` is a value with a shape and a dtype.  A `Node` applies one primitive to input vars with
static params and defines one output var.  A `Graph` lists its input vars (the traced arguments,
then the captured constants), its nodes in a valid order, and its output vars.  Nothing from the
user's Python program survives in it except constants (scalars in params, tensors as inputs).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

_ids = itertools.count()


def _short_dtype(dtype: torch.dtype) -> str:
    return {
        torch.float64: "f64",
        torch.float32: "f32",
        torch.float16: "f16",
        torch.bfloat16: "bf16",
        torch.int64: "i64",
        torch.int32: "i32",
        torch.int16: "i16",
        torch.int8: "i8",
        torch.uint8: "u8",
        torch.bool: "bool",
    }.get(dtype, str(dtype).replace("torch.", ""))


class Var:
    """One SSA value.  Identity matters: two vars are equal only if they are the same object."""

    __slots__ = ("id", "shape", "dtype")

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype):
        self.id = next(_ids)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def type_str(self) -> str:
        return f"{_short_dtype(self.dtype)}[{','.join(map(str, self.shape))}]"

    def __repr__(self) -> str:
        return f"Var({self.id}:{self.type_str})"


@dataclass(eq=False)
class Node:
    prim: Any  # a primitives.Primitive
    inputs: list[Var]
    params: dict[str, Any]
    out: Var
    # True when the op ran inside the user's torch.no_grad() block (autodiff treats it as constant).
    no_grad: bool = False


@dataclass(eq=False)
class Graph:
    inputs: list[Var]  # traced arguments first, then captured constants
    nodes: list[Node]
    outputs: list[Var]
    num_consts: int = 0  # how many of `inputs` (at the end) are captured constants
    const_values: list[torch.Tensor] = field(default_factory=list)

    @property
    def arg_inputs(self) -> list[Var]:
        return self.inputs[: len(self.inputs) - self.num_consts]

    @property
    def const_inputs(self) -> list[Var]:
        return self.inputs[len(self.inputs) - self.num_consts :]

    def producers(self) -> dict[Var, Node]:
        return {n.out: n for n in self.nodes}

    def pretty(self) -> str:
        names = _Namer()
        args = " ".join(f"{names(v)}:{v.type_str}" for v in self.arg_inputs)
        consts = " ".join(f"{names(v)}:{v.type_str}" for v in self.const_inputs)
        lines = [f"{{ lambda {args}" + (f" ; consts {consts}" if consts else "") + " ."]
        for i, n in enumerate(self.nodes):
            params = " ".join(f"{k}={_fmt_param(p)}" for k, p in n.params.items())
            params = f"[{params}]" if params else ""
            ins = " ".join(names(v) for v in n.inputs)
            flag = "  # no_grad" if n.no_grad else ""
            head = "  let " if i == 0 else "      "
            lines.append(f"{head}{names(n.out)}:{n.out.type_str} = {n.prim.name}{params} {ins}{flag}".rstrip())
        lines.append(f"  in ({', '.join(names(v) for v in self.outputs)}) }}")
        return "\n".join(lines)

    __str__ = pretty


def _fmt_param(p: Any) -> str:
    if isinstance(p, torch.dtype):
        return _short_dtype(p)
    if isinstance(p, tuple):
        return "(" + ",".join(_fmt_param(x) for x in p) + ")"
    return repr(p)


class _Namer:
    """Names vars a, b, ..., z, ba, bb, ... in order of first appearance, like jaxprs."""

    def __init__(self):
        self.names: dict[Var, str] = {}

    def __call__(self, v: Var) -> str:
        if v not in self.names:
            i, s = len(self.names), ""
            while True:
                s = chr(ord("a") + i % 26) + s
                i //= 26
                if i == 0:
                    break
            self.names[v] = s
        return self.names[v]
