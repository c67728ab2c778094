"""Every primitive's JVP and VJP rule (and grad, for scalar outputs) against torch.func, float64.

Table-driven: each row is (id, function, inputs builder).  `check_transforms` runs jvp with a random
tangent, vjp with a random cotangent and grad through tritonfunc and torch.func and compares them.
The `backend` fixture runs each row through Triton's interpreter (the generated kernels) and the
torch reference executor (the transformed graph itself), so a wrong rule and a wrong lowering are
told apart.  Shapes stay small: the interpreter's cost is per launch and per program instance.
"""

from __future__ import annotations

import pytest
import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same, check_second_order, check_transforms, make

import tritonfunc


def params(table):
    """Rows are (id, fn, build) or (id, fn, build, marks)."""
    return [pytest.param(row[1], row[2], id=row[0], marks=row[3:]) for row in table]


# ---------------------------------------------------------------------------------------------
# Unary elementwise.

DOMAINS = {
    "any": lambda: (make(4, 6),),
    "positive": lambda: (make(4, 6, low=0.2, high=3.0),),
    "tan": lambda: (make(4, 6, low=-1.2, high=1.2),),
    "nonzero": lambda: (make(4, 6, low=0.3, high=2.0) * torch.where(make(4, 6, seed=3) > 0, 1.0, -1.0),),
    "wide": lambda: (make(4, 6, low=-6.0, high=6.0),),
}

UNARY = [
    ("neg", torch.neg, "any"),
    ("abs", torch.abs, "nonzero"),
    ("exp", torch.exp, "any"),
    ("log", torch.log, "positive"),
    ("log1p", torch.log1p, "positive"),
    ("expm1", torch.expm1, "any"),
    ("sin", torch.sin, "wide"),
    ("cos", torch.cos, "wide"),
    ("tan", torch.tan, "tan"),
    ("tanh", torch.tanh, "any"),
    ("sigmoid", torch.sigmoid, "wide"),
    ("sqrt", torch.sqrt, "positive"),
    ("rsqrt", torch.rsqrt, "positive"),
    ("reciprocal", torch.reciprocal, "nonzero"),
    ("erf", torch.erf, "any"),
    ("relu", torch.relu, "nonzero"),
    ("gelu", F.gelu, "any"),
    ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), "any"),
    ("softplus", F.softplus, "wide"),
    (
        "softplus_beta_threshold",
        lambda x: F.softplus(x, beta=2.0, threshold=3.0),
        "wide",
    ),
    ("floor", torch.floor, "wide"),
    ("ceil", torch.ceil, "wide"),
    ("sign", torch.sign, "nonzero"),
    ("exp2", torch.exp2, "any"),
    ("log2", torch.log2, "positive"),
    # Zero-derivative pieces inside a differentiable function.
    ("floor_plus_x", lambda x: torch.floor(x) * x, "wide"),
]


@pytest.mark.parametrize("fn, domain", [pytest.param(*row[1:3], id=row[0], marks=row[3:]) for row in UNARY])
def test_unary_rule_matches_torch_func(backend, fn, domain):
    """Each unary primitive's derivative (or zero derivative, for floor/ceil/sign) is torch's."""
    check_transforms(fn, *DOMAINS[domain]())


def test_unary_rules_through_a_scalar_output(backend):
    """A chain of unary rules summed to a scalar: grad is checked too, in one fused backward."""
    x = make(5, low=0.2, high=1.2)
    check_transforms(lambda x: (x.exp().log1p() * x.sqrt().tanh() + x.rsqrt().sigmoid() / x.tan()).sum(), x)


def test_relu_at_zero_has_zero_derivative_like_torch(backend):
    """torch's relu derivative at exactly 0 is 0 (threshold_backward keeps x > 0 only)."""
    x = torch.tensor([-1.0, 0.0, 2.0, 0.0, 3.0], dtype=torch.float64)
    check_transforms(torch.relu, x)


