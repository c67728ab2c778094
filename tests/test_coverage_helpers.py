"""The check shared by the test_coverage_*.py files: one call runs an op through everything.

`check_op(f, *args)` compares tritonfunc with eager torch (jit) and with torch.func (jvp, vjp,
grad for scalar outputs, vmap over the leading axis of every argument, and forward- and
reverse-over-reverse for a differentiable f), float64 with tight tolerances, and asserts that the
op is fused: its program makes no torch call.  Ops are checked in small groups (a function
returning a tuple), so each transform is one kernel to compile for sm_90, not one per op.
"""

from __future__ import annotations

import re

import torch
from autodiff_helpers import check_second_order, check_transforms
from helpers import check
from torch.utils import _pytree as pytree
from vmap_helpers import check_vmap

import tritonfunc


def torch_calls(f, *args) -> int:
    """How many steps of f's program (forward, as tritonfunc.jit runs it) are torch calls."""
    text = tritonfunc.explain(f)(*args)
    return int(re.search(r"kernel\(s\), (\d+) torch call", text).group(1))


def total(out) -> torch.Tensor:
    """The sum of every floating-point output leaf: a scalar to differentiate twice."""
    leaves = [t for t in pytree.tree_leaves(out) if t.is_floating_point()]
    return sum(t.sum() for t in leaves)


def check_op(f, *args, second_order: bool = True, vmap: bool = True, autodiff: bool = True):
    """f through jit, jvp, vjp (grad), vmap and (second_order) jvp/vjp of grad, against torch.

    Second order differentiates `total(f)` in the first argument, the others held fixed.
    """
    assert torch_calls(f, *args) == 0, tritonfunc.explain(f)(*args)
    check(f, *args)
    if autodiff:
        check_transforms(f, *args)
    if vmap:
        check_vmap(f, *args)
    if second_order:
        rest = args[1:]
        check_second_order(lambda x: total(f(x, *rest)), args[0])
