"""Scheduling: simplify the graph, decide which values reach global memory, group the rest.

Every value that reaches memory ("materialized": graph outputs, and reductions that cannot share a
kernel with their consumers) is computed by one kernel.  Inside a kernel nothing else touches
memory: each stored value is computed by walking back through its producers to materialized values,
at the index tuple the walk derives (`Entry`).  Kernels come in two shapes:
  - pointwise: one program axis over the N elements of the stored values (variable `o`);
  - rows: R rows x C reduced columns (variables `r`, `c`).  Every reduction in the kernel reduces
    C columns and is requested at an index that depends on the row only; values may be stored per
    row (R elements) or per element (R*C), so softmax, layer_norm and logsumexp are one kernel.
Values with the same kernel shape and no dependency between them share a launch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import primitives as P
from .graph import Graph, Node, Var
from .indexing import Idx, Index, unravel

# A row kernel keeps a whole row in registers up to this many columns; longer rows loop over
# column blocks, one loop per chain of dependent reductions (recomputing the loop's prologue).
# (16K fp32 is 32 values a thread at 16 warps: still registers, and one pass over the row.)
MAX_ROW_TILE = 16384
# A reduction of this many elements or more into fewer than SPLIT_MAX_ROWS rows would leave most of
# a GPU idle (one program per row): it is split into partial reductions over SPLIT_CHUNK-ish
# column blocks (many programs), then a small reduction of the partials.
SPLIT_MIN_ELEMENTS = 1 << 16
SPLIT_MAX_ROWS = 64
SPLIT_CHUNK = 2048


# ---------------------------------------------------------------------------------------------
# Graph simplification.


def _param_key(p):
    if isinstance(p, float):
        return ("float", repr(p))
    if isinstance(p, (list, tuple)):
        return tuple(_param_key(x) for x in p)
    return (type(p).__name__, p)


def _split_factor(rows: int, cols: int) -> int | None:
    """How many partial reductions to split each row into, or None to keep it whole."""
    if rows >= SPLIT_MAX_ROWS or rows * cols < SPLIT_MIN_ELEMENTS:
        return None
    parts = 1 << max(0, (cols // SPLIT_CHUNK).bit_length() - 1)
    while parts >= 8:
        if cols % parts == 0:
            return parts
        parts //= 2
    return None


def _split_reduction(n: Node) -> list[Node] | None:
    """reduce(x) over a long axis as reduce(reduce(x as [rows, parts, cols / parts]))."""
    (x,) = n.inputs
    axes = n.params["axes"]
    kept = [d for d in range(len(x.shape)) if d not in axes]
    rows, cols = n.out.numel, math.prod(x.shape[a] for a in axes)
    parts = _split_factor(rows, cols)
    if parts is None:
        return None
    nodes: list[Node] = []

    def add(prim, inputs, **params) -> Var:
        shape, dtype = prim.shape_rule(*[(v.shape, v.dtype) for v in inputs], **params)
        out = Var(shape, dtype)
        nodes.append(Node(prim, inputs, params, out, n.no_grad))
        return out

    v = x
    if kept + list(axes) != list(range(len(x.shape))):
        v = add(P.transpose, [v], perm=tuple(kept + list(axes)))
    v = add(P.reshape, [v], shape=(rows, parts, cols // parts))
    partial = add(n.prim, [v], axes=(2,))
    whole = add(n.prim, [partial], axes=(1,))
    nodes.append(Node(P.reshape, [whole], {"shape": n.out.shape}, n.out, n.no_grad))
    return nodes


def simplify(graph: Graph) -> Graph:
    """Splits long reductions, then common-subexpression elimination, then dead-code elimination."""
    split: list[Node] = []
    for n in graph.nodes:
        split.extend((_split_reduction(n) if n.prim.kind == "reduction" else None) or [n])
    graph = Graph(graph.inputs, split, graph.outputs, graph.num_consts, graph.const_values)
    rename: dict[Var, Var] = {}
    seen: dict[tuple, Var] = {}
    nodes: list[Node] = []
    for n in graph.nodes:
        inputs = [rename.get(v, v) for v in n.inputs]
        if n.prim.kind == "reduction":
            reduced = math.prod(inputs[0].shape[a] for a in n.params["axes"])
            if reduced == 1:  # reduces one element: a reshape
                n = Node(P.reshape, n.inputs, {"shape": n.out.shape}, n.out, n.no_grad)
            elif reduced == 0:  # reduces nothing: the identity (torch rejects max/min of nothing)
                identity = P.REDUCTIONS[n.prim.name].identity(n.out.dtype)
                n = Node(P.full, [], {"value": identity, "shape": n.out.shape, "dtype": n.out.dtype}, n.out)
                inputs = []
        key = (
            n.prim.name,
            tuple(v.id for v in inputs),
            n.no_grad,
            tuple(sorted((k, _param_key(p)) for k, p in n.params.items())),
        )
        if key in seen:
            rename[n.out] = seen[key]
            continue
        seen[key] = n.out
        nodes.append(Node(n.prim, inputs, n.params, n.out, n.no_grad))
    outputs = [rename.get(v, v) for v in graph.outputs]
    live = set(outputs)
    kept = []
    for n in reversed(nodes):
        if n.out in live:
            kept.append(n)
            live.update(n.inputs)
    return Graph(graph.inputs, kept[::-1], outputs, graph.num_consts, graph.const_values)


# ---------------------------------------------------------------------------------------------
# Kernel plans.


@dataclass(frozen=True)
class Domain:
    kind: str  # "pointwise" | "rows"
    size: int  # N (pointwise) or R (rows)
    cols: int = 1  # C (rows)


@dataclass(eq=False)
class Entry:
    """One value computed at one index inside a kernel."""

    var: Var
    index: Index
    op: str  # "load" | "node" | "reduce"
    node: Node | None
    inputs: list[Entry]
    deps: frozenset[str]  # iteration variables the value varies with
    stage: int  # reductions on the longest chain ending here (row kernels)


@dataclass(eq=False)
class Kernel:
    domain: Domain
    stores: list[tuple[Var, Entry]] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)  # dependencies before users

    @property
    def loads(self) -> list[Var]:
        out: list[Var] = []
        for e in self.entries:
            if e.op == "load" and e.var not in out:
                out.append(e.var)
        return out

    @property
    def name(self) -> str:
        prims: list[str] = []
        for e in self.entries:
            if e.node is not None and (e.node.prim.kind in ("elementwise", "reduction") or e.node.prim is P.rand):
                name = e.node.prim.name.removeprefix("reduce_")
                if name not in prims and name not in ("convert", "stop_gradient"):
                    prims.append(name)
        kind = "pointwise" if self.domain.kind == "pointwise" else "rows"
        body = "_".join(prims[:6]) + ("_etc" if len(prims) > 6 else "")
        return f"{kind}_{body or 'copy'}"


class NotFusable(Exception):
    """A reduction's result must reach memory before this value can be computed."""

    def __init__(self, var: Var):
        super().__init__(var)
        self.var = var


