"""Scheduling: the graph passes, then which values reach global memory, grouped into a Program.

The passes (ghost norms, expand small contractions, split long reductions, fold trivial ones, CSE,
DCE) rewrite the graph; `schedule` then orders the work into steps: generated kernels, and torch calls for OPAQUE
nodes (whose inputs reach memory and whose outputs kernels read like graph inputs).
Every other value that reaches memory ("materialized": graph outputs, and reductions that cannot share a
kernel with their consumers) is computed by one kernel.  Inside a kernel nothing else touches
memory: each stored value is computed by walking back through its producers to materialized values,
at the index tuple the walk derives (`Entry`).  Kernels come in four shapes:
  - pointwise: one program axis over the N elements of the stored values (variable `o`);
  - rows: R rows x C reduced columns (variables `r`, `c`).  Every reduction in the kernel reduces
    C columns and is requested at an index that depends on the row only; values may be stored per
    row (R elements) or per element (R*C), so softmax, layer_norm and logsumexp are one kernel.
    A scan (cumsum) runs along the C columns of a row held in registers, and is requested where
    the kernel lays rows and columns out as the scan does.
  - contraction: a tl.dot GEMM (kernels/contraction.py) over batch x [M x N] output tiles
    (variables `b`, `m`, `n`).  Each dot_general is computed at (b, m, n); its operands are walked at
    (b, m, ka) and (b, kb, n), so their producers run in the k loop (the prologue).  Values computed
    from the dot are stored from the tile where the dot's index pushes forward to theirs (the
    epilogue, see `_epilogue_index`): elementwise chains, views, reductions along a row that fits
    the tile, and an outer product written in a loop over its extra axis; per-row reductions along
    other axes run in loops of their own.
    A contraction over at most INNER_DOT_K elements needed inside another kernel (in a prologue, a
    reduction's loop, an epilogue, a row kernel's tile) is computed there instead of reaching
    memory (`_Planner._inner_dot`).
  - samples: when the whole graph runs per sample of a vmap and each sample's values are small
    matrices (`sample_region`), one program per sample computes all of it, each value one register
    tile (an attention block's per-sample gradients: one launch instead of a GEMM launch per level).
Values with the same kernel shape and no dependency between them share a launch; a value computed
from what a contraction kernel stores joins that kernel when it can (`_join`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

from . import primitives as P
from .graph import Builder, Graph, Node, Var, current_builder
from .indexing import Idx, Index, reshape_index, unravel

# A row kernel keeps a whole row in registers up to this many columns; longer rows loop over
# column blocks, one loop per chain of dependent reductions (recomputing the loop's prologue).
# (16K fp32 is 32 values a thread at 16 warps: still registers, and one pass over the row.)
MAX_ROW_TILE = 16384
# A reduction along a contraction's output rows (softmax, cross-entropy) is fused into its epilogue when
# the row fits one output tile of the kernel (then BN covers N, and grid axis 0 runs over rows only).
MAX_EPILOGUE_ROW = 256
# A reduction of this many elements or more into fewer than SPLIT_MAX_ROWS rows would leave most of
# a GPU idle (one program per row): it is split into partial reductions over SPLIT_CHUNK-ish
# column blocks (many programs), then a small reduction of the partials.
SPLIT_MIN_ELEMENTS = 1 << 16
SPLIT_MAX_ROWS = 64
SPLIT_CHUNK = 2048
# A contraction runs as a tl.dot template kernel when it has a matrix's shape: at least 2 along each
# of M, N and K, and at least MIN_DOT_DIM along one of them.  A matrix-vector product (N = 1), a dot
# product and an outer product (K = 1) are expanded into a broadcast multiply and a sum, which fuse
# into the row and pointwise kernels around them (a matvec inside a row softmax is one row kernel).
# Small sizes are padded to tl.dot's tiles (16 in each dimension on sm_90 with triton 3.6): that
# wastes tensor-core work on a contraction that is memory-bound anyway, but the GEMM kernel is what
# fuses the epilogue (a cross-entropy over 10 classes, a per-sample outer product): measured on the
# perf suite's plans at GPU sizes, requiring 16 in every dimension instead took per-sample gradients
# of a linear model from 1 to 5 launches, of an MLP 784-128-10 from 3 to 8, an HVP from 5 to 10.
MIN_DOT_DIM = 16
MIN_DOT_EXTENT = 2
# A contraction over at most this many elements is computed inside any kernel that needs it over
# two of its tile variables (a row and a column of the kernel's 2-d tiles), as the sum of K outer
# products of a column and a row of its operands, instead of being stored by a GEMM kernel of its
# own and read back: the hidden layer's gradient g @ W2 through a classifier's 10 logits is
# recomputed inside the kernel of that layer's weight and bias gradients (the HVP of an MLP: one
# launch fewer, and a [batch, hidden] pair neither written nor read back).  It costs K FMAs per
# element of the tile, against the BN (or more) of the enclosing kernel's own dot.
INNER_DOT_K = 16
# Where a contraction's kernel would fuse nothing (both operands read as they lie in memory, the
# product stored as it is), torch's own matmul (cuBLAS on a GPU) could run it instead, as a torch
# call.  Not yet measured on a GPU, so off: every contraction is a template kernel.  To decide, time
# the perf suite's contraction workloads at GPU sizes with this on and off, and keep the torch call
# only for the shapes where cuBLAS wins.
UNFUSED_DOT_AS_TORCH_CALL = False
DOT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Graph passes: Graph -> Graph, run in order by pipeline.py.


def _param_key(p):
    if isinstance(p, float):
        return ("float", repr(p))
    if isinstance(p, (list, tuple)):
        return tuple(_param_key(x) for x in p)
    if isinstance(p, (int, bool, str, type(None), torch.dtype)):
        return (type(p).__name__, p)
    return (type(p).__name__, repr(p))


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
    b = Builder()
    with b:
        v = b.transpose(x, kept + list(axes))
        v = b.reshape(v, (rows, parts, cols // parts))
        whole = n.prim(n.prim(v, axes=(2,)), axes=(1,))
    for node in b.nodes:
        node.no_grad = n.no_grad
    return b.nodes + [Node(P.reshape, [whole], {"shape": n.out.shape}, n.outs, n.no_grad)]


def split_long_reductions(graph: Graph) -> Graph:
    nodes: list[Node] = []
    for n in graph.nodes:
        nodes.extend((_split_reduction(n) if n.prim.kind == "reduction" else None) or [n])
    return graph.with_nodes(nodes)


def fold_trivial_reductions(graph: Graph) -> Graph:
    """A reduction of one element is a reshape; of none, its identity (torch rejects max of nothing)."""
    nodes = []
    for n in graph.nodes:
        if n.prim.kind == "reduction":
            reduced = math.prod(n.inputs[0].shape[a] for a in n.params["axes"])
            if reduced == 1:
                n = Node(P.reshape, n.inputs, {"shape": n.out.shape}, n.outs, n.no_grad)
            elif reduced == 0:
                value = n.prim.identity(n.out.dtype)
                n = Node(P.full, [], {"value": value, "shape": n.out.shape, "dtype": n.out.dtype}, n.outs)
        nodes.append(n)
    return graph.with_nodes(nodes)


# ---------------------------------------------------------------------------------------------
# Ghost norms.  The squared Frobenius norm of each batch element of a contraction, d[b] = A[b]^T B[b]
# over K contracted elements, is <A[b] A[b]^T, B[b] B[b]^T>: two K x K Gram matrices instead of the
# d[b] themselves.  For per-sample gradients of a linear layer (K = 1: an outer product g x^T) it is
# |g|^2 |x|^2, so DP-SGD's per-sample clipping norms never form the per-sample gradients at all.


def _views_back(var: Var, producers: dict[Var, Node]) -> tuple[Node, list[Node]] | None:
    """The dot_general that var is a reshape / transpose view of, and the views from var down to it."""
    views = []
    while True:
        node = producers.get(var)
        if node is None:
            return None
        if node.prim is P.dot_general:
            return node, views
        if node.prim not in (P.reshape, P.transpose):
            return None
        views.append(node)
        var = node.inputs[0]


def _ghost_norm(reduction: Node, producers: dict[Var, Node]) -> Var | None:
    """sum(d * d) over d's free axes, per batch element, from Gram matrices; None where it does not
    apply or does not pay (K * (Fa + Fb) >= Fa * Fb)."""
    (sq,) = reduction.inputs
    square = producers.get(sq)
    if square is None or square.prim is not P.mul or square.inputs[0] is not square.inputs[1]:
        return None
    found = _views_back(square.inputs[0], producers)
    if found is None:
        return None
    dot, views = found
    y = square.inputs[0]
    # y's index, walked back through the views to d's: the kept axes must address d's batch axes
    # and the summed axes its free axes, each exactly.
    names = [Idx.var(f"y{i}", n) for i, n in enumerate(y.shape)]
    index = tuple(names)
    for view in views:
        (index,) = view.prim.index_rule(view, index)
    summed = set(reduction.params["axes"])
    nb = len(dot.params["batch"][0])
    kept_vars = {f"y{i}" for i in range(len(y.shape)) if i not in summed}
    batch_deps = frozenset().union(*(i.deps for i in index[:nb])) if nb else frozenset()
    free_deps = frozenset().union(*(i.deps for i in index[nb:])) if len(index) > nb else frozenset()
    if not batch_deps <= kept_vars or free_deps & kept_vars:
        return None
    batch_shape = dot.out.shape[:nb]
    kept = tuple(y.shape[i] for i in range(len(y.shape)) if i not in summed)
    if math.prod(kept) != math.prod(batch_shape):
        return None
    if tuple(i.render() for i in index[:nb]) != tuple(
        i.render() for i in unravel(_ravel_kept(names, y.shape, summed), batch_shape)
    ):
        return None  # the kept axes lay the batch out in another order
    m, n, k, _ = contraction_sizes(dot)
    if k * (m + n) >= m * n or reduction.out.dtype not in DOT_DTYPES:
        return None
    a, b = dot.inputs
    (ca, cb), (ba, bb) = dot.params["contract"], dot.params["batch"]
    fa, fb = P.dot_axes(len(a.shape), len(b.shape), dot.params["contract"], dot.params["batch"])
    gram_a = P.dot_general(a, a, contract=(tuple(fa), tuple(fa)), batch=(tuple(ba), tuple(ba)))
    gram_b = P.dot_general(b, b, contract=(tuple(fb), tuple(fb)), batch=(tuple(bb), tuple(bb)))
    # gram_a's axes: batch, a's contracted axes in a's order, twice; pair b's with them
    order_a, order_b = sorted(ca), sorted(cb)
    pairs = [order_b.index(cb[ca.index(d)]) for d in order_a]
    nc = len(ca)
    perm = list(range(nb)) + [nb + j for j in pairs] + [nb + nc + j for j in pairs]
    gram_b = current_builder().transpose(gram_b, perm)
    total = current_builder().reduce(P.reduce_sum, gram_a * gram_b, tuple(range(nb, nb + 2 * nc)))
    return current_builder().reshape(total, reduction.out.shape)


def _ravel_kept(names, shape, summed) -> Idx:
    flat = Idx.of(0)
    for i, n in enumerate(shape):
        if i not in summed:
            flat = flat * n + names[i]
    return flat


def ghost_norms(graph: Graph) -> Graph:
    """Rewrites each per-batch-element sum of squares of a contraction as a ghost norm (above)."""
    producers = graph.producers()
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.prim is P.reduce_sum:
            b = Builder()
            with b:
                value = _ghost_norm(node, producers)
            if value is not None:
                for emitted in b.nodes:
                    emitted.no_grad = node.no_grad
                nodes += b.nodes
                nodes.append(Node(P.reshape, [value], {"shape": node.out.shape}, node.outs, node.no_grad))
                continue
        nodes.append(node)
    return graph.with_nodes(nodes)


def contraction_sizes(node: Node) -> tuple[int, int, int, int]:
    """(M, N, K, batch) of a dot_general: the products of a's free, b's free, contracted, batch sizes."""
    a, b = node.inputs
    (ca, _), (ba, _) = node.params["contract"], node.params["batch"]
    fa, fb = P.dot_axes(len(a.shape), len(b.shape), node.params["contract"], node.params["batch"])
    size = lambda v, axes: math.prod(v.shape[d] for d in axes)
    return size(a, fa), size(b, fb), size(a, ca), size(a, ba)


def uses_tensor_cores(node: Node) -> bool:
    """Whether a dot_general runs as a tl.dot template kernel (else it is expanded, see below)."""
    m, n, k, _ = contraction_sizes(node)
    return node.out.dtype in DOT_DTYPES and min(m, n, k) >= MIN_DOT_EXTENT and max(m, n, k) >= MIN_DOT_DIM


def expand_small_contractions(graph: Graph) -> Graph:
    """A dot_general without a matrix's shape (see MIN_DOT_DIM) becomes a broadcast multiply and a
    sum, which fuse into the pointwise and row kernels around it (an outer product is a pointwise
    kernel, a dot product or a matrix-vector product a row reduction)."""
    nodes: list[Node] = []
    for n in graph.nodes:
        if n.prim is not P.dot_general or uses_tensor_cores(n):
            nodes.append(n)
            continue
        b = Builder()
        with b:
            value = P.expand_dot_general(*n.inputs, **n.params)
        for node in b.nodes:
            node.no_grad = n.no_grad
        nodes += b.nodes
        nodes.append(Node(P.reshape, [value], {"shape": n.out.shape}, n.outs, n.no_grad))
    return graph.with_nodes(nodes)


def eliminate_common_subexpressions(graph: Graph) -> Graph:
    rename: dict[Var, Var] = {}
    seen: dict[tuple, tuple[Var, ...]] = {}
    nodes: list[Node] = []
    for n in graph.nodes:
        inputs = [rename.get(v, v) for v in n.inputs]
        key = (
            n.prim.name,
            tuple(v.id for v in inputs),
            n.no_grad,
            tuple(sorted((k, _param_key(p)) for k, p in n.params.items())),
        )
        if key in seen and not n.prim.random:  # two draws are two different values
            rename.update(zip(n.outs, seen[key]))
            continue
        seen[key] = n.outs
        nodes.append(Node(n.prim, inputs, n.params, n.outs, n.no_grad))
    return graph.with_nodes(nodes, [rename.get(v, v) for v in graph.outputs])


def eliminate_dead_code(graph: Graph) -> Graph:
    live = set(graph.outputs)
    kept = []
    for n in reversed(graph.nodes):
        if any(v in live for v in n.outs):
            kept.append(n)
            live.update(n.inputs)
    return graph.with_nodes(kept[::-1])


# ---------------------------------------------------------------------------------------------
# Kernel plans.


@dataclass(frozen=True)
class Domain:
    kind: str  # "pointwise" | "rows" | "contraction" | "samples"
    size: int  # N (pointwise), R (rows) or the batch (contraction: grid axis 1; samples: the grid)
    cols: int = 1  # C (rows) or N (contraction: the output's columns)
    rows: int = 1  # M (contraction: the output's rows)


@dataclass(eq=False)
class Entry:
    """One value computed at one index inside a kernel."""

    var: Var
    index: Index
    op: str  # "load" | "node" | "reduce" | "scan" | "dot" | "inner_dot"
    node: Node | None
    inputs: list[Entry]
    deps: frozenset[str]  # iteration variables the value varies with
    stage: int  # reductions on the longest chain ending here (row kernels)
    loop: int | None = None  # a dot's k loop: its operands are read at k variables ka<loop>, kb<loop>


@dataclass(eq=False)
class Kernel:
    domain: Domain
    stores: list[tuple[Var, Entry]] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)  # dependencies before users
    riders: set[Var] = field(default_factory=set)  # per-row values that joined a contraction kernel
    region: SampleRegion | None = None  # a "samples" kernel: the per-sample nodes it computes

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
            computes = e.node is not None and e.node.prim.kind in ("elementwise", "reduction", "scan", "contraction")
            if computes or (e.node is not None and e.node.prim is P.rand):
                name = e.node.prim.name.removeprefix("reduce_").removesuffix("_general")
                if name not in prims and name not in ("convert", "stop_gradient"):
                    prims.append(name)
        if self.region is not None:
            prims = []
            for n in self.region.nodes:
                name = n.prim.name.removeprefix("reduce_").removesuffix("_general")
                if n.prim.kind != "view" and name not in prims and name not in ("convert", "stop_gradient"):
                    prims.append(name)
        kind = {"pointwise": "pointwise", "contraction": "gemm", "samples": "samples"}.get(self.domain.kind, "rows")
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
    if domain.kind == "contraction":
        return {"b": Idx.var("b", domain.size), "m": Idx.var("m", domain.rows), "n": Idx.var("n", domain.cols)}
    return {"r": Idx.var("r", domain.size), "c": Idx.var("c", domain.cols)}


# The iteration variable a row reduction reduces along: a row kernel's columns, a contraction's n.
REDUCED_VAR = {"rows": "c", "contraction": "n"}


def k_vars(loop: int, k: int) -> tuple[Idx, Idx]:
    """A dot's reduction variable in its two orientations: ka along a row of A, kb down a column of B."""
    return Idx.var(f"ka{loop}", k), Idx.var(f"kb{loop}", k)


