"""Fused arg-extrema, max/min with indices, and var_mean/std_mean, against torch and torch.func.

argmax/argmin are two reductions of one row kernel (the extremum, then the first index attaining
it, NaN counting as the extremum); max.dim/min.dim pick the value at that index, so the whole
derivative goes to the first of tied elements, as torch's does (amax shares it instead).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.func
from autodiff_helpers import assert_same, make
from helpers import check
from test_coverage_helpers import check_op
from vmap_helpers import check_vmap

import tritonfunc

NAN = math.nan


def with_ties(*shape):
    """Small integers as floats: most rows hold their extremum more than once."""
    return make(*shape, low=-3.0, high=3.0).round()


# Dims that mean the same for an example [4, 6] and a batch [2, 4, 6] of them (vmap maps dim 0).
def extrema_and_moments(x):
    return (
        x.max(-1).values,
        x.min(-2).values,
        x.max(-1, keepdim=True).values,
        torch.var_mean(x, -1),
        torch.std_mean(x, -2, correction=0),
        torch.var_mean(x, keepdim=True),
    )


def indices(x):
    return (
        x.argmax(),
        x.argmax(-1),
        x.argmin(-2, keepdim=True),
        x.max(-1).indices,
        x.min(-1, keepdim=True).indices,
        x[..., 0, :].argmin(-1),
        x[..., 0, 0].argmax(),
        x.sum().argmin(),
    )


def test_extrema_and_moments_match_torch_func_with_ties(backend):
    """The derivative of max/min with dim goes to the first of tied elements."""
    check_op(extrema_and_moments, with_ties(2, 4, 6))


def test_indices_match_torch_with_ties(backend):
    """First occurrence wins; vmap maps the index computation per example."""
    x = with_ties(2, 4, 6)
    check(indices, x)
    check_vmap(indices, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64], ids=str)
def test_indices_and_values_with_nan_and_integers(backend, dtype):
    """NaN is the extremum for both argmax and argmin (its first occurrence); integers work too."""
    x = torch.tensor([[1.0, 3.0, 3.0, -1.0], [NAN, 2.0, NAN, 5.0], [0.0, -0.0, 0.0, 0.0]])
    x = x.nan_to_num(7.0) if not dtype.is_floating_point else x
    x = x.to(dtype)
    check(lambda x: (x.argmax(1), x.argmin(1), x.argmax(), x.max(1), x.min(0), x.argmin(0)), x)


def test_max_dim_derivative_goes_to_the_first_tie_unlike_amax(backend):
    x = torch.tensor([[2.0, 5.0, 5.0, 1.0], [3.0, 3.0, 3.0, 3.0]], dtype=torch.float64)
    for f in (lambda x: x.max(1).values.sum(), lambda x: x.amax(1).sum()):
        assert_same(tritonfunc.grad(f)(x), torch.func.grad(f)(x))
    f = lambda x: x.min(0).values * x.max(1, keepdim=True).values  # noqa: E731
    assert_same(tritonfunc.jacrev(f)(x), torch.func.jacrev(f)(x))
    g = lambda x: (x.max(1).values ** 2).sum() + torch.var_mean(x, 1)[0].sum()  # noqa: E731
    assert_same(tritonfunc.hessian(g)(x), torch.func.hessian(g)(x))


def test_argmax_and_max_dim_are_one_row_kernel(interpreter):
    """The extremum, the index and the value at the index: three reductions of one launch."""
    x = with_ties(8, 16)
    with tritonfunc.record_launches() as rec:
        check(lambda x: (x.max(1), x.argmin(1), torch.var_mean(x, 1)), x)
    assert rec.kernels == 1 and rec.torch_calls == 0