def iteration_vars(domain: Domain) -> dict[str, Idx]:
    if domain.kind == "pointwise":
        return {"o": Idx.var("o", domain.size)}
    return {"r": Idx.var("r", domain.size), "c": Idx.var("c", domain.cols)}


class _Planner:
    """Walks back from stored values, deriving the index at which each producer is needed."""

    def __init__(self, domain: Domain, materialized: set[Var], producers: dict[Var, Node]):
        self.domain = domain
        self.materialized = materialized
        self.producers = producers
        self.memo: dict[tuple, Entry] = {}
        self.order: list[Entry] = []
        self.vars = iteration_vars(domain)

    def value(self, var: Var, index: Index, stored: bool = False) -> Entry:
        """The entry computing `var` at `index`; a stored value is computed, not loaded back."""
        key = (var.id, tuple(i.render() for i in index))
        if key in self.memo and not (stored and self.memo[key].op == "load"):
            return self.memo[key]
        index_deps = frozenset().union(*(i.deps for i in index)) if index else frozenset()
        if (var in self.materialized and not stored) or var not in self.producers:
            entry = Entry(var, index, "load", None, [], index_deps, 0)
        else:
            node = self.producers[var]
            kind = node.prim.kind
            if kind == "reduction":
                entry = self._reduction(node, index, index_deps)
            else:
                if node.prim.index_rule is not None:
                    inputs = [self.value(v, i) for v, i in zip(node.inputs, node.prim.index_rule(node, index))]
                else:
                    inputs = [self.value(v, index) for v in node.inputs]
                deps = frozenset().union(*(e.deps for e in inputs)) if inputs else frozenset()
                if node.prim is P.iota:
                    deps = index[node.params["dim"]].deps
                elif node.prim is P.rand:
                    deps = index_deps
                stage = max((e.stage for e in inputs), default=0)
                entry = Entry(var, index, "node", node, inputs, deps, stage)
        self.memo[key] = entry
        self.order.append(entry)
        return entry

    def _reduction(self, node: Node, index: Index, index_deps) -> Entry:
        (x,) = node.inputs
        axes = node.params["axes"]
        reduced = math.prod(x.shape[a] for a in axes)
        if self.domain.kind != "rows" or reduced != self.domain.cols or "c" in index_deps:
            raise NotFusable(node.out)
        cols = iter(unravel(self.vars["c"], tuple(x.shape[a] for a in axes)))
        kept = iter(index)
        in_index = tuple(next(cols) if d in axes else next(kept) for d in range(len(x.shape)))
        inp = self.value(x, in_index)
        return Entry(node.out, index, "reduce", node, [inp], index_deps, inp.stage + 1)


