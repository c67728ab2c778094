"""The pipeline from a user's function to launches, one named pass after another.

    trace        api.py -> trace.py: the function on Tracers -> Graph (aten/ lowers each op)
    transforms   transforms.py: jvp_graph / vjp_graph / vmap_graph, Graph -> Graph
    GRAPH_PASSES below, Graph -> Graph
    schedule     schedule.py: Graph -> Program (generated kernels and torch calls, in order)
    codegen      codegen.py: each kernel step -> Triton source, specialised to the input strides
    runtime      runtime.py: load the kernels, run the steps

With TRITONFUNC_VERIFY=1 (the tests set it) the IR verifier checks the graph after the trace,
after every transform and after every pass.
"""

from __future__ import annotations

import os

from . import codegen, schedule
from .graph import Graph, Var, verify
from .schedule import Program

GRAPH_PASSES = [
    ("ghost norms", schedule.ghost_norms),
    ("expand small contractions", schedule.expand_small_contractions),
    ("split long reductions", schedule.split_long_reductions),
    ("fold trivial reductions", schedule.fold_trivial_reductions),
    ("eliminate common subexpressions", schedule.eliminate_common_subexpressions),
    ("eliminate dead code", schedule.eliminate_dead_code),
]


def checked(graph: Graph, after: str) -> Graph:
    """Verifies `graph` when TRITONFUNC_VERIFY=1; returns it."""
    if os.environ.get("TRITONFUNC_VERIFY") == "1":
        verify(graph, after)
    return graph


def optimize(graph: Graph) -> Graph:
    for name, run in GRAPH_PASSES:
        graph = checked(run(graph), name)
    return graph


def compile_program(graph: Graph, strides: dict[Var, tuple[int, ...]], target: str = "sm90") -> Program:
    """Graph -> Program with each kernel's Triton source, for inputs with these strides, for the
    interpreter or the H100 ("interpreter", "sm90": the tiles of contraction kernels)."""
    program = schedule.schedule(optimize(graph))
    for step in program.kernel_steps:
        step.source = codegen.generate(step.kernel, strides, target)
    return program
