"""The IR: a flat SSA list of primitive applications, printable like a jaxpr, and its builder.

A `Var` is a value with a shape and a dtype.  A `Node` applies one primitive to input vars with
static params and defines one or more output vars.  A `Graph` lists its input vars (the traced
arguments, then the captured constants), its nodes in a valid order, and its output vars.  Nothing
from the user's Python program survives in it except constants (scalars in params, tensors as
inputs) and, for ops run by torch, the op itself.

Two kinds of constants: captured tensors, and seeds.  A seed (`Seed`) stands for a random draw
from a torch generator made each time the graph runs (`bind_consts`), never at trace time, so a
graph traced once and run many times draws fresh random numbers at each run, and
`torch.manual_seed` makes runs repeatable.

Rules are written with vars as if they were numbers: `cos(x) * x_dot`, `1 - out * out`.  The
arithmetic goes to the *current builder* (one per thread, set with `with builder:`), which appends
nodes to the graph under construction.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import _disable_current_modes

_ids = itertools.count()


class Seed:
    """A constant input whose value is a fresh int64 seed drawn from `generator` (None: torch's
    default generator) each time the graph runs.  Identity matters: each random op has its own."""

    __slots__ = ("generator",)
    shape, dtype = (), torch.int64

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __repr__(self) -> str:
        return f"Seed({'default' if self.generator is None else self.generator.device})"

    def draw(self, device: torch.device) -> torch.Tensor:
        with _disable_current_modes():  # an enclosing trace's tracing mode must not catch this draw
            where = self.generator.device if self.generator is not None else "cpu"
            seed = torch.randint(0, 2**62, (), dtype=torch.int64, generator=self.generator, device=where)
            return seed.to(device)


def bind_consts(const_values: list, device: torch.device, placeholder_seeds: bool = False) -> list[torch.Tensor]:
    """The constants of one run: captured tensors as they are, seeds drawn now, in order (so a
    run's draws depend only on the generators' states).  `placeholder_seeds` gives zeros instead,
    for inspecting a graph without consuming random numbers."""
    return [
        (torch.zeros((), dtype=torch.int64, device=device) if placeholder_seeds else c.draw(device))
        if isinstance(c, Seed)
        else c
        for c in const_values
    ]


@dataclass(frozen=True)
class DType:
    short: str  # in printed graphs
    triton: str  # the Triton type a value is stored as
    signature: str  # in a kernel signature for ahead-of-time compilation


# The dtypes generated kernels handle; one table for the package.
DTYPES: dict[torch.dtype, DType] = {
    torch.float64: DType("f64", "tl.float64", "fp64"),
    torch.float32: DType("f32", "tl.float32", "fp32"),
    torch.float16: DType("f16", "tl.float16", "fp16"),
    torch.bfloat16: DType("bf16", "tl.bfloat16", "bf16"),
    torch.int64: DType("i64", "tl.int64", "i64"),
    torch.int32: DType("i32", "tl.int32", "i32"),
    torch.int16: DType("i16", "tl.int16", "i16"),
    torch.int8: DType("i8", "tl.int8", "i8"),
    torch.uint8: DType("u8", "tl.uint8", "u8"),
    torch.bool: DType("bool", "tl.int1", "i1"),
}


def short_dtype(dtype: torch.dtype) -> str:
    d = DTYPES.get(dtype)
    return d.short if d else str(dtype).replace("torch.", "")


# Every primitive by name (filled by primitives.py and fallback.py), so the builder can emit any.
PRIMS: dict[str, Any] = {}


class Var:
    """One SSA value.  Identity matters: two vars are equal only if they are the same object.

    Arithmetic operators emit primitives into the current builder; comparisons are not overloaded
    (vars are dictionary keys), use the `eq`/`lt`/... primitives instead.
    """

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
        return f"{short_dtype(self.dtype)}[{','.join(map(str, self.shape))}]"

    def __repr__(self) -> str:
        return f"Var({self.id}:{self.type_str})"

    def _binary(self, name: str, other, reverse: bool = False) -> Var:
        b = current_builder()
        other = other if isinstance(other, Var) else b.like(self, other)
        return b.emit(PRIMS[name], [other, self] if reverse else [self, other])

    def __add__(self, other):
        return self._binary("add", other)

    def __radd__(self, other):
        return self._binary("add", other, reverse=True)

    def __sub__(self, other):
        return self._binary("sub", other)

    def __rsub__(self, other):
        return self._binary("sub", other, reverse=True)

    def __mul__(self, other):
        return self._binary("mul", other)

    def __rmul__(self, other):
        return self._binary("mul", other, reverse=True)

    def __truediv__(self, other):
        return self._binary("div", other)

    def __rtruediv__(self, other):
        return self._binary("div", other, reverse=True)

    def __neg__(self):
        return current_builder().emit(PRIMS["neg"], [self])


@dataclass(eq=False)
class Node:
    prim: Any  # a primitives.Primitive
    inputs: list[Var]
    params: dict[str, Any]
    outs: tuple[Var, ...]
    # True when the op ran inside the user's torch.no_grad() block (reverse mode treats it as constant).
    no_grad: bool = False
    # True when it ran with forward-mode AD disabled (fwAD._set_fwd_grad_enabled(False)): forward mode
    # treats it as constant, as torch's forward AD does.
    no_fwd_grad: bool = False

    @property
    def out(self) -> Var:
        """The output of a single-output node."""
        assert len(self.outs) == 1, f"{self.prim.name} has {len(self.outs)} outputs"
        return self.outs[0]


@dataclass(frozen=True, eq=False)
class OpCall:
    """An in-place op or a random draw of a traced program: `func(*args)` with `args` the
    (args, kwargs) pytree, tensors as the vars they held just before the op (self first).  Whether
    vmap allows these depends on which arguments are batched (an unbatched tensor cannot take a
    batched value; "same" randomness refuses batched arguments), so vmap_graph checks each one."""

    func: Any  # the OpOverload
    args: Any  # pytree of (args, kwargs) with Vars for tensors
    # self was made by a factory "like" this var (zeros_like(x), x.new_empty(...)): under vmap it is
    # batched when that var is, as torch.func's factories on a batched tensor are.
    like: Var | None = None
    # Tensor arguments (positions among `vars`) the op writes although its schema does not say so
    # (batch norm's running statistics); empty: as the schema says.
    writes: tuple[int, ...] = ()

    def renamed(self, env: dict[Var, Var]) -> OpCall:
        args = pytree.tree_map(lambda x: env[x] if isinstance(x, Var) else x, self.args)
        return OpCall(self.func, args, None if self.like is None else env[self.like], self.writes)

    @property
    def vars(self) -> list[Var]:
        return [x for x in pytree.tree_leaves(self.args) if isinstance(x, Var)]


@dataclass(eq=False)
class Graph:
    inputs: list[Var]  # traced arguments first, then captured constants
    nodes: list[Node]
    outputs: list[Var]
    num_consts: int = 0  # how many of `inputs` (at the end) are constants
    const_values: list[torch.Tensor | Seed] = field(default_factory=list)
    # The in-place ops and random draws of the traced program, for vmap's checks.
    checks: list[OpCall] = field(default_factory=list)

    @property
    def arg_inputs(self) -> list[Var]:
        return self.inputs[: len(self.inputs) - self.num_consts]

    @property
    def const_inputs(self) -> list[Var]:
        return self.inputs[len(self.inputs) - self.num_consts :]

    def with_nodes(self, nodes: list[Node], outputs: list[Var] | None = None) -> Graph:
        """The same inputs and constants with other nodes (and outputs).  The vmap checks are not
        kept: the passes that rewrite nodes run after the transforms."""
        outputs = self.outputs if outputs is None else outputs
        return Graph(self.inputs, nodes, outputs, self.num_consts, self.const_values)

    def producers(self) -> dict[Var, Node]:
        return {v: n for n in self.nodes for v in n.outs}

    def pretty(self) -> str:
        names = _Namer()
        args = " ".join(f"{names(v)}:{v.type_str}" for v in self.arg_inputs)
        consts = " ".join(f"{names(v)}:{v.type_str}" for v in self.const_inputs)
        lines = [f"{{ lambda {args}" + (f" ; consts {consts}" if consts else "") + " ."]
        for i, n in enumerate(self.nodes):
            params = " ".join(f"{k}={_fmt_param(p)}" for k, p in n.params.items())
            params = f"[{params}]" if params else ""
            ins = " ".join(names(v) for v in n.inputs)
            outs = " ".join(f"{names(v)}:{v.type_str}" for v in n.outs)
            flag = "  # no_grad" if n.no_grad else "  # no_fwd_grad" if n.no_fwd_grad else ""
            head = "  let " if i == 0 else "      "
            lines.append(f"{head}{outs} = {n.prim.name}{params} {ins}{flag}".rstrip())
        lines.append(f"  in ({', '.join(names(v) for v in self.outputs)}) }}")
        return "\n".join(lines)

    __str__ = pretty


def _fmt_param(p: Any) -> str:
    if isinstance(p, torch.dtype):
        return short_dtype(p)
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


# ---------------------------------------------------------------------------------------------
# The builder.

_local = threading.local()


def current_builder() -> Builder:
    stack = getattr(_local, "builders", None)
    if not stack:
        raise RuntimeError("tritonfunc: graph arithmetic outside a builder (use `with builder:`)")
    return stack[-1]


class Builder:
    """Accumulates the nodes of one graph.  `with b:` makes it the target of var arithmetic and of
    calling a primitive (`cos(x)`); `b.mul(x, y)` emits any primitive by name."""

    def __init__(self, device: torch.device | None = None, track_grad_mode: bool = False):
        self.device = device
        # Tracing records the user's no_grad blocks; graph transforms set flags explicitly instead.
        self.track_grad_mode = track_grad_mode
        self.inputs: list[Var] = []
        self.nodes: list[Node] = []
        self.const_vars: dict[int, Var] = {}  # id(tensor or Seed) -> var
        self.const_values: list[torch.Tensor | Seed] = []
        self.checks: list[OpCall] = []

    def __enter__(self) -> Builder:
        if not hasattr(_local, "builders"):
            _local.builders = []
        _local.builders.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _local.builders.pop()

    def emit(
        self, prim, inputs: list[Var], *, no_grad: bool = False, no_fwd_grad: bool = False, **params
    ) -> Var | tuple[Var, ...]:
        """Appends prim(inputs) and returns its output var (a tuple for multi-output primitives)."""
        avals = prim.shape_rule(*[(v.shape, v.dtype) for v in inputs], **params)
        multi = prim.multiple_results
        if prim.kind == "view" and inputs and inputs[0].numel == 0 and not multi and 0 not in avals[0]:
            # a view that makes elements out of none (pad of an empty axis) holds only its fill,
            # and no kernel may read the empty operand
            return self.full(0, avals[1], avals[0])
        outs = tuple(Var(s, d) for s, d in avals) if multi else (Var(*avals),)
        if self.track_grad_mode and not torch.is_grad_enabled():
            no_grad = True
        if self.track_grad_mode and not torch._C._is_fwd_grad_enabled():
            no_fwd_grad = True
        self.nodes.append(Node(prim, list(inputs), params, outs, no_grad=no_grad, no_fwd_grad=no_fwd_grad))
        return outs if multi else outs[0]

    def const(self, t: torch.Tensor) -> Var:
        """A captured tensor as a graph input (read at each call, never baked into a kernel)."""
        if id(t) not in self.const_vars:
            if t.device != self.device and t.dim() == 0:
                t = t.to(self.device)  # a 0-d CPU tensor mixes with any device, as in torch
            elif t.device != self.device:
                raise RuntimeError(
                    f"Expected all tensors to be on the same device, but found at least two devices, "
                    f"{self.device} and {t.device}!"
                )
            v = Var(t.shape, t.dtype)
            self.const_vars[id(t)] = v
            self.const_values.append(t)
        return self.const_vars[id(t)]

    def const_value(self, v: Var) -> torch.Tensor | Seed | None:
        """The captured tensor (or seed) the constant var v stands for; None for any other var."""
        for value, var in zip(self.const_values, self.const_vars.values()):
            if var is v:
                return value
        return None

    def seed(self, seed: Seed | None = None) -> Var:
        """A seed input (an int64 scalar drawn at each run of the graph)."""
        seed = seed if seed is not None else Seed()
        v = Var((), torch.int64)
        self.const_vars[id(seed)] = v
        self.const_values.append(seed)
        return v

    def graph(self, outputs: list[Var]) -> Graph:
        consts = [self.const_vars[id(t)] for t in self.const_values]
        return Graph(self.inputs + consts, self.nodes, outputs, len(consts), list(self.const_values), list(self.checks))

    def __getattr__(self, name: str):
        prim = PRIMS.get(name)
        if prim is None:
            raise AttributeError(name)
        return lambda *inputs, **params: self.emit(prim, list(inputs), **params)

    # -- a small op library over vars ---------------------------------------------------------
    def like(self, v: Var, value) -> Var:
        """The constant `value` with v's shape and dtype."""
        return self.full(value, v.dtype, v.shape)

    def full(self, value, dtype: torch.dtype, shape=()) -> Var:
        v = self.emit(PRIMS["full"], [], value=value, shape=(), dtype=dtype)
        return self.broadcast_to(v, tuple(shape))

    def cast(self, v: Var, dtype: torch.dtype) -> Var:
        return v if v.dtype == dtype else self.emit(PRIMS["convert"], [v], dtype=dtype)

    def broadcast_to(self, v: Var, shape: tuple[int, ...]) -> Var:
        shape = tuple(shape)
        if v.shape == shape:
            return v
        lead = len(shape) - len(v.shape)
        return self.emit(PRIMS["broadcast_in_dim"], [v], shape=shape, dims=tuple(range(lead, len(shape))))

    def reshape(self, v: Var, shape) -> Var:
        shape = tuple(shape)
        return v if v.shape == shape else self.emit(PRIMS["reshape"], [v], shape=shape)

    def transpose(self, v: Var, perm) -> Var:
        perm = tuple(perm)
        return v if perm == tuple(range(len(perm))) else self.emit(PRIMS["transpose"], [v], perm=perm)

    def reduce(self, prim, v: Var, axes, keepdim: bool = False) -> Var:
        axes = tuple(sorted({a % max(len(v.shape), 1) for a in axes})) if v.shape else ()
        out = self.emit(prim, [v], axes=axes)
        if keepdim:
            out = self.reshape(out, tuple(1 if i in axes else s for i, s in enumerate(v.shape)))
        return out

    def operand(self, x, dtype: torch.dtype, shape) -> Var:
        """A var or Python scalar operand, cast to `dtype` and broadcast to `shape`."""
        v = self.full(x, dtype) if not isinstance(x, Var) else self.cast(x, dtype)
        return self.broadcast_to(v, shape)


