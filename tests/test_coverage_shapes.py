"""Flips, rolls, pads and diagonals as views (index rules) that fuse for free, against torch and
torch.func.  The functions use negative dims, so vmap maps them over a leading axis unchanged."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from autodiff_helpers import make
from helpers import check
from test_coverage_helpers import check_op
from vmap_helpers import check_vmap

import tritonfunc


def flips_and_rolls(x):
    return (
        x.flip(-1),
        x.flip(-2, -1),
        torch.fliplr(x),
        torch.rot90(x, 1, (-2, -1)),
        x.roll(2, -1),
        x.roll((1, -3), (-2, -1)),
        x.roll(5, -1),  # a whole turn: a copy
    )


def pads(x):
    return (
        F.pad(x, (1, 2)),
        F.pad(x, (1, 2, 0, 3), value=2.5),
        F.pad(x, (-1, 2, 1, -2)),  # negative padding crops
        F.pad(x, (2, 3), mode="reflect"),
        F.pad(x, (0, 4), mode="replicate"),
    )


def diagonals(x):
    return (
        x.diagonal(0, -2, -1),
        x.diagonal(1, -1, -2),
        x.diagonal(-2, -2, -1),
        torch.diag_embed(x),
        torch.diag_embed(x, 2, -3, -1),
        torch.diag_embed(x, -1, -1, -2),
        x.tril(),
        x.triu(1),
        x.movedim(-1, -2),
    )


def test_flips_and_rolls_match_torch_func(backend):
    check_op(flips_and_rolls, make(3, 4, 5))


def test_pads_match_torch_func(backend):
    check_op(pads, make(3, 4, 5))


def test_two_and_three_axis_edge_pads_match_torch_func(backend):
    def f(x):
        return (
            F.pad(x, (2, 1, 1, 2), mode="reflect"),
            F.pad(x, (0, 2, 3, 1), mode="replicate"),
            F.pad(x[None], (1, 1, 2, 0, 1, 2), mode="replicate"),
        )

    check_op(f, make(2, 3, 4, 5))


def test_diagonals_match_torch_func(backend):
    check_op(diagonals, make(3, 4, 5))


def test_trace_and_diag_match_torch_func(backend):
    x = make(4, 5)
    check_op(lambda x: (torch.trace(x), torch.diag(x, 1), torch.diag(x[0], -2), x.diagonal(7)), x, vmap=False)
    check_vmap(lambda m: (torch.trace(m), torch.diag(m, -1)), make(3, 4, 5))


def test_views_fuse_into_one_kernel(interpreter):
    """A chain of flips, rolls, pads and diagonals reads x once and writes the result once."""

    def f(x):
        y = F.pad(x.flip(-1).roll(1, 0), (1, 1), mode="reflect") * 2
        return torch.diag_embed(y.diagonal(0, 0, 1)).exp() + y.sum()

    x = make(5, 6)
    with tritonfunc.record_launches() as rec:
        check(f, x)
    assert rec.torch_calls == 0 and rec.kernels == 2  # the sum is a second (reduction) kernel
    with tritonfunc.record_launches() as rec:
        check(lambda x: F.pad(x.flip(-1).roll(1, 0), (1, 1), mode="reflect").diagonal() * 2, x)
    assert rec.count == 1
