"""cumsum as a scan inside a row kernel (tl.cumsum along the row tile), against torch and
torch.func.  Its adjoint is the reversed scan, so forward and backward fuse with their neighbours;
rows longer than a tile, cumprod and logcumsumexp run as torch calls."""

from __future__ import annotations

import pytest
import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same, check_transforms, make
from helpers import check
from test_coverage_helpers import check_op, torch_calls

import tritonfunc
from tritonfunc.schedule import MAX_ROW_TILE


def scans(x):
    return (
        x.cumsum(-1),
        x.cumsum(-2),
        (x.exp().cumsum(-1) * 2).sin(),
        x.cumsum(-1).sum(-1),
        x.cumsum(-1) / x.exp().sum(-1, keepdim=True),
        # Read at another index (backwards, transposed, scanned again along the other axis): the scan
        # is stored by its own kernel first.
        x.sin().cumsum(-1).flip(-1),
        x.cos().cumsum(-1).transpose(-1, -2) * 2,
        x.tanh().cumsum(-1).cumsum(-2),
    )


def test_cumsum_matches_torch_func(backend):
    check_op(scans, make(3, 4, 6))


def test_cumsum_of_integers_booleans_and_with_dtype(backend):
    x = make(3, 7)
    check(
        lambda x: ((x > 0).cumsum(1), x.int().cumsum(0), x.float().cumsum(1, dtype=torch.float64), x[0, :1].cumsum(0)),
        x,
    )


def test_cumsum_and_its_adjoint_fuse_with_their_neighbours(interpreter):
    """Forward (exp, scan, sin) is one kernel; grad (forward, scan, reversed scan) is one too."""

    def f(x):
        return (F.softplus(x).cumsum(-1) * 2).sin()

    x = make(6, 16)
    with tritonfunc.record_launches() as rec:
        check(f, x)
    assert rec.count == 1
    with tritonfunc.record_launches() as rec:
        got = tritonfunc.grad(lambda x: f(x).sum())(x)
    assert_same(got, torch.func.grad(lambda x: f(x).sum())(x))
    assert rec.count == 1 and "reverse=True" in rec.launches[0].source


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_long_rows_cumprod_and_logcumsumexp_run_as_torch_calls(backend):
    long = make(2, MAX_ROW_TILE + 3)
    assert torch_calls(lambda x: x.cumsum(1), long) == 1
    check(lambda x: x.cumsum(1) * 2, long)
    x = make(3, 5, low=0.5, high=2.0)
    assert torch_calls(lambda x: (x.cumprod(1), x.logcumsumexp(0)), x) == 2
    x[1, 2] = 0.0  # cumprod's derivative through a zero is torch's
    check_transforms(lambda x: (x.cumprod(1), x.logcumsumexp(0)), x)