def test_abs_at_zero_has_zero_derivative_like_torch(backend):
    x = torch.tensor([-1.0, 0.0, 2.0, -0.0, 3.0], dtype=torch.float64)
    check_transforms(torch.abs, x)


# ---------------------------------------------------------------------------------------------
# Binary elementwise, where, clamp, casts.


def _two(low=-2.0, high=2.0):
    return lambda: (make(4, 6, low=low, high=high), make(4, 6, low=low, high=high, seed=1))


def _ties():
    """Two tensors equal in about half of their elements."""
    x, y = make(4, 6), make(4, 6, seed=1)
    return x, torch.where(make(4, 6, seed=2) > 0, x, y)


BINARY = [
    ("add", torch.add, _two()),
    ("add_alpha", lambda x, y: torch.add(x, y, alpha=2.5), _two()),
    ("sub", torch.sub, _two()),
    ("rsub_scalar", lambda x: 3.0 - x, lambda: (make(4, 6),)),
    ("mul", torch.mul, _two()),
    ("mul_scalar", lambda x: x * 1.5, lambda: (make(4, 6),)),
    ("div", torch.div, lambda: (make(4, 6), make(4, 6, low=0.5, high=2.0, seed=1))),
    ("div_scalar_by_tensor", lambda x: 2.0 / x, lambda: (make(4, 6, low=0.5, high=2.0),)),
    ("pow_tensor_exponent", torch.pow, lambda: (make(4, 6, low=0.3, high=2.0), make(4, 6, seed=1))),
    ("pow_2", lambda x: x**2, lambda: (make(4, 6),)),
    ("pow_3", lambda x: x**3, lambda: (make(4, 6),)),
    ("pow_half", lambda x: x**0.5, lambda: (make(4, 6, low=0.3, high=2.0),)),
    ("pow_minus_1", lambda x: x**-1, lambda: (make(4, 6, low=0.3, high=2.0),)),
    ("pow_2_5", lambda x: x**2.5, lambda: (make(4, 6, low=0.3, high=2.0),)),
    ("maximum", torch.maximum, _two()),
    ("minimum", torch.minimum, _two()),
    ("maximum_ties", torch.maximum, _ties),
    ("minimum_ties", torch.minimum, _ties),
    ("atan2", torch.atan2, _two()),
    # Broadcasting: the adjoint of the implicit broadcast is a sum over the broadcast axes.
    ("add_broadcast", torch.add, lambda: (make(4, 6), make(6, seed=1))),
    ("mul_broadcast_column", torch.mul, lambda: (make(4, 6), make(4, 1, seed=1))),
    ("div_broadcast", torch.div, lambda: (make(4, 1), make(6, low=0.5, high=2.0, seed=1))),
    ("where", lambda x, y: torch.where(x > y, x, y * 2), _two()),
    ("where_scalar_branch", lambda x: torch.where(x > 0, x.sin(), 0.0), lambda: (make(4, 6),)),
    ("masked_fill", lambda x: x.exp().masked_fill(x < 0, 1.0), lambda: (make(4, 6),)),
    ("clamp", lambda x: x.clamp(-0.5, 0.7), lambda: (make(4, 6),)),
    ("clamp_min", lambda x: x.clamp(min=-0.5), lambda: (make(4, 6),)),
    ("clamp_max", lambda x: x.clamp(max=0.7), lambda: (make(4, 6),)),
    ("clamp_tensor_bounds", lambda x, lo: x.clamp(min=lo), _two()),
]


@pytest.mark.parametrize("fn, build", params(BINARY))
def test_binary_rule_matches_torch_func(backend, fn, build):
    check_transforms(fn, *build())


@pytest.mark.parametrize(
    "backend",
    [
        "torch",
        "interpreter",
    ],
    indirect=True,
)
def test_scalar_base_pow_tensor_exponent(backend):
    """2.0 ** x: the derivative with respect to a tensor exponent, base a Python scalar."""
    check_transforms(lambda x: 2.0**x, make(4, 6))