# ---------------------------------------------------------------------------------------------
# The verifier: run between passes in the tests (TRITONFUNC_VERIFY=1).


class MalformedGraph(AssertionError):
    pass


def verify(graph: Graph, after: str = "") -> None:
    """Checks that `graph` is well formed: every var defined once before it is used, every node's
    outputs what its primitive's shape rule gives, every output defined, constants matching."""
    where = f" after {after}" if after else ""

    def fail(msg: str):
        raise MalformedGraph(f"tritonfunc: malformed graph{where}: {msg}\n{graph.pretty()}")

    defined: set[Var] = set()
    for v in graph.inputs:
        if v in defined:
            fail(f"input {v} listed twice")
        defined.add(v)
    if len(graph.const_values) != graph.num_consts:
        fail(f"{graph.num_consts} constant inputs but {len(graph.const_values)} values")
    for v, t in zip(graph.const_inputs, graph.const_values):
        if tuple(t.shape) != v.shape or t.dtype != v.dtype:
            fail(f"constant {v} holds a {t.dtype} value of shape {tuple(t.shape)}")
    for n in graph.nodes:
        for v in n.inputs:
            if v not in defined:
                fail(f"{n.prim.name} uses {v} before it is defined")
        avals = n.prim.shape_rule(*[(v.shape, v.dtype) for v in n.inputs], **n.params)
        avals = list(avals) if n.prim.multiple_results else [avals]
        if [(tuple(s), d) for s, d in avals] != [(v.shape, v.dtype) for v in n.outs]:
            fail(f"{n.prim.name} outputs {n.outs}, its shape rule gives {avals}")
        for v in n.outs:
            if v in defined:
                fail(f"{v} defined twice")
            defined.add(v)
    for v in graph.outputs:
        if v not in defined:
            fail(f"output {v} is never defined")
    for op in graph.checks:
        for v in op.vars:
            if v not in defined:
                fail(f"the record of {op.func} names {v}, which is never defined")
