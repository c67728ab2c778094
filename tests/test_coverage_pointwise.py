"""Fused pointwise math and activations against torch and torch.func, on both CPU backends.

Ops are checked in groups (one function returning a tuple), so each transform of a group is one
generated kernel: values (jit), jvp, vjp, vmap and second order, float64, plus the points where
torch has a convention (kinks, ties, NaN, infinities, -0.0) and the silent wrong values this
coverage fixed (NaN gradients of softplus and mish, clamp at NaN, atan2 at the origin).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same, make
from helpers import check
from test_coverage_helpers import check_op, torch_calls

import tritonfunc

NAN, INF = math.nan, math.inf


def grid(*points, n=8, low=-4.0, high=4.0):
    """The given points, then n random values in [low, high), as a [2, k] float64 tensor."""
    rand = make(n, low=low, high=high).tolist()
    values = list(points) + rand
    values += [0.25] * (len(values) % 2)
    return torch.tensor(values, dtype=torch.float64).reshape(2, -1)


# ---------------------------------------------------------------------------------------------
# Math functions: libdevice in the kernel (numpy bodies under the interpreter), digamma/trigamma
# written with tl ops, the rest from existing primitives.


def inverse_and_hyperbolic(x):
    return (
        torch.sinh(3 * x),
        torch.cosh(3 * x),
        torch.asin(x),
        torch.acos(x),
        torch.atan(3 * x),
        torch.asinh(3 * x),
        torch.acosh(2 + x),
        torch.atanh(x),
    )


def gamma_and_error(x):
    return (
        torch.lgamma(x),
        torch.lgamma(-x - 0.3),  # negative non-integers
        torch.digamma(x),
        torch.digamma(-x - 0.3),  # the reflection formula
        torch.polygamma(1, x - 0.9),
        torch.erfc(3 * x - 4),  # the tail, where 1 - erf(x) has no digits left
        torch.erfinv(x / 3.1 - 0.45),
    )


def rounding(x):
    return (torch.trunc(x) * x, torch.round(x) * x, torch.round(x, decimals=2), torch.round(x, decimals=-1), x.frac())


def binary(x, y):
    p = torch.sigmoid(y)
    return (
        torch.hypot(x, y),
        torch.xlogy(x, p),
        torch.xlogy(x, 2.0),
        torch.copysign(x, y),
        torch.copysign(x, -0.0),
        torch.sinc(x),
        torch.logit(p),
        torch.logit(p, eps=0.3),
    )


@pytest.mark.parametrize(
    "f, low, high",
    [
        pytest.param(inverse_and_hyperbolic, -0.9, 0.9, id="inverse_and_hyperbolic"),
        pytest.param(gamma_and_error, 0.2, 3.0, id="gamma_and_error"),
        pytest.param(rounding, -4.0, 4.0, id="rounding"),
    ],
)
def test_math_functions_match_torch_func(backend, f, low, high):
    """jit, jvp, vjp, vmap and second order (digamma's third derivative runs as a torch call)."""
    check_op(f, make(3, 8, low=low, high=high))


def test_binary_math_functions_match_torch_func(backend):
    check_op(binary, make(3, 8), make(3, 8, seed=1, low=-3.0, high=3.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_math_functions_at_special_values(backend, dtype):
    """Poles, infinities, NaN, signed zeros and halfway points, as torch computes them."""
    x = torch.tensor([0.0, -0.0, -1.0, -2.5, 0.5, 1.5, 2.5, -0.5, 1.0, 1e-30, INF, -INF, NAN], dtype=dtype)
    check(
        lambda x: (
            torch.lgamma(x),
            torch.digamma(x),
            torch.polygamma(1, x),
            torch.erfinv(torch.tanh(x)),
            torch.erfc(x),
            torch.round(x),
            torch.round(x * 3, decimals=1),
            torch.trunc(x),
            torch.frac(x),
            torch.sinc(x),
            torch.atan(x),
            torch.asinh(x),
        ),
        x,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_sign_and_classification_at_special_values(backend, dtype):
    x = torch.tensor([0.0, -0.0, 1.5, -2.0, INF, -INF, NAN, -NAN, 3.0], dtype=dtype)
    y = torch.tensor([-0.0, 0.0, -1.0, 2.0, NAN, -3.0, 1.0, 0.0, -INF], dtype=dtype)
    check(
        lambda x, y: (
            torch.copysign(x, y),
            torch.signbit(x),
            torch.signbit(torch.tensor([-1, 0, 2])),
            torch.nan_to_num(x),
            torch.nan_to_num(x, nan=1.0, posinf=2.0, neginf=-3.0),
            torch.isnan(x),
            torch.isinf(x),
            torch.isfinite(x),
            torch.isposinf(x),
            torch.isneginf(x),
            torch.logical_xor(x, y),
            torch.logical_xor(x > 0, torch.tensor(True)),
            torch.logical_and(x, y),
            torch.logical_or(x, torch.tensor([0, 1, 0, 0, 2, 0, 0, 1, 0])),
            torch.logical_not(x),
            torch.sgn(x),
            torch.heaviside(x, y),
            torch.xlogy(x, y),
            torch.hypot(x, y),
        ),
        x,
        y,
    )


def test_copysign_and_nan_to_num_derivatives(backend):
    """copysign's derivative is sign(x) times the sign taken (0 at x = 0; torch's is NaN at an
    infinite x, tritonfunc's +-1); nan_to_num's is 1 where x is finite and 0 elsewhere."""
    x = torch.tensor([[0.0, -0.0, 1.5, -2.0, 3.0, INF], [-INF, 4.0, 0.5, -0.25, NAN, 2.0]], dtype=torch.float64)
    y = torch.tensor([[-1.0, 1.0, -0.0, 0.0, -2.0, 3.0], [1.0, -1.0, 2.0, -3.0, 1.0, -0.0]], dtype=torch.float64)
    finite = torch.nan_to_num(x, posinf=7.0, neginf=-7.0, nan=0.0)
    # torch's second derivative is NaN at 0 (0/0 under its mask), so first order only
    check_op(lambda x, y: torch.copysign(x, y), finite, y, vmap=False, second_order=False)
    check_op(lambda x, y: torch.nan_to_num(x, posinf=5.0) * y, x, y, vmap=False)


def test_xlogy_at_zero_follows_torch_conventions(backend):
    """xlogy(0, y) is 0 unless y is NaN; d/dx is 0 where x == 0 and y <= 0 (not log(y) = nan)."""
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0], [2.0, 0.0, -1.5, 0.5, 3.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, -1.0, 2.0, 3.0], [0.5, INF, 2.0, 0.0, 4.0]], dtype=torch.float64)
    check_op(torch.xlogy, x, y, second_order=False, vmap=False)


def test_heaviside_values_and_derivative():
    """torch has no derivative for heaviside; tritonfunc's is the step's: 0 in x, 1 in values at 0."""
    x = torch.tensor([0.0, 1.0, -1.0, 0.0, NAN], dtype=torch.float64)
    values = torch.tensor([0.5, 2.0, 3.0, -1.0, 4.0], dtype=torch.float64)
    gx, gv = tritonfunc.grad(lambda x, v: torch.heaviside(x, v).sum(), argnums=(0, 1))(x, values)
    assert_same(gx, torch.zeros_like(x))
    assert_same(gv, (x == 0).double())


# ---------------------------------------------------------------------------------------------
# Activations: values and derivatives at their kinks, where torch has a convention.

KINKS = (-6.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 3.0, 6.0, 25.0, -25.0)

# Grouped so that each transform of a group is one kernel.
ACTIVATIONS = {
    "piecewise": [
        F.hardtanh,
        lambda x: F.hardtanh(x, -2.0, 0.5),
        F.relu6,
        F.hardswish,
        lambda x: F.leaky_relu(x, 0.1),
        lambda x: F.threshold(x, 0.5, -2.0),
        F.softshrink,
        F.hardshrink,
    ],
    "smooth": [
        F.softplus,
        F.mish,
        F.logsigmoid,
        F.silu,
        F.gelu,
        lambda x: F.gelu(x, approximate="tanh"),
    ],
    "elu": [lambda x: F.elu(x, 0.7), F.selu, lambda x: F.celu(x, 0.5)],
    # torch raises for hardsigmoid's second derivative; softplus's is 0 where beta * x equals the
    # threshold (1.5 here), where tritonfunc keeps the smooth branch's.
    "first_order_only": [F.hardsigmoid, lambda x: F.softplus(x, beta=2.0, threshold=3.0)],
}


def all_of(group):
    return lambda x: tuple(f(x) for f in ACTIVATIONS[group])


@pytest.mark.parametrize("group", list(ACTIVATIONS))
def test_activations_match_torch_func_at_their_kinks(backend, group):
    """Value, jvp, vjp, vmap and second order at the kinks (-3, 0, 3, the bounds) and beyond."""
    check_op(all_of(group), grid(*KINKS), second_order=group != "first_order_only")


def test_activation_derivatives_at_nan_follow_torch(backend):
    """Which side of a kink NaN falls on: hardtanh, elu and softshrink pass the gradient,
    hardsigmoid does not."""
    x = torch.tensor([NAN, 0.0, 1.0], dtype=torch.float64)
    f = lambda x: tuple(f(x) for group in ACTIVATIONS.values() for f in group)  # noqa: E731
    check_op(f, x, vmap=False, second_order=False)


# ---------------------------------------------------------------------------------------------
# Silent wrong values fixed here.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_softplus_and_mish_gradients_are_finite_for_large_inputs(backend, dtype):
    """The smooth branch torch discards used to overflow (exp(89) in float32), and its 0 * inf
    made the gradient NaN; torch's is 1 there."""
    x = torch.tensor([30.0, 50.0, 89.0, 100.0, 800.0, 1e4], dtype=dtype)
    for f in (F.softplus, lambda x: F.softplus(x, beta=2.0), F.mish, lambda x: F.softplus(x, beta=0.5, threshold=5)):
        g = lambda x, f=f: f(x).sum()  # noqa: E731
        assert_same(tritonfunc.grad(g)(x), torch.func.grad(g)(x))
        assert_same(tritonfunc.jvp(f, (x,), (torch.ones_like(x),)), torch.func.jvp(f, (x,), (torch.ones_like(x),)))


def test_clamp_at_nan_and_with_tensor_bounds_follows_torch(backend):
    """No gradient to x at NaN; a NaN bound makes the value NaN; a tensor bound gets the gradient
    where it wins (hi also where hi < lo)."""
    x = torch.tensor([NAN, 1.0, 1.0, 5.0, 0.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    lo = torch.tensor([0.0, NAN, 0.0, 0.0, 3.0, 0.0, 0.5, 1.0], dtype=torch.float64)
    hi = torch.tensor([2.0, 2.0, NAN, 2.0, 2.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    fns = [
        lambda x, lo, hi: torch.clamp(x, lo, hi),
        lambda x, lo, hi: torch.clamp(x, min=lo),
        lambda x, lo, hi: torch.clamp(x, max=hi),
        lambda x, lo, hi: torch.clamp(x, -0.5, 1.5),
        lambda x, lo, hi: torch.clamp(x, min=0.5),
    ]
    for f in fns:
        assert_same(tritonfunc.jit(f)(x, lo, hi), f(x, lo, hi))
        g = lambda *a, f=f: f(*a).sum()  # noqa: E731
        argnums = (0, 1, 2)
        assert_same(tritonfunc.grad(g, argnums)(x, lo, hi), torch.func.grad(g, argnums)(x, lo, hi))


def test_atan2_derivatives_at_the_origin_follow_torch(backend):
    """torch's reverse mode gives 0 at atan2(0, 0) (its reciprocal is masked there); its forward
    mode gives NaN.  The grad used to be NaN."""
    z = torch.zeros(3, dtype=torch.float64)
    f = lambda a: torch.atan2(a, a).sum()  # noqa: E731
    assert_same(tritonfunc.grad(f)(z), torch.func.grad(f)(z))
    assert_same(tritonfunc.hessian(f)(z), torch.func.hessian(f)(z))
    a = torch.tensor([0.0, 1e-170, 0.0, 1.0], dtype=torch.float64)
    b = torch.tensor([1e-170, 0.0, 0.0, -2.0], dtype=torch.float64)
    g = lambda a, b: torch.atan2(a, b).sum()  # noqa: E731
    assert_same(tritonfunc.grad(g, (0, 1))(a, b), torch.func.grad(g, (0, 1))(a, b))
    t = (torch.ones_like(a), torch.ones_like(b))
    assert_same(tritonfunc.jvp(torch.atan2, (a, b), t), torch.func.jvp(torch.atan2, (a, b), t))


# ---------------------------------------------------------------------------------------------
# Fusion: the new ops add no launches.


def test_new_pointwise_ops_fuse_into_one_kernel(interpreter):
    def f(x):
        y = F.softplus(x).asinh() * torch.erfc(x) + F.hardswish(x).cosh()
        return torch.lgamma(y.abs() + 1) + torch.digamma(y.abs() + 1) + torch.copysign(x, -y).frac()

    x = make(4, 8)
    with tritonfunc.record_launches() as rec:
        check(f, x)
    assert rec.kernels == 1 and rec.torch_calls == 0
    with tritonfunc.record_launches() as rec:
        got = tritonfunc.grad(lambda x: f(x).sum())(x)
    assert_same(got, torch.func.grad(lambda x: f(x).sum())(x))
    assert rec.kernels == 1 and rec.torch_calls == 0


def test_polygamma_of_order_two_runs_as_a_torch_call():
    """Only digamma and trigamma have kernels; higher orders are torch's (named, with a warning)."""
    x = make(5, low=0.5, high=3.0)
    assert torch_calls(lambda x: torch.polygamma(2, x), x) == 1
    assert torch_calls(lambda x: torch.polygamma(1, x), x) == 0