CASTS = [
    ("f64_f32_f64", lambda x: (x.float() * 3).double() * x, lambda: (make(4, 6),)),
    ("f64_to_f32_output", lambda x: x.to(torch.float32).sin(), lambda: (make(4, 6),)),
    ("f32_to_f64", lambda x: x.double().exp(), lambda: (make(4, 6, dtype=torch.float32),)),
    ("f32_and_f64_mixed", lambda x, y: x * y.sin(), lambda: (make(4, 6, dtype=torch.float32), make(4, 6, seed=1))),
]


@pytest.mark.parametrize("fn, build", params(CASTS))
def test_cast_rule_matches_torch_func(backend, fn, build):
    """Casts between float32 and float64 are linear: tangents and cotangents are cast too.  Values that
    went through float32 are compared at float32 precision."""
    check_transforms(fn, *build(), rtol=1e-5, atol=1e-6)


def test_clamp_at_its_bounds_passes_the_gradient_like_torch(backend):
    """torch's clamp passes the whole derivative where x equals a bound (lo <= x <= hi)."""
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64)
    check_transforms(lambda x: x.clamp(-0.5, 0.5), x)


# ---------------------------------------------------------------------------------------------
# Reductions.


def _with_ties():
    x = make(4, 6)
    x[1, 2] = x[1, 4] = x[1].max() + 0.5  # row 1: a tie for the max
    x[2, 0] = x[2, 5] = x[2, 3] = x[2].min() - 0.5  # row 2: a three-way tie for the min
    return (x,)


def _prod_zeros(n):
    def build():
        x = make(4, 6, low=0.5, high=1.5)
        x[1, 3] = 0.0  # one zero in row 1
        if n == 2:
            x[2, 1] = x[2, 4] = 0.0  # two zeros in row 2
        return (x,)

    return build


REDUCTIONS = [
    ("sum_full", torch.sum, lambda: (make(4, 6),)),
    ("sum_dim0", lambda x: x.sum(0), lambda: (make(4, 6),)),
    ("sum_dim1_keepdim", lambda x: x.sum(-1, keepdim=True), lambda: (make(4, 6),)),
    ("sum_dims_3d", lambda x: x.sum((0, 2)), lambda: (make(2, 3, 4),)),
    ("mean_full", torch.mean, lambda: (make(4, 6),)),
    ("mean_dim1", lambda x: x.mean(1), lambda: (make(4, 6),)),
    ("amax_full", torch.amax, lambda: (make(4, 6),)),
    ("amax_dim1", lambda x: x.amax(1), lambda: (make(4, 6),)),
    ("amax_dim0_keepdim", lambda x: x.amax(0, keepdim=True), lambda: (make(4, 6),)),
    ("amin_full", torch.amin, lambda: (make(4, 6),)),
    ("amin_dim1", lambda x: x.amin(1), lambda: (make(4, 6),)),
    ("amax_ties_dim1", lambda x: x.amax(1), _with_ties),
    ("amin_ties_dim1", lambda x: x.amin(1), _with_ties),
    ("amax_ties_full", lambda x: torch.stack([x, x]).amax(), lambda: (make(4, 6),)),
    ("amin_ties_full", lambda x: x.amin(), _with_ties),
    ("max_full", lambda x: x.max(), _with_ties),
    ("var_full", torch.var, lambda: (make(4, 6),)),
    ("var_dim1", lambda x: x.var(1), lambda: (make(4, 6),)),
    ("var_dim0_unbiased_false", lambda x: x.var(0, unbiased=False), lambda: (make(4, 6),)),
    ("var_correction_0_keepdim", lambda x: torch.var(x, 1, correction=0, keepdim=True), lambda: (make(4, 6),)),
    ("std_full", torch.std, lambda: (make(4, 6),)),
    ("std_dim1", lambda x: x.std(1), lambda: (make(4, 6),)),
    ("prod_full", torch.prod, lambda: (make(4, 6, low=0.5, high=1.5),)),
    ("prod_dim1", lambda x: x.prod(1), lambda: (make(4, 6, low=-1.5, high=1.5),)),
    ("prod_dim1_one_zero", lambda x: x.prod(1), _prod_zeros(1)),
    ("prod_dim1_two_zeros", lambda x: x.prod(1), _prod_zeros(2)),
    ("prod_full_one_zero", torch.prod, _prod_zeros(1)),
    ("prod_full_two_zeros", torch.prod, _prod_zeros(2)),
]