def dot_natural_index(node: Node, b: Idx, m: Idx, n: Idx) -> Index:
    """The index of a dot_general's output element (b, m, n): batch axes, then a's free, then b's free."""
    x, y = node.inputs
    ba = node.params["batch"][0]
    fa, fb = P.dot_axes(len(x.shape), len(y.shape), node.params["contract"], node.params["batch"])
    return (
        unravel(b, tuple(x.shape[d] for d in ba))
        + unravel(m, tuple(x.shape[d] for d in fa))
        + unravel(n, tuple(y.shape[d] for d in fb))
    )


def dot_operand_indices(node: Node, b: Idx, m: Idx, n: Idx, ka: Idx, kb: Idx) -> tuple[Index, Index]:
    """Where the tile (b, m, ka) of A and (b, kb, n) of B is read: the fused prologue's index."""
    x, y = node.inputs
    (ca, cb), (ba, bb) = node.params["contract"], node.params["batch"]
    fa, fb = P.dot_axes(len(x.shape), len(y.shape), node.params["contract"], node.params["batch"])
    batch = unravel(b, tuple(x.shape[d] for d in ba))
    ks = tuple(x.shape[d] for d in ca)
    rows, cols = unravel(m, tuple(x.shape[d] for d in fa)), unravel(n, tuple(y.shape[d] for d in fb))
    xi = dict(zip(ba, batch)) | dict(zip(fa, rows)) | dict(zip(ca, unravel(ka, ks)))
    yi = dict(zip(bb, batch)) | dict(zip(fb, cols)) | dict(zip(cb, unravel(kb, ks)))
    return tuple(xi[d] for d in range(len(x.shape))), tuple(yi[d] for d in range(len(y.shape)))