def _region_reductions(var: Var, materialized: set[Var], producers: dict[Var, Node]) -> list[Node]:
    """Reductions computed by `var`'s kernel if nothing more is materialized, nearest first."""
    found, seen, frontier = [], {var}, [var]
    while frontier:
        nxt = []
        for v in frontier:
            node = producers.get(v)
            if node is None or (v in materialized and v is not var):
                continue
            if node.prim.kind == "reduction":
                found.append(node)
            for u in node.inputs:
                if u not in seen:
                    seen.add(u)
                    nxt.append(u)
        frontier = nxt
    return found


def _store_index(var: Var, domain: Domain, reductions: list[Node]) -> Index:
    it = iteration_vars(domain)
    if domain.kind == "pointwise":
        return unravel(it["o"], var.shape)
    r, c = it["r"], it["c"]
    if var.numel == domain.size:
        return unravel(r, var.shape)
    for red in reductions:  # per-element store: lay rows and columns out as the reduction does
        x = red.inputs[0]
        if x.shape == var.shape and math.prod(x.shape[a] for a in red.params["axes"]) == domain.cols:
            axes = red.params["axes"]
            kept = iter(unravel(r, tuple(s for d, s in enumerate(x.shape) if d not in axes)))
            cols = iter(unravel(c, tuple(x.shape[a] for a in axes)))
            return tuple(next(cols) if d in axes else next(kept) for d in range(len(x.shape)))
    return unravel(r * domain.cols + c, var.shape)


def _domain_for(var: Var, reductions: list[Node]) -> Domain:
    if not reductions:
        return Domain("pointwise", var.numel)
    red = reductions[0]
    rows = red.out.numel
    cols = math.prod(red.inputs[0].shape[a] for a in red.params["axes"])
    if var.numel not in (rows, rows * cols):
        raise NotFusable(red.out)
    return Domain("rows", rows, cols)


@dataclass(eq=False)
class Schedule:
    graph: Graph
    kernels: list[Kernel]
    materialized: list[Var]  # values some kernel stores, in order


def schedule(graph: Graph) -> Schedule:
    graph = simplify(graph)
    producers = graph.producers()
    position = {n.out: i for i, n in enumerate(graph.nodes)}
    materialized = {v for v in graph.outputs if v in producers}
    while True:
        try:
            kernels = _assign(graph, materialized, producers, position)
        except NotFusable as e:
            materialized.add(e.var)
            continue
        # A reduction planned into several kernels would be recomputed by each: store it once.
        owners: dict[Var, set[int]] = {}
        for k, kernel in enumerate(kernels):
            for e in kernel.entries:
                if e.op == "reduce":
                    owners.setdefault(e.var, set()).add(k)
        shared = [v for v, ks in owners.items() if len(ks) > 1]
        if not shared:
            break
        materialized.update(shared)
    stored = [v for k in kernels for v, _ in k.stores]
    return Schedule(graph, kernels, stored)


def _joint(a: Domain, b: Domain) -> Domain | None:
    """The domain of a kernel computing values of domains a and b, if one launch can do both.

    A pointwise value of R or R*C elements can ride along in a row kernel, stored per row or per
    element, unless the row kernel loops over long rows (it would recompute the value per loop).
    """
    if a == b:
        return a
    if a.kind == "rows" and b.kind == "rows":
        return None
    rows, flat = (a, b) if a.kind == "rows" else (b, a)
    if rows.cols <= MAX_ROW_TILE and flat.size in (rows.size, rows.size * rows.cols):
        return rows
    return None


def _assign(graph, materialized, producers, position) -> list[Kernel]:
    """Places each materialized value in the first kernel of its shape that runs after its inputs."""
    kernels: list[Kernel] = []
    owner: dict[Var, int] = {}
    for var in sorted(materialized, key=lambda v: position[v]):
        if var.numel == 0:  # nothing to compute: the runtime allocates it empty
            continue
        reductions = _region_reductions(var, materialized, producers)
        domain = _domain_for(var, reductions)
        planner = _Planner(domain, materialized, producers)
        planner.value(var, _store_index(var, domain, reductions), stored=True)
        reads = {e.var for e in planner.order if e.op == "load"}
        after = max((owner[v] for v in reads if v in owner), default=-1)
        slot = next((k for k in range(after + 1, len(kernels)) if _joint(kernels[k].domain, domain)), None)
        if slot is None:
            kernels.append(Kernel(domain))
            slot = len(kernels) - 1
        kernels[slot].domain = _joint(kernels[slot].domain, domain)
        kernels[slot].stores.append((var, None))
        owner[var] = slot
    for kernel in kernels:  # plan each kernel's stores together, sharing common entries
        planner = _Planner(kernel.domain, materialized, producers)
        reductions_of = {}
        for i, (var, _) in enumerate(kernel.stores):
            reductions_of[var] = _region_reductions(var, materialized, producers)
            entry = planner.value(var, _store_index(var, kernel.domain, reductions_of[var]), stored=True)
            kernel.stores[i] = (var, entry)
        kernel.entries = planner.order
    return kernels