@pytest.mark.parametrize("fn, build", params(REDUCTIONS))
def test_reduction_rule_matches_torch_func(backend, fn, build):
    check_transforms(fn, *build())


# ---------------------------------------------------------------------------------------------
# Shape ops (views, slices, concatenation): their adjoints are the inverse data movement.

# Captured constants (made outside the traced functions): they become constant inputs of the graph.
C_6x4, C_4x3x6, C_4x6 = make(6, 4, seed=5), make(4, 3, 6, seed=5), make(4, 6, seed=5)

SHAPES = [
    ("reshape", lambda x: x.reshape(3, 8).sin(), lambda: (make(4, 6),)),
    ("view_flat", lambda x: x.view(-1) * torch.arange(24, dtype=x.dtype), lambda: (make(4, 6),)),
    ("permute_3d", lambda x: x.permute(2, 0, 1).exp(), lambda: (make(2, 3, 4),)),
    ("transpose", lambda x: x.transpose(0, 1) * C_6x4, lambda: (make(4, 6),)),
    ("t", lambda x: x.t().cos(), lambda: (make(4, 6),)),
    ("unsqueeze", lambda x: x.unsqueeze(1) * C_4x3x6, lambda: (make(4, 6),)),
    ("squeeze", lambda x: x.squeeze(1).sin(), lambda: (make(4, 1, 6),)),
    ("expand", lambda x: x.expand(4, 6) * C_4x6, lambda: (make(1, 6),)),
    ("expand_new_dim", lambda x: x.expand(3, 4, 6).sin(), lambda: (make(4, 6),)),
    ("slice_steps", lambda x: x[::2, 1::3].exp(), lambda: (make(4, 6),)),
    ("slice_range_step", lambda x: x[1:4, 0:5:2] * 2, lambda: (make(4, 6),)),
    ("select_int", lambda x: x[1].sin(), lambda: (make(4, 6),)),
    ("select_negative", lambda x: x[:, -1] * x[:, 0], lambda: (make(4, 6),)),
    ("unbind", lambda x: torch.stack([r * i for i, r in enumerate(x.unbind(0))]), lambda: (make(4, 6),)),
    ("split", lambda x: x.split([2, 4], dim=1)[1].exp(), lambda: (make(4, 6),)),
    ("cat", lambda x, y: torch.cat([x.sin(), y, x], dim=1), lambda: (make(4, 6), make(4, 2, seed=1))),
    ("cat_dim0", lambda x, y: torch.cat([x, y * 2]), lambda: (make(4, 6), make(3, 6, seed=1))),
    ("stack", lambda x, y: torch.stack([x, y.exp()], dim=1), _two()),
    ("stack_last", lambda x, y: torch.stack([x * y, y], dim=-1), _two()),
]


@pytest.mark.parametrize("fn, build", params(SHAPES))
def test_shape_rule_matches_torch_func(backend, fn, build):
    check_transforms(fn, *build())


# ---------------------------------------------------------------------------------------------
# Composites: decomposed into primitives, differentiated through the decomposition.


def _logits_and_target():
    return make(4, 5, low=-3.0, high=3.0), torch.tensor([1, 0, 4, 2])


WEIGHT = make(5, low=0.5, high=2.0, seed=4)


def _target_with_ignored():
    return make(4, 5, low=-3.0, high=3.0), torch.tensor([1, -100, 4, 2])