def tile_axis(var: str) -> str | None:
    """Which axis of a kernel's 2-d tiles an iteration variable runs along: "row" ([:, None]: m, r,
    a k loop's kb), "col" ([None, :]: n, c, a k loop's ka, a reduction loop's kr), else None."""
    if var in ("m", "r") or var.startswith("kb"):
        return "row"
    if var in ("n", "c") or var.startswith(("ka", "kr")):
        return "col"
    return None


def _rendered(index: Index) -> tuple[str, ...]:
    return tuple(i.render() for i in index)


class _Planner:
    """Walks back from stored values, deriving the index at which each producer is needed."""

    def __init__(self, domain: Domain, materialized: set[Var], producers: dict[Var, Node]):
        self.domain = domain
        self.materialized = materialized
        self.producers = producers
        self.memo: dict[tuple, Entry] = {}
        self.order: list[Entry] = []
        self.vars = iteration_vars(domain)
        self.loops = 0  # dots planned so far: each gets its own k loop
        self.walk: list[Var] = []  # the values being computed, outermost first
        self._purity: dict[Var, bool] = {}

    def value(self, var: Var, index: Index, stored: bool = False) -> Entry:
        """The entry computing `var` at `index`; a stored value is computed, not loaded back."""
        key = (var.id, tuple(i.render() for i in index))
        if key in self.memo and not (stored and self.memo[key].op == "load"):
            return self.memo[key]
        index_deps = frozenset().union(*(i.deps for i in index)) if index else frozenset()
        if (var in self.materialized and not stored) or var not in self.producers:
            entry = Entry(var, index, "load", None, [], index_deps, 0)
        else:
            self.walk.append(var)
            try:
                entry = self._compute(var, index, index_deps)
            finally:
                self.walk.pop()
        self.memo[key] = entry
        self.order.append(entry)
        return entry

    def _compute(self, var: Var, index: Index, index_deps) -> Entry:
        node = self.producers[var]
        kind = node.prim.kind
        if kind == "reduction":
            entry = self._reduction(node, index, index_deps)
        elif kind == "contraction":
            entry = self._dot(node, index, index_deps)
        elif kind == "scan":
            entry = self._scan(node, index, index_deps)
        else:
            if node.prim.index_rule is not None:
                inputs = [self.value(v, i) for v, i in zip(node.inputs, node.prim.index_rule(node, index))]
            else:
                inputs = [self.value(v, index) for v in node.inputs]
            deps = frozenset().union(*(e.deps for e in inputs)) if inputs else frozenset()
            if node.prim is P.iota:
                deps = index[node.params["dim"]].deps
            elif node.prim in (P.rand, P.concatenate, P.pad):  # computed from the index itself
                deps = deps | index_deps
            stage = max((e.stage for e in inputs), default=0)
            entry = Entry(var, index, "node", node, inputs, deps, stage)
        return entry

    def _reduction(self, node: Node, index: Index, index_deps) -> Entry:
        (x,) = node.inputs
        axes = node.params["axes"]
        reduced = math.prod(x.shape[a] for a in axes)
        along, loop = REDUCED_VAR.get(self.domain.kind), None
        if self.domain.kind == "contraction":
            if not index_deps <= {"b", "m"}:  # per output row only (never a prologue's: see below)
                raise NotFusable(self._prologue_frontier())
            if reduced != self.domain.cols or self.domain.cols > MAX_EPILOGUE_ROW:
                # not along the tile's row: a loop of its own over the reduced elements (a bias
                # gradient beside its weight gradient, a count of targets), before the epilogue
                loop = self.loops
                self.loops += 1
        elif along is None or reduced != self.domain.cols or along in index_deps:
            raise NotFusable(node.out)
        elif any(x[0] == "j" for x in index_deps):  # an inner dot's operand: reduced before, not in it
            raise NotFusable(node.out)
        along = self.vars[along] if loop is None else Idx.var(f"kr{loop}", reduced)
        cols = iter(unravel(along, tuple(x.shape[a] for a in axes)))
        kept = iter(index)
        in_index = tuple(next(cols) if d in axes else next(kept) for d in range(len(x.shape)))
        inp = self.value(x, in_index)
        return Entry(node.out, index, "reduce", node, [inp], index_deps, inp.stage + 1, loop)

    def _dot(self, node: Node, index: Index, index_deps) -> Entry:
        """A dot is computed only in a contraction kernel of its own (batch, M, N), at its natural
        index (b, m, n): its operands are then walked at (b, m, ka) and (b, kb, n), which fuses
        their producers into the k loop (the prologue)."""
        m, n, k, batch = contraction_sizes(node)
        d, v = self.domain, self.vars
        elsewhere = d.kind != "contraction" or (batch, m, n) != (d.size, d.rows, d.cols)
        if elsewhere or _rendered(index) != _rendered(dot_natural_index(node, v["b"], v["m"], v["n"])):
            inner = self._inner_dot(node, index, index_deps)
            if inner is None:
                raise NotFusable(self._epilogue_frontier())
            return inner
        loop = self.loops
        self.loops += 1
        ka, kb = k_vars(loop, k)
        a_index, b_index = dot_operand_indices(node, v["b"], v["m"], v["n"], ka, kb)
        inputs = [self.value(node.inputs[0], a_index), self.value(node.inputs[1], b_index)]
        return Entry(node.out, index, "dot", node, inputs, index_deps, 0, loop)

    def _inner_dot(self, node: Node, index: Index, index_deps) -> Entry | None:
        """A small dot (see INNER_DOT_K) at `index`, where the output's a-side axes vary with one tile
        variable and its b-side axes with another, one of the tile's rows (m, r, a k loop's kb), the
        other of its columns (n, c, ka, kr): the operand varying with the rows is read at (row, ja),
        the other at (jb, column), ja = jb running over the contraction (codegen's inner_dot).
        None where that is not the case."""
        m, n, k, _ = contraction_sizes(node)
        d = self.domain
        if k > INNER_DOT_K or d.kind not in ("contraction", "rows"):
            return None
        x, y = node.inputs
        (ca, cb), (ba, bb) = node.params["contract"], node.params["batch"]
        fa, fb = P.dot_axes(len(x.shape), len(y.shape), (ca, cb), (ba, bb))
        deps = lambda part: frozenset().union(*(i.deps for i in part)) if part else frozenset()
        batch, rows, cols = index[: len(ba)], index[len(ba) : len(ba) + len(fa)], index[len(ba) + len(fa) :]
        da, db = deps(rows) - {"b"}, deps(cols) - {"b"}  # b: the program's batch element, one value
        if not deps(batch) <= {"b"} or len(da) != 1 or len(db) != 1:
            return None
        kind = {a: tile_axis(a) for a in da | db}
        if {kind[a] for a in da} | {kind[b] for b in db} != {"row", "col"}:
            return None
        loop = self.loops
        self.loops += 1
        ja, jb = (Idx.var(f"j{side}{loop}", k) for side in "ab")
        x_rows = kind[next(iter(da))] == "row"  # x is the operand varying with the tile's rows
        ks = tuple(x.shape[a] for a in ca)
        xi = dict(zip(ba, batch)) | dict(zip(fa, rows)) | dict(zip(ca, unravel(ja if x_rows else jb, ks)))
        yi = dict(zip(bb, batch)) | dict(zip(fb, cols)) | dict(zip(cb, unravel(jb if x_rows else ja, ks)))
        xe = self.value(x, tuple(xi[a] for a in range(len(x.shape))))
        ye = self.value(y, tuple(yi[a] for a in range(len(y.shape))))
        operands = [xe, ye] if x_rows else [ye, xe]  # [rows x K] @ [K x columns]
        stage = max(e.stage for e in operands)
        return Entry(node.out, index, "inner_dot", node, operands, index_deps, stage, loop)

    def _prologue_frontier(self) -> Var:
        """What reaches memory when a dot's operand needs a reduction: the highest value of the walk
        above the reduction that is no bigger (a per-row scale, not the operand it is broadcast
        into), so that the prologue reads it and the kernel computing the reduction stores it."""
        frontier = below = self.walk[-1]
        for var in reversed(self.walk[:-1]):
            node = self.producers[var]
            view = node.prim in (P.reshape, P.transpose)
            if var in self.materialized or var.numel > below.numel or not (view or node.prim.kind == "elementwise"):
                break
            below = var
            if not view:
                frontier = var
        return frontier

    def _epilogue_frontier(self) -> Var:
        """What reaches memory when a dot's result is needed outside its kernel: the last value of the
        walk that is still the dot's epilogue (a bias, an activation), so that the dot's own kernel
        stores it instead of the raw product.  A view above it is free to its readers, so the value
        below the view is stored."""
        frontier = below = self.walk[-1]
        chain = {below}
        for var in reversed(self.walk[:-1]):
            step = (
                None
                if var in self.materialized
                else _epilogue_step(self.producers[var], below, chain, self.materialized, self.producers, self._purity)
            )
            if step is None:
                break
            below = var
            chain = chain | {var} if step else {var}
            if step:
                frontier = var
        return frontier

    def _scan(self, node: Node, index: Index, index_deps) -> Entry:
        """A scan is computed only where the kernel lays its rows and columns out as the scan does
        (whole rows in registers: the aten lowering keeps scanned axes within MAX_ROW_TILE)."""
        (x,) = node.inputs
        rows, cols = _rows_and_cols(node)
        assert cols <= MAX_ROW_TILE, f"tritonfunc: a scan of {cols} columns does not fit a row tile"
        if self.domain != Domain("rows", rows, cols):
            raise NotFusable(node.out)
        natural = _laid_out(x.shape, _row_axes(node), self.vars["r"], self.vars["c"])
        if tuple(i.render() for i in index) != tuple(i.render() for i in natural):
            raise NotFusable(node.out)
        inp = self.value(x, natural)
        return Entry(node.out, index, "scan", node, [inp], index_deps, inp.stage + 1)