COMPOSITES = [
    ("softmax_dim1", lambda x: x.softmax(1), lambda: (make(4, 6, low=-3.0, high=3.0),)),
    ("softmax_dim0", lambda x: F.softmax(x, dim=0), lambda: (make(4, 6, low=-3.0, high=3.0),)),
    ("log_softmax_dim1", lambda x: x.log_softmax(-1), lambda: (make(4, 6, low=-3.0, high=3.0),)),
    ("log_softmax_dim0", lambda x: F.log_softmax(x, dim=0), lambda: (make(4, 6, low=-3.0, high=3.0),)),
    ("logsumexp_dim1", lambda x: x.logsumexp(1), lambda: (make(4, 6, low=-3.0, high=3.0),)),
    ("logsumexp_full", lambda x: x.logsumexp((0, 1)), lambda: (make(4, 6, low=-3.0, high=3.0),)),
    ("logsumexp_keepdim", lambda x: torch.logsumexp(x, 0, keepdim=True), lambda: (make(4, 6),)),
    ("mse_loss_mean", F.mse_loss, _two()),
    ("mse_loss_sum", lambda x, y: F.mse_loss(x, y, reduction="sum"), _two()),
    ("mse_loss_none", lambda x, y: F.mse_loss(x, y, reduction="none"), _two()),
    ("cross_entropy_mean", F.cross_entropy, _logits_and_target),
    ("cross_entropy_sum", lambda z, t: F.cross_entropy(z, t, reduction="sum"), _logits_and_target),
    ("cross_entropy_none", lambda z, t: F.cross_entropy(z, t, reduction="none"), _logits_and_target),
    # The class weights are a captured constant: torch.func does not differentiate nll_loss's weight.
    ("cross_entropy_weight", lambda z, t: F.cross_entropy(z, t, weight=WEIGHT), _logits_and_target),
    (
        "cross_entropy_weight_sum",
        lambda z, t: F.cross_entropy(z, t, weight=WEIGHT, reduction="sum"),
        _logits_and_target,
    ),
    (
        "cross_entropy_weight_none",
        lambda z, t: F.cross_entropy(z, t, weight=WEIGHT, reduction="none"),
        _logits_and_target,
    ),
    ("cross_entropy_weight_ignore_index", lambda z, t: F.cross_entropy(z, t, weight=WEIGHT), _target_with_ignored),
    ("cross_entropy_ignore_index", F.cross_entropy, _target_with_ignored),
    (
        "cross_entropy_ignore_index_custom",
        lambda z, t: F.cross_entropy(z, t, ignore_index=2, reduction="none"),
        _logits_and_target,
    ),
    ("cross_entropy_single_row", F.cross_entropy, lambda: (make(5, low=-3.0, high=3.0), torch.tensor(3))),
    ("nll_loss_of_log_softmax", lambda z, t: F.nll_loss(z.log_softmax(1), t), _logits_and_target),
    ("detach_inside", lambda x: x.detach() * x.sin() + x.detach().exp(), lambda: (make(4, 6),)),
    ("detach_only", lambda x: x.detach() * 2, lambda: (make(4, 6),)),
]


@pytest.mark.parametrize("fn, build", params(COMPOSITES))
def test_composite_rule_matches_torch_func(backend, fn, build):
    check_transforms(fn, *build())


def test_cross_entropy_weight_tangent_is_ignored_like_torch_func(backend):
    """torch.func.jvp gives a zero tangent through nll_loss's weight (and vjp refuses to differentiate it)."""
    z, t = _logits_and_target()
    primals, tangents = (z, WEIGHT), (torch.zeros_like(z), torch.ones_like(WEIGHT))

    def f(z, w):
        return F.cross_entropy(z, t, weight=w)

    assert_same(tritonfunc.jvp(f, primals, tangents), torch.func.jvp(f, primals, tangents))