def _row_axes(node: Node) -> tuple[int, ...]:
    """The axes a row kernel lays along its columns for this reduction or scan."""
    return node.params["axes"] if node.prim.kind == "reduction" else (node.params["axis"],)


def _rows_and_cols(node: Node) -> tuple[int, int]:
    x = node.inputs[0]
    cols = math.prod(x.shape[a] for a in _row_axes(node))
    return (x.numel // cols if cols else 0), cols


def _laid_out(shape: tuple[int, ...], axes, r: Idx, c: Idx) -> Index:
    """The index of an element of `shape` at row r, column c, when rows run over the axes not in
    `axes` and columns over `axes`."""
    kept = iter(unravel(r, tuple(s for d, s in enumerate(shape) if d not in axes)))
    cols = iter(unravel(c, tuple(shape[a] for a in axes)))
    return tuple(next(cols) if d in axes else next(kept) for d in range(len(shape)))


def _region_reductions(var: Var, materialized: set[Var], producers: dict[Var, Node]) -> list[Node]:
    """Reductions, scans and contractions computed by `var`'s kernel if nothing more is materialized,
    nearest first."""
    found, seen, frontier = [], {var}, [var]
    while frontier:
        nxt = []
        for v in frontier:
            node = producers.get(v)
            if node is None or (v in materialized and v is not var):
                continue
            if node.prim.kind in ("reduction", "scan", "contraction") and not (
                found and _recomputed_inside(node, var, materialized, producers)
            ):
                found.append(node)
            for u in node.inputs:
                if u not in seen:
                    seen.add(u)
                    nxt.append(u)
        frontier = nxt
    return found


def _recomputed_inside(node: Node, var: Var, materialized: set[Var], producers: dict[Var, Node]) -> bool:
    """Whether a small dot (INNER_DOT_K) beyond the nearest reduction of var's kernel is computed
    where that kernel needs it: when the first reduction or contraction on its way to var is
    neither its epilogue's nor along its rows (the operand of a bigger dot, a sum over the batch).
    A reduction along its rows (the per-sample norms of ghost clipping) is its own GEMM kernel's."""
    if node.prim.kind != "contraction" or contraction_sizes(node)[2] > INNER_DOT_K:
        return False
    m, n, _, batch = contraction_sizes(node)
    domain = Domain("contraction", batch, n, m)
    it = iteration_vars(domain)
    index = dot_natural_index(node, it["b"], it["m"], it["n"])
    for step, u in _path_from(node, var, materialized, producers):
        pushed = _push(step, u, index, None, domain)
        if step.prim.kind in ("reduction", "contraction"):
            return pushed is None
        if pushed is None:
            return False
        index = pushed
    return False


def _store_index(
    var: Var, domain: Domain, reductions: list[Node], ctx=None, store: int = 0, ride: bool = False
) -> Index:
    """Where `var` is stored in a kernel of `domain`.  In a contraction kernel, a value computed from its
    dot is stored where the dot's index pushes to (`_epilogue_index`); with `ride`, one that is not
    (a per-row combination of the kernel's row statistics) rides along per row instead."""
    it = iteration_vars(domain)
    if domain.kind == "pointwise":
        return unravel(it["o"], var.shape)
    if domain.kind == "contraction":
        dot = next((n for n in reductions if n.prim.kind == "contraction"), None)
        if dot is not None:
            try:
                return _epilogue_index(var, dot, domain, *ctx, store)
            except NotFusable:
                if not (ride and var.numel == domain.size * domain.rows):
                    raise
        # a value riding along (see _joint): rows b*M + m, columns n
        r, c, rows = it["b"] * domain.rows + it["m"], it["n"], domain.size * domain.rows
    else:
        r, c, rows = it["r"], it["c"], domain.size
    if var.numel == rows:
        return unravel(r, var.shape)
    for red in reductions:  # per-element store: lay rows and columns out as the reduction does
        x = red.inputs[0]
        if x.shape == var.shape and _rows_and_cols(red)[1] == domain.cols:
            return _laid_out(x.shape, _row_axes(red), r, c)
    return unravel(r * domain.cols + c, var.shape)


def _domain_for(var: Var, reductions: list[Node]) -> Domain:
    dots = [n for n in reductions if n.prim.kind == "contraction"]
    if dots:  # the nearest contraction's kernel, its consumers up to `var` fused behind it
        m, n, _, batch = contraction_sizes(dots[0])
        return Domain("contraction", batch, n, m)
    if not reductions:
        return Domain("pointwise", var.numel)
    rows, cols = _rows_and_cols(reductions[0])
    if var.numel not in (rows, rows * cols):
        raise NotFusable(reductions[0].out)
    return Domain("rows", rows, cols)


# ---------------------------------------------------------------------------------------------
# The epilogue of a contraction: where a value computed from a dot's result is stored.
#
# A contraction kernel computes its dot at (b, m, n), one output tile per program.  A value
# downstream of it is stored from the same program if the index of the dot's element can be pushed
# forward to the value's index along the nodes between them: elementwise nodes keep it, transposes
# and reshapes re-arrange it, a reduction along the output's columns drops n (the row must fit one
# tile: a softmax or a cross-entropy over a short row), and one broadcast adds an outer variable e
# (the kernel loops over it: a per-sample weight gradient, the outer product of the output tile and
# a row of the layer's input, is written by the kernel holding both factors).  Where the push fails,
# the value in front of the failing node reaches memory instead.


def _path_from(dot: Node, var: Var, materialized: set[Var], producers: dict[Var, Node]) -> list[tuple[Node, Var]]:
    """The nodes from the dot's output to `var` (each with the input on the path), shortest first."""
    came: dict[Var, tuple[Node, Var] | None] = {var: None}
    frontier = [var]
    while frontier and dot.out not in came:
        nxt = []
        for v in frontier:
            node = producers.get(v)
            if node is None or (v in materialized and v is not var) or node is dot:
                continue
            for u in node.inputs:
                if u not in came:
                    came[u] = (node, v)
                    nxt.append(u)
        frontier = nxt
    path, u = [], dot.out
    while u is not var:
        node, v = came[u]
        path.append((node, u))
        u = v
    return path


def _push(node: Node, u: Var, index: Index, e: Idx | None, domain: Domain) -> Index | None:
    """The index of node's output whose element is computed from u at `index`, or None."""
    prim, out = node.prim, node.out
    deps = frozenset().union(*(i.deps for i in index)) if index else frozenset()
    if prim.kind == "elementwise":
        return index
    if prim is P.transpose:
        return tuple(index[p] for p in node.params["perm"])
    if prim is P.reshape:
        return reshape_index(index, u.shape, out.shape)
    if prim is P.slice_ and out.shape == u.shape:  # a slice of everything (jacrev splits its outputs so)
        return index
    if prim is P.broadcast_in_dim and out.numel == u.numel:  # only axes of size 1 added
        dims = node.params["dims"]
        return tuple(index[dims.index(d)] if d in dims else Idx.of(0) for d in range(len(out.shape)))
    if prim is P.broadcast_in_dim and e is not None and "n" in deps and not any(e.deps & i.deps for i in index):
        dims = node.params["dims"]
        spread = [d for d in range(len(out.shape)) if d not in dims or u.shape[dims.index(d)] != out.shape[d]]
        if e.bound() != math.prod(out.shape[d] for d in spread) or not spread:
            return None
        fresh = iter(unravel(e, tuple(out.shape[d] for d in spread)))
        return tuple(next(fresh) if d in spread else index[dims.index(d)] for d in range(len(out.shape)))
    if prim.kind == "reduction" and domain.cols <= MAX_EPILOGUE_ROW:
        axes = node.params["axes"]
        reduced = [index[a] for a in axes]
        kept = [i for a, i in enumerate(index) if a not in axes]
        along = frozenset().union(*(i.deps for i in reduced)) if reduced else frozenset()
        rows = frozenset().union(*(i.deps for i in kept)) if kept else frozenset()
        if along == {"n"} and rows <= {"b", "m"} and math.prod(u.shape[a] for a in axes) == domain.cols:
            return tuple(kept)
    return None


def _epilogue_index(var, dot, domain, materialized, producers, store: int) -> Index:
    v = iteration_vars(domain)
    index = dot_natural_index(dot, v["b"], v["m"], v["n"])
    settled = dot.out  # the last value on the path that is not a view of the one before
    grown = None  # the value an outer product spread, once one has
    for node, u in _path_from(dot, var, materialized, producers):
        if node.prim.kind != "view":
            settled = u
        # the one outer variable a broadcast may add, named per store (its extent is the store's own)
        spread = node.out.numel // max(u.numel, 1) if node.prim is P.broadcast_in_dim else 0
        e = Idx.var(f"e{store}", spread) if spread > 1 and grown is None else None
        pushed = _push(node, u, index, e, domain)
        if pushed is None:  # store what is in front of the failing node, before any outer product
            raise NotFusable(grown or settled)
        if e is not None and any(e.deps & i.deps for i in pushed):
            grown = settled
        index = pushed
    return index


def pure(var: Var, materialized: set[Var], producers: dict[Var, Node], cache: dict[Var, bool]) -> bool:
    """Whether var is computed from the graph's inputs by elementwise and view nodes alone (so any
    kernel can compute it, in any order)."""
    if var not in cache:
        node = producers.get(var)
        cache[var] = node is None or (
            var not in materialized
            and node.prim.kind in ("elementwise", "view", "source")
            and not node.prim.random
            and all(pure(u, materialized, producers, cache) for u in node.inputs)
        )
    return cache[var]


def _epilogue_step(node: Node, below: Var, chain: set[Var], materialized, producers, cache) -> bool | None:
    """Whether node continues a dot's epilogue from `below`: True for an elementwise node whose other
    operands are pure or computed elementwise from the epilogue's values since its last view
    (`chain`), as in ReLU's where(z > 0, z, ...) or SiLU's z * sigmoid(z); False for a view; None
    where the epilogue ends: another kind of node, an operand computed otherwise, or `below` used
    beyond what node computes (tanh's t feeding the next layer and the 1 - t * t of its
    derivative: t is the value to store, not a second one).  So the dot's kernel stores the
    activation, not the pre-activation beside a mask or a part of it."""
    if node.prim in (P.reshape, P.transpose):
        return False
    if node.prim.kind != "elementwise":
        return None
    memo: dict[Var, bool] = {}
    others = [u for u in node.inputs if u is not below]
    if not all(_elementwise_of(u, chain, materialized, producers, cache, memo) for u in others):
        return None
    inside = chain | {node.out}
    uses = [c for c in _consumers(producers).get(below, ()) if c is not node]
    if any(not _elementwise_of(c.out, inside, materialized, producers, cache, {}) for c in uses):
        return None
    return True


class Producers(dict):
    """var -> the node computing it (what the scheduler passes around), with the reverse map
    computed once: var -> the nodes reading it."""

    @functools.cached_property
    def consumers(self) -> dict[Var, list[Node]]:
        out: dict[Var, list[Node]] = {}
        for node in {id(n): n for n in self.values()}.values():
            for u in dict.fromkeys(node.inputs):
                out.setdefault(u, []).append(node)
        return out


def _consumers(producers: dict[Var, Node]) -> dict[Var, list[Node]]:
    return (producers if isinstance(producers, Producers) else Producers(producers)).consumers


def _elementwise_of(var: Var, chain: set[Var], materialized, producers, cache, memo: dict[Var, bool]) -> bool:
    """Whether var is pure (see `pure`) or computed by elementwise nodes from `chain` and pure values."""
    if var not in memo:
        node = producers.get(var)
        memo[var] = (
            var in chain
            or pure(var, materialized, producers, cache)
            or (
                node is not None
                and var not in materialized
                and node.prim.kind == "elementwise"
                and not node.prim.random
                and all(_elementwise_of(u, chain, materialized, producers, cache, memo) for u in node.inputs)
            )
        )
    return memo[var]


def _path_frontier(dot: Node, var: Var, materialized, producers) -> Var:
    """The last value on the path from dot to var that is still the dot's epilogue."""
    frontier, cache, chain = dot.out, {}, {dot.out}
    for node, u in _path_from(dot, var, materialized, producers):
        step = _epilogue_step(node, u, chain, materialized, producers, cache)
        if step is None:
            break
        chain = chain | {node.out} if step else {node.out}
        if step:
            frontier = node.out
    return frontier


# ---------------------------------------------------------------------------------------------
# The Program: an ordered list of steps, each a generated kernel or a call into torch.


@dataclass(eq=False)
class KernelStep:
    """A generated kernel: its plan here, its Triton source once codegen has run."""

    kernel: Kernel
    source: object = None  # codegen.KernelSource

    @property
    def inputs(self) -> list[Var]:
        return self.kernel.loads

    @property
    def outputs(self) -> list[Var]:
        return [v for v, _ in self.kernel.stores]


@dataclass(eq=False)
class TorchStep:
    """An OPAQUE node run by torch, reading and writing the neighbouring kernels' buffers."""

    node: Node

    @property
    def inputs(self) -> list[Var]:
        return self.node.inputs

    @property
    def outputs(self) -> list[Var]:
        return list(self.node.outs)


@dataclass(eq=False)
class Program:
    graph: Graph
    steps: list[KernelStep | TorchStep]

    @property
    def kernel_steps(self) -> list[KernelStep]:
        return [s for s in self.steps if isinstance(s, KernelStep)]


# ---------------------------------------------------------------------------------------------
# Per-sample kernels.  A vmap whose every sample is a few small matrices (per-sample gradients of an
# attention block: tokens x features of 16 x 32) chains many contractions, one GEMM launch per
# level otherwise (ten for that block).  When the whole graph runs per sample (every value with the
# batch in front is computed along the batch in parallel) and each sample's values fit a tile, one
# program per sample computes all of it in registers: a "samples" kernel, tl.dot on per-sample
# tiles.  Values without the batch (weights) are read by every program where they are used.

# Each per-sample value is at most a matrix of at most this many rows and columns; larger samples
# keep the GEMM kernels, whose tiles fill the tensor cores.
MAX_SAMPLE_TILE = 64
# The per-sample matrix products that make a samples kernel pay: fewer, and the GEMM kernels (whose
# M folds the batch in) do as well.
MIN_SAMPLE_DOTS = 2


@dataclass(eq=False)
class SampleRegion:
    batch: int
    nodes: list[Node]  # in graph order; every output has the batch as its leading axis
    inputs: list[Var]  # values with the batch read from memory
    shared: list[Var]  # values without it read by the region (computed from graph inputs in place)
    producers: dict[Var, Node]  # the graph's, for those values


class _NotPerSample(Exception):
    pass


def _non_unit(shape, skip_batch: bool = True) -> list[int]:
    return [d for d in range(1 if skip_batch else 0, len(shape)) if shape[d] != 1]


def _per_sample_ok(node: Node, ps: set[Var]) -> None:
    """Raises _NotPerSample unless node computes each sample from that sample alone."""
    prim, out = node.prim, node.out
    if node.prim.multiple_results or prim.random or prim.strategy == P.OPAQUE:
        raise _NotPerSample(prim.name)
    if len(_non_unit(out.shape)) > 2 or any(out.shape[d] > MAX_SAMPLE_TILE for d in _non_unit(out.shape)):
        raise _NotPerSample(f"{out} is not a small matrix per sample")
    inputs = node.inputs
    if prim.kind == "elementwise":
        return
    if prim is P.broadcast_in_dim:
        if inputs[0] in ps and node.params["dims"][0] != 0:
            raise _NotPerSample("a broadcast moves the batch")
        if inputs[0] not in ps and 0 in node.params["dims"]:
            raise _NotPerSample("a broadcast along the batch of a value without it")
        return
    if prim is P.transpose and node.params["perm"][0] == 0:
        return
    if prim is P.reshape and inputs[0] in ps:
        sizes = lambda shape: [shape[d] for d in _non_unit(shape)]
        if sizes(inputs[0].shape) == sizes(out.shape):
            return
    if prim.kind == "reduction" and 0 not in node.params["axes"]:
        return
    if prim is P.dot_general:
        (ca, cb), (ba, bb) = node.params["contract"], node.params["batch"]
        a, b = inputs
        k = [d for d in ca if a.shape[d] != 1]
        if len(k) == 1 and a in ps and b in ps and ba[:1] == (0,) and bb[:1] == (0,) and len(ba) == 1:
            return
        fa, _ = P.dot_axes(len(a.shape), len(b.shape), (ca, cb), (ba, bb))
        if len(k) == 1 and a in ps and b not in ps and not ba and fa[:1] == [0]:
            return
    raise _NotPerSample(f"{prim.name} {node.params}")


def sample_region(graph: Graph) -> SampleRegion | None:
    """The graph as one per-sample region (see above), or None."""
    if any(n.prim.strategy == P.OPAQUE for n in graph.nodes):
        return None
    dots = [
        n
        for n in graph.nodes
        if n.prim is P.dot_general and n.params["batch"][0][:1] == (0,) and n.params["batch"][1][:1] == (0,)
    ]
    dots = [n for n in dots if min(contraction_sizes(n)[:3]) >= MIN_DOT_EXTENT]
    if len(dots) < MIN_SAMPLE_DOTS:
        return None
    batch = dots[0].out.shape[0]
    leading = lambda v: len(v.shape) > 0 and v.shape[0] == batch
    ps: set[Var] = {v for v in graph.inputs if leading(v)}
    nodes, consumers = [], {}
    for n in graph.nodes:
        for v in n.inputs:
            consumers.setdefault(v, []).append(n)
        if leading(n.out):
            try:
                _per_sample_ok(n, ps)
            except _NotPerSample:
                return None
            ps.add(n.out)
            nodes.append(n)
    region = set(nodes)
    if any(v not in ps for v in graph.outputs):
        return None  # a value without the batch is an output: keep the general schedule
    for v in ps:  # the region is a sink: nothing outside reads what it computes
        if any(c not in region for c in consumers.get(v, [])):
            return None
    producers = graph.producers()
    shared = list(dict.fromkeys(u for n in nodes for u in n.inputs if u not in ps))

    def computable(v: Var) -> bool:  # from graph inputs by elementwise and view nodes
        node = producers.get(v)
        if node is None:
            return True
        return (
            node.prim.kind in ("elementwise", "view", "source")
            and not node.prim.random
            and all(computable(u) for u in node.inputs)
        )

    if not all(computable(v) for v in shared):
        return None
    inputs = [v for v in graph.inputs if v in ps and any(v in n.inputs for n in nodes) or v in graph.outputs]
    return SampleRegion(batch, nodes, list(dict.fromkeys(v for v in inputs if v in ps)), shared, producers)


def schedule(graph: Graph) -> Program:
    """Orders the graph's work into steps: fused kernels, with torch calls where an OPAQUE node is.

    An opaque node's inputs must reach memory; its outputs are buffers the kernels after it read,
    like graph inputs.  Every other value that reaches memory is stored by exactly one kernel.
    """
    region = sample_region(graph)
    if region is not None:
        return Program(graph, [KernelStep(_samples_kernel(graph, region))])
    producers = Producers((v, n) for n in graph.nodes if n.prim.strategy != P.OPAQUE for v in n.outs)
    opaque = [n for n in graph.nodes if n.prim.strategy == P.OPAQUE]
    position = {v: i for i, n in enumerate(graph.nodes) for v in n.outs}
    materialized = {v for v in graph.outputs if v in producers}
    materialized |= {v for n in opaque for v in n.inputs if v in producers}
    while True:
        try:
            steps = _assign(graph, materialized, producers, position, opaque)
        except NotFusable as e:
            assert e.var not in materialized, f"tritonfunc: {e.var} is materialized yet not fusable"
            materialized.add(e.var)
            continue
        shared = _shared(steps)
        if not shared:
            break
        materialized.update(shared)
    # A value stored on the way that no step reads any more (the kernels around it now compute it
    # where they need it): one more plan without it, kept if it needs nothing else stored.
    kept = {v for v in graph.outputs} | {v for n in opaque for v in n.inputs}
    read = {v for step in steps for v in step.inputs}
    dead = {v for v in materialized if v not in kept and v not in read}
    if dead:
        try:
            pruned = _assign(graph, materialized - dead, producers, position, opaque)
            if not _shared(pruned):
                steps = pruned
        except NotFusable:
            pass
    if UNFUSED_DOT_AS_TORCH_CALL:
        steps = [_as_torch_call(step) for step in steps]
    return Program(graph, steps)


def _as_torch_call(step):
    """A kernel that only multiplies two loaded operands and stores the product, as a torch call."""
    if not isinstance(step, KernelStep) or len(step.kernel.stores) != 1:
        return step
    var, entry = step.kernel.stores[0]
    if entry.op != "dot" or any(e.op != "load" for e in entry.inputs):
        return step
    if any(e.var is not v for e, v in zip(entry.inputs, entry.node.inputs)):
        return step
    return TorchStep(entry.node)


def _samples_kernel(graph: Graph, region: SampleRegion) -> Kernel:
    """The one kernel of a per-sample region: it reads the region's inputs and the graph inputs its
    shared values come from, and stores the graph's outputs."""
    read = list(region.inputs)
    producers = graph.producers()
    frontier = list(region.shared)
    while frontier:
        v = frontier.pop()
        if v in producers:
            frontier.extend(producers[v].inputs)
        elif v not in read:
            read.append(v)
    loads = [Entry(v, (), "load", None, [], frozenset(), 0) for v in read]
    stores = [(v, None) for v in dict.fromkeys(graph.outputs)]
    return Kernel(Domain("samples", region.batch), stores, loads, region=region)


def _shared(steps) -> list[Var]:
    """Reductions, scans and dots planned into several kernels: each would recompute them."""
    owners: dict[Var, set[int]] = {}
    for k, step in enumerate(steps):
        for e in step.kernel.entries if isinstance(step, KernelStep) else []:
            if e.op in ("reduce", "scan", "dot", "inner_dot"):
                owners.setdefault(e.var, set()).add(k)
    return [v for v, ks in owners.items() if len(ks) > 1]


def _joint(a: Domain, b: Domain) -> Domain | None:
    """The domain of a kernel computing values of domains a and b, if one launch can do both.

    A pointwise value of R or R*C elements can ride along in a row kernel, stored per row or per
    element, unless the row kernel loops over long rows (it would recompute the value per loop).
    In a contraction kernel of batch x [M x N], a pointwise value of batch*M*N elements rides along
    per element, and a row reduction over batch*M rows per row.
    """
    if a == b:
        return a
    if a.kind == "contraction" or b.kind == "contraction":
        dot, other = (a, b) if a.kind == "contraction" else (b, a)
        if other.kind == "pointwise" and other.size == dot.size * dot.rows * dot.cols:
            return dot
        if other.kind == "rows" and other.size == dot.size * dot.rows:
            return dot  # reduced along the tile's rows when they fit it, else in a loop of its own
        return None
    if a.kind == "rows" and b.kind == "rows":
        return None
    rows, flat = (a, b) if a.kind == "rows" else (b, a)
    if rows.cols <= MAX_ROW_TILE and flat.size in (rows.size, rows.size * rows.cols):
        return rows
    return None


def _assign(graph, materialized, producers, position, opaque) -> list[KernelStep | TorchStep]:
    """Places each materialized value in the first kernel of its shape that runs after its inputs,
    and each opaque node in a torch call after its inputs' kernels, in graph order.  A value computed
    from what a contraction kernel stores joins that kernel's epilogue when it can (`_join`)."""
    steps: list[KernelStep | TorchStep] = []
    owner: dict[Var, int] = {}
    dot_kernel: dict[Node, int] = {}  # the kernel computing each contraction
    work = [(position[v], v) for v in materialized] + [(position[n.outs[0]], n) for n in opaque]
    for _, item in sorted(work, key=lambda w: w[0]):
        if isinstance(item, Node):
            steps.append(TorchStep(item))
            owner.update((v, len(steps) - 1) for v in item.outs)
            continue
        var = item
        if var.numel == 0:  # nothing to compute: the runtime allocates it empty
            continue
        slot = _join(var, steps, owner, materialized, producers)
        if slot is not None:
            steps[slot].kernel.stores.append((var, None))
            owner[var] = slot
            continue
        reductions = _region_reductions(var, materialized, producers)
        domain = _domain_for(var, reductions)
        planner = _Planner(domain, materialized, producers)
        planner.value(var, _store_index(var, domain, reductions, (materialized, producers)), stored=True)
        reads = {e.var for e in planner.order if e.op == "load"}
        after = max((owner[v] for v in reads if v in owner), default=-1)
        slot = next(
            (
                k
                for k in range(after + 1, len(steps))
                if isinstance(steps[k], KernelStep) and _joint(steps[k].kernel.domain, domain)
            ),
            None,
        )
        if domain.kind == "contraction":
            dot = next(n for n in reductions if n.prim.kind == "contraction")
            first = dot_kernel.get(dot)
            if first is not None and slot != first:  # a second kernel would compute the dot again:
                frontier = _path_frontier(dot, var, materialized, producers)  # read its epilogue instead
                if frontier is not var:
                    raise NotFusable(frontier)
        if slot is None:
            steps.append(KernelStep(Kernel(domain)))
            slot = len(steps) - 1
        if domain.kind == "contraction":
            dot_kernel.setdefault(dot, slot)
        kernel = steps[slot].kernel
        kernel.domain = _joint(kernel.domain, domain)
        kernel.stores.append((var, None))
        owner[var] = slot
    for step in steps:  # plan each kernel's stores together, sharing common entries
        if isinstance(step, KernelStep):
            step.kernel.entries = _plan(step.kernel, [v for v, _ in step.kernel.stores], materialized, producers)
    return steps


def _plan(kernel: Kernel, stores: list[Var], materialized: set[Var], producers) -> list[Entry]:
    """Plans the kernel's stores in one planner (common entries shared).  What the kernel itself
    stores is computed where another of its values needs it, never loaded back."""
    inside = materialized - set(stores)
    planner = _Planner(kernel.domain, inside, producers)
    for i, var in enumerate(stores):
        reductions = _region_reductions(var, inside, producers)
        index = _store_index(var, kernel.domain, reductions, (inside, producers), i, ride=var in kernel.riders)
        kernel.stores[i] = (var, planner.value(var, index, stored=True))
    return planner.order


def _join(var: Var, steps, owner, materialized, producers) -> int | None:
    """The contraction kernel whose epilogue `var` can join: the last one storing a value var is
    computed from, if var, planned there with those values computed in the kernel, reads nothing
    that kernel or a later one stores.  (A per-sample gradient's outer product so joins the kernel
    that stores its factor; a softmax's row statistics join the kernel computing the logits.)"""
    region, frontier = set(), [var]
    while frontier:
        v = frontier.pop()
        node = producers.get(v)
        if node is None or v in region:
            continue
        region.add(v)
        if v in materialized and v is not var:
            continue
        frontier.extend(node.inputs)
    kernels = {owner[v] for v in region if v in owner and v is not var}
    gemms = [k for k in kernels if isinstance(steps[k], KernelStep) and steps[k].kernel.domain.kind == "contraction"]
    if not gemms:
        return None
    slot = max(gemms)
    kernel = steps[slot].kernel
    stores = [v for v, _ in kernel.stores] + [var]
    inside = materialized - set(stores)
    if not any(n.prim.kind == "contraction" for n in _region_reductions(var, inside, producers)):
        return None
    for ride in (False, True):  # in the epilogue, else riding along per row
        trial = Kernel(kernel.domain, [(v, None) for v in stores], riders=kernel.riders | ({var} if ride else set()))
        try:
            entries = _plan(trial, stores, materialized, producers)
        except NotFusable:
            continue
        if any(owner.get(e.var, -1) >= slot for e in entries if e.op == "load"):
            return None
        if ride:
            kernel.riders.add(var)
        return slot
    return None
    return slot