@pytest.mark.parametrize("argnums", [(0,), (1, 2), (0, 1, 2)], ids=["x", "weight_bias", "all"])
def test_layer_norm_rule_with_weight_and_bias(backend, argnums):
    """layer_norm over the last dim, with weight and bias differentiated through argnums."""
    x, w, bias = make(4, 6), make(6, low=0.5, high=1.5, seed=1), make(6, seed=2)
    check_transforms(lambda x, w, bias: F.layer_norm(x, (6,), w, bias), x, w, bias, argnums=argnums)


def test_layer_norm_over_two_dims(backend):
    x, w = make(2, 3, 4), make(3, 4, low=0.5, high=1.5, seed=1)
    check_transforms(lambda x, w: F.layer_norm(x, (3, 4), w, None, eps=1e-3), x, w)


def test_detach_gives_zero_gradient(backend):
    """x.detach() inside f: grad through the detached path is zero, only the live path counts."""
    x = make(5)
    g = tritonfunc.grad(lambda x: (x.detach() ** 2 + x).sum())(x)
    assert torch.equal(g, torch.ones_like(x))
    g0 = tritonfunc.grad(lambda x: (x.detach() * 3).sum())(x)
    assert torch.equal(g0, torch.zeros_like(x))


# ---------------------------------------------------------------------------------------------
# Second order: the rules differentiate again (Hessian-vector products, both nestings).

C2 = make(4, 6, seed=9)
TARGET = torch.tensor([1, 0, 4, 2])


def _prod_rows(x):
    return x.prod(1).sum()


SECOND_ORDER = [
    ("unary_chain", lambda x: (x.tanh() * x.sigmoid() + x.erf() + x.rsqrt().log1p()).sum(), (0.3, 2.0)),
    ("tan_expm1", lambda x: (x.tan() * x.expm1()).sum(), (-1.0, 1.0)),
    ("gelu_softplus", lambda x: (F.gelu(x) + F.softplus(x)).sum(), (-2.0, 2.0)),
    ("div_reciprocal", lambda x: (x.sin() / (x * x + 1) + (x * x + 2).reciprocal()).sum(), (-2.0, 2.0)),
    ("pow_tensor", lambda x: torch.pow(x.abs() + 0.5, x).sum(), (-2.0, 2.0)),
    ("atan2", lambda x: torch.atan2(x, x.cos()).sum(), (-2.0, 2.0)),
    ("amax_squared", lambda x: (x.amax(1) ** 2).sum(), (-2.0, 2.0)),
    ("prod_full", torch.prod, (0.5, 1.5)),
    ("std", lambda x: x.std(1).sum(), (-2.0, 2.0)),
    ("softmax_weighted", lambda x: (x.softmax(1) * C2).sum(), (-2.0, 2.0)),
    ("logsumexp", lambda x: x.logsumexp(1).sum(), (-2.0, 2.0)),
    ("layer_norm", lambda x: (F.layer_norm(x, (6,)) * C2[0]).pow(2).sum(), (-2.0, 2.0)),
    ("cross_entropy", lambda z: F.cross_entropy(z[:, :5], TARGET), (-2.0, 2.0)),
    ("mse_loss", lambda x: F.mse_loss(x.exp(), x.sin() * C2), (-1.0, 1.0)),
    ("slice_cat", lambda x: (torch.cat([x[::2], x[1:3].sin()]) ** 3).sum(), (-2.0, 2.0)),
]


@pytest.mark.parametrize("fn, domain", [pytest.param(fn, d, id=n) for n, fn, d in SECOND_ORDER])
def test_second_order_rule_matches_torch_func(backend, fn, domain):
    check_second_order(fn, make(4, 6, low=domain[0], high=domain[1]))


def test_second_derivative_of_prod_with_zeros(backend):
    """For x = [0, 2, 3], d2 prod / dx0 dx1 = 3 and d2 prod / dx0 dx2 = 2 (torch.func agrees)."""
    x = make(4, 6, low=0.5, high=1.5)
    x[1, 3] = 0.0
    x[2, 1] = x[2, 4] = 0.0
    check_second_order(_prod_rows, x)
