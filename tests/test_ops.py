"""Every covered op, alone or in small combinations, against eager torch on both CPU backends.

Each table row is (id, function, inputs); inputs are built per dtype from a fixed seed, inside the
domain the op needs.  The `backend` fixture runs each case through Triton's interpreter (the
generated kernels, also compiled for sm_90) and through the torch reference executor (the traced
graph with each primitive's torch implementation), so a wrong lowering and a wrong trace are told
apart.  Shapes are small: the interpreter's cost is per launch and per program, not per element.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from helpers import check

import tritonfunc

FLOATS = [torch.float32, torch.float64]


def make(*shape, dtype=torch.float32, low=-3.0, high=3.0, seed=0):
    """Uniform values in [low, high), reproducible per (shape, seed)."""
    g = torch.Generator().manual_seed(seed + 1000 * len(shape) + sum(shape))
    return (torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low).to(dtype)


def normal(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed + 7 + sum(shape))
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def ints(*shape, low=-20, high=20, dtype=torch.int64, seed=0):
    g = torch.Generator().manual_seed(seed + 11 + sum(shape))
    return torch.randint(low, high, shape, generator=g).to(dtype)


def with_ties(x, seed=1):
    """A tensor equal to `x` in about half of its elements, so eq/le/ge see both outcomes."""
    y = make(*x.shape, dtype=x.dtype, seed=seed)
    keep = make(*x.shape, seed=seed + 1) > 0
    return torch.where(keep, x, y)


def case_params(table):
    return [pytest.param(fn, build, id=name) for name, fn, build in table]


# ---------------------------------------------------------------------------------------------
# Unary elementwise.  Inputs: "any" in [-3, 3); domains where the op needs them.

DOMAINS = {
    "any": lambda dt: make(4, 8, dtype=dt),
    "positive": lambda dt: make(4, 8, dtype=dt, low=0.1, high=4.0),
    "tan": lambda dt: make(4, 8, dtype=dt, low=-1.2, high=1.2),  # away from the poles at +-pi/2
    "nonzero": lambda dt: make(4, 8, dtype=dt, low=0.2, high=3.0) * torch.where(make(4, 8) > 0, 1, -1).to(dt),
    "zeros": lambda dt: torch.where(make(4, 8, seed=5) > 1, 0.0, make(4, 8, dtype=dt)).to(dt),
    "wide": lambda dt: make(4, 8, dtype=dt, low=-10.0, high=10.0),
}

UNARY = [
    ("neg", torch.neg, "any"),
    ("abs", torch.abs, "any"),
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
    ("relu", torch.relu, "zeros"),
    ("gelu", F.gelu, "any"),
    ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), "any"),
    ("softplus", F.softplus, "wide"),
    ("sign", torch.sign, "zeros"),
    ("floor", torch.floor, "wide"),
    ("ceil", torch.ceil, "wide"),
    ("exp2", torch.exp2, "any"),
    ("log2", torch.log2, "positive"),
    ("log10", torch.log10, "positive"),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("fn, domain", [pytest.param(fn, d, id=n) for n, fn, d in UNARY])
def test_unary_op_matches_eager(backend, fn, domain, dtype):
    """Each unary lowering (tl expression, libdevice call or decomposition) computes torch's value."""
    check(fn, DOMAINS[domain](dtype))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_unary_ops_at_special_values(backend, dtype):
    """inf, -inf, 0 and -0 go through exp/log/sqrt/reciprocal/sigmoid/abs/neg as in torch."""
    x = torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), -float("inf"), 1000.0, -1000.0], dtype=dtype)
    check(lambda x: (x.exp(), x.abs().log(), x.abs().sqrt(), x.reciprocal(), x.sigmoid(), -x, x.abs()), x)


def test_sign_of_nan_matches_eager(interpreter):
    """The kernel's sign keeps NaN, but eager torch (and the torch backend) returns 0 for NaN."""
    check(torch.sign, torch.tensor([-2.0, 0.0, 3.0, float("nan")]))


def test_nan_propagates_through_elementwise_ops(backend):
    """NaN flows through arithmetic, maximum/minimum, relu and clamp as in torch."""
    x = torch.tensor([float("nan"), 1.0, -1.0, 2.0])
    y = torch.tensor([0.0, float("nan"), 3.0, -3.0])
    check(lambda x, y: (x + y, torch.maximum(x, y), torch.minimum(x, y), x.relu(), x.clamp(-0.5, 0.5)), x, y)


# ---------------------------------------------------------------------------------------------
# Binary elementwise.

BINARY = [
    ("add", torch.add, "any"),
    ("add_alpha", lambda a, b: torch.add(a, b, alpha=2.5), "any"),
    ("sub", torch.sub, "any"),
    ("sub_alpha", lambda a, b: torch.sub(a, b, alpha=-0.5), "any"),
    ("mul", torch.mul, "any"),
    ("div", torch.div, "nonzero"),
    ("div_floor", lambda a, b: torch.div(a, b, rounding_mode="floor"), "nonzero"),
    ("div_trunc", lambda a, b: torch.div(a, b, rounding_mode="trunc"), "nonzero"),
    ("remainder", torch.remainder, "nonzero"),
    ("pow_tensor_exponent", torch.pow, "positive"),
    ("maximum", torch.maximum, "any"),
    ("minimum", torch.minimum, "any"),
    ("atan2", torch.atan2, "any"),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("fn, domain", [pytest.param(fn, d, id=n) for n, fn, d in BINARY])
def test_binary_op_matches_eager(backend, fn, domain, dtype):
    """Each binary lowering agrees with torch; the second operand lies in the op's domain."""
    check(fn, make(4, 8, dtype=dtype, seed=3), DOMAINS[domain](dtype))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("exponent", [2, 3, 0.5, -1, 2.5, 0, 1, -2])
def test_pow_with_scalar_exponent(backend, exponent, dtype):
    """x ** k: the special cases (0, 1, 2, 0.5, -1) are rewritten, the rest go through pow."""
    check(lambda x: x**exponent, make(4, 8, dtype=dtype, low=0.1, high=3.0))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_pow_of_negative_base(backend, dtype):
    """Integral exponents of negative bases are real; fractional ones are NaN, as in torch."""
    x = torch.tensor([-2.0, -0.5, 0.0, 1.5], dtype=dtype)
    check(lambda x: (x**2, x**3, x**2.5, x**-1, torch.pow(x, torch.full_like(x, 3.0))), x)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_scalar_base_pow(backend, dtype):
    """2 ** x (rpow) puts the scalar first."""
    check(lambda x: 2**x, make(4, 8, dtype=dtype))


COMPARISONS = [
    ("eq", torch.eq),
    ("ne", torch.ne),
    ("lt", torch.lt),
    ("le", torch.le),
    ("gt", torch.gt),
    ("ge", torch.ge),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("fn", [pytest.param(fn, id=n) for n, fn in COMPARISONS])
def test_comparison_gives_bool(backend, fn, dtype):
    """Comparisons produce bool tensors; half the elements tie, so equality is exercised."""
    x = make(4, 8, dtype=dtype)
    check(fn, x, with_ties(x))


@pytest.mark.parametrize("fn", [pytest.param(fn, id=n) for n, fn in COMPARISONS])
def test_comparison_with_python_scalar_and_mixed_dtypes(backend, fn):
    """Comparing an int tensor with a float scalar, and float32 with float64, promotes first."""
    a = ints(3, 4, low=-3, high=3)
    check(lambda a, x: (fn(a, 0.5), fn(a, 1), fn(x, x.double()), fn(a, x)), a, make(3, 4).round())


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_where(backend, dtype):
    """torch.where with tensor and scalar branches, and with a broadcast condition."""
    x, y = make(4, 8, dtype=dtype), make(4, 8, dtype=dtype, seed=1)
    cond_row = make(8, seed=2) > 0
    check(
        lambda x, y, c: (
            torch.where(x > 0, x, y),
            torch.where(x > 0, x, 0.5),
            torch.where(x > 0, 1.0, 0.0),
            torch.where(c, x, y),
            x.masked_fill(x < 0, -7.0),
        ),
        x,
        y,
        cond_row,
    )


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_clamp(backend, dtype):
    """clamp with scalar bounds (both, min only, max only) and with tensor bounds (full and broadcast)."""
    x = make(4, 8, dtype=dtype)
    lo, hi = make(4, 8, dtype=dtype, seed=1) - 1, make(8, dtype=dtype, seed=2) + 1
    check(
        lambda x, lo, hi: (
            x.clamp(-0.5, 0.5),
            x.clamp(min=0.0),
            x.clamp(max=0.2),
            torch.clamp(x, lo, hi),
            torch.clamp(x, min=lo),
            torch.clamp(x, max=hi),
            torch.clamp_min(x, 1.0),
            torch.clamp_max(x, -1.0),
        ),
        x,
        lo,
        hi,
    )


# ---------------------------------------------------------------------------------------------
# Casts and constants.

CASTS = [
    ("f32_to_f64", lambda x: x.double(), torch.float32),
    ("f64_to_f32", lambda x: x.float(), torch.float64),
    ("f32_to_f16", lambda x: x.half(), torch.float32),
    ("f64_to_f16", lambda x: x.half(), torch.float64),
    ("f16_to_f32", lambda x: x.float(), torch.float16),
    ("f32_to_i32_truncates", lambda x: x.to(torch.int32), torch.float32),
    ("f64_to_i64", lambda x: x.long(), torch.float64),
    ("f32_to_bool", lambda x: x.bool(), torch.float32),
    ("bool_to_f32", lambda x: (x > 0).float(), torch.float32),
    ("i64_to_f32", lambda x: x.long().float() * 0.5, torch.float32),
    ("i32_to_i64", lambda x: x.to(torch.int32).long() + 1, torch.float32),
    ("same_dtype_is_identity", lambda x: x.to(torch.float32) * 2, torch.float32),
]


@pytest.mark.parametrize("fn, in_dtype", [pytest.param(fn, d, id=n) for n, fn, d in CASTS])
def test_cast(backend, fn, in_dtype):
    """Each cast gives torch's dtype and values (float to int truncates toward zero, bool is x != 0)."""
    x = make(4, 8, dtype=torch.float64, low=-5, high=5)
    x[0, :3] = torch.tensor([0.0, -0.0, 2.0])
    check(fn, x.to(in_dtype))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_python_scalar_constants(backend, dtype):
    """Python ints, floats and bools mix with tensors without changing the tensor's dtype."""
    x = make(4, 8, dtype=dtype)
    check(
        lambda x: (x + 1, 2 * x, x / 3, 1 - x, x * 0.1 + 1e-3, x + True, 3.5 / (x.abs() + 1), -x * 1e10),
        x,
    )


def test_float64_constant_keeps_full_precision(backend):
    """A float64 program keeps every digit of a literal (a float32 literal would lose ~1e-8)."""
    x = torch.ones(4, dtype=torch.float64)
    check(lambda x: (x * 0.1, x + 1 / 3, x * 1.000000001), x)


def test_int_tensor_with_scalars_promotes_like_torch(backend):
    """int + int stays int64; int * float becomes the default float dtype; int / int is true division."""
    a = ints(3, 4)
    check(lambda a: (a + 1, a * 2 - 3, a * 1.5, a / 4, a // 3, a % 3, -a, a.abs(), a.sign(), 2 ** a.abs()), a)


def test_mixed_dtype_promotion(backend):
    """float32 op float64 gives float64; int op float32 gives float32; a 0-d f64 tensor does not promote."""
    x32, x64, a = make(4, 8), make(4, 8, dtype=torch.float64, seed=1), ints(4, 8)
    s64 = torch.tensor(1.5, dtype=torch.float64)
    check(lambda x32, x64, a, s: (x32 + x64, a * x32, x32 * s, a + s), x32, x64, a, s64)


# ---------------------------------------------------------------------------------------------
# Broadcasting.

BROADCASTS = [
    ("rank3_with_rank2", torch.add, (4, 1, 8), (3, 1)),
    ("scalar_tensor_times_matrix", torch.mul, (), (4, 8)),
    ("row_vector", torch.sub, (4, 8), (8,)),
    ("column_vector", torch.div, (4, 8), (4, 1)),
    ("outer", torch.mul, (4, 1), (1, 8)),
    ("size_one_vector", torch.maximum, (1,), (4, 8)),
    ("both_sides", torch.atan2, (2, 1, 5), (1, 3, 1)),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("fn, a_shape, b_shape", [pytest.param(*c[1:], id=c[0]) for c in BROADCASTS])
def test_broadcasting(backend, fn, a_shape, b_shape, dtype):
    """Operands of different shapes broadcast as in torch, whichever side is smaller."""
    check(fn, make(*a_shape, dtype=dtype, low=0.5), make(*b_shape, dtype=dtype, seed=1, low=0.5))


def test_zero_dim_tensors(backend):
    """0-d inputs and outputs: a scalar in, a scalar out."""
    s = torch.tensor(3.0)
    check(lambda s, x: (s * 2 + 1, x.sum() * s, (s > 1)), s, make(4))


# ---------------------------------------------------------------------------------------------
# Reductions.

REDUCTIONS = [
    ("sum_last", lambda x: x.sum(-1)),
    ("sum_first_keepdim", lambda x: x.sum(0, keepdim=True)),
    ("sum_two_dims", lambda x: x.sum((0, 2))),
    ("sum_negative_dims", lambda x: x.sum((-1, -3))),
    ("sum_all", lambda x: x.sum()),
    ("sum_to_float64", lambda x: x.sum(-1, dtype=torch.float64)),
    ("mean_middle", lambda x: x.mean(1)),
    ("mean_two_dims_keepdim", lambda x: x.mean((0, 2), keepdim=True)),
    ("mean_all", lambda x: x.mean()),
    ("amax_last", lambda x: x.amax(-1)),
    ("amax_two_dims", lambda x: x.amax((0, 1), keepdim=True)),
    ("amin_first", lambda x: x.amin(0)),
    ("max_all", lambda x: x.max()),
    ("min_all", lambda x: x.min()),
    ("var_last", lambda x: x.var(-1)),
    ("var_population_two_dims", lambda x: x.var((1, 2), correction=0)),
    ("var_all_keepdim", lambda x: x.var(dim=None, keepdim=True)),
    ("std_last_keepdim", lambda x: x.std(-1, keepdim=True)),
    ("std_all", lambda x: x.std()),
    ("std_unbiased_false", lambda x: x.std(0, unbiased=False)),
    ("prod_last", lambda x: (x * 0.3 + 1).prod(-1)),
    ("prod_first_keepdim", lambda x: (x * 0.3 + 1).prod(0, keepdim=True)),
    ("prod_all", lambda x: (x * 0.1 + 1).prod()),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("fn", [pytest.param(fn, id=n) for n, fn in REDUCTIONS])
def test_reduction(backend, fn, dtype):
    """Each reduction over a (3, 4, 5) input: one dim, several dims, negative dims, all dims, keepdim."""
    check(fn, make(3, 4, 5, dtype=dtype))


AXES = [dims for k in (1, 2, 3) for dims in itertools.combinations((0, 1, 2), k)]


@pytest.mark.parametrize("keepdim", [False, True], ids=["drop", "keepdim"])
@pytest.mark.parametrize("dims", AXES, ids=lambda d: "dims" + "".join(map(str, d)))
@pytest.mark.parametrize("op", ["sum", "amax", "mean"])
def test_reduction_over_every_axis_combination(backend, op, dims, keepdim):
    """Reducing any subset of axes of a 3-D input: kept axes become rows, reduced ones columns."""
    check(lambda x: getattr(x, op)(dims, keepdim=keepdim), make(3, 4, 5))


def test_reductions_over_size_one_axes(backend):
    """Reducing an axis of length 1 is a reshape; a length-1 row is still a row."""
    check(lambda x: (x.sum(1), x.amax(1, keepdim=True), x.mean((0, 1)), x.sum(0)), make(1, 1, 5))


def test_reductions_propagate_nan(backend):
    """amax/amin/sum of a row with a NaN are NaN, other rows are unaffected (tl.max skips NaN)."""
    x = make(4, 8)
    x[1, 3] = float("nan")
    check(lambda x: (x.amax(-1), x.amin(-1), x.sum(-1), x.amax(0), x.max(), x.min()), x)


def test_reductions_of_infinities(backend):
    """A row of -inf has amax -inf; +inf and -inf in one row sum to NaN."""
    inf = float("inf")
    x = torch.tensor([[-inf, -inf, -inf], [inf, -inf, 1.0], [1.0, 2.0, inf]])
    check(lambda x: (x.amax(-1), x.amin(-1), x.sum(-1), torch.logsumexp(x, -1)), x)


def test_integer_and_bool_reductions(backend):
    """sum/prod of ints stay int64, amax/amin keep the int dtype, any/all of bools are bools."""
    a = ints(3, 4, low=-4, high=5)
    x = make(3, 4)
    check(
        lambda a, x: (
            a.sum(-1),
            a.sum(),
            a.prod(1),
            a.amax(0),
            a.amin(),
            (x > 0).sum(-1),
            (x > 0).any(-1),
            (x > -2).all(),
            (x > 10).any(),
            a.float().mean(1),
        ),
        a,
        x,
    )


# ---------------------------------------------------------------------------------------------
# Shape ops: views move no data inside a kernel, only indices.

SHAPE_OPS = [
    ("view", lambda x: x.view(4, 2, 4) + 1, (4, 8)),
    ("view_merge_dims", lambda x: x.view(12, 5) * 2, (3, 4, 5)),
    ("reshape_infer", lambda x: x.reshape(-1, 2) - 1, (4, 8)),
    ("reshape_to_1d", lambda x: x.reshape(-1), (3, 4, 5)),
    ("permute", lambda x: x.permute(2, 0, 1), (3, 4, 5)),
    ("permute_then_reshape", lambda x: x.permute(2, 0, 1).reshape(5, 12) + 1, (3, 4, 5)),
    ("transpose", lambda x: x.transpose(0, 2) * 3, (3, 4, 5)),
    ("dot_T", lambda x: x.T + 1, (4, 8)),
    ("t_method", lambda x: x.t().exp(), (4, 8)),
    ("mT", lambda x: x.mT.sin(), (3, 4, 5)),
    ("unsqueeze", lambda x: x.unsqueeze(1) * 2, (4, 8)),
    ("unsqueeze_last", lambda x: x.unsqueeze(-1) + x.unsqueeze(0).sum(0).unsqueeze(-1), (4, 8)),
    ("squeeze_all", lambda x: x.squeeze() + 1, (4, 1, 8)),
    ("squeeze_dim", lambda x: x.squeeze(1) + 1, (4, 1, 8)),
    ("none_index", lambda x: x[:, None, :] * x[None], (4, 8)),
    ("expand", lambda x: x.expand(3, 4, 8) * 2, (4, 1)),
    ("expand_as", lambda x: x.expand(4, 8) + x.unsqueeze(0).expand(4, 8).T.T, (8,)),
    ("flatten", lambda x: x.flatten() + 0, (3, 4, 5)),
    ("flatten_from_dim", lambda x: x.flatten(1) * 2, (3, 4, 5)),
    ("slice_with_steps", lambda x: x[::2, 1:4] + 1, (4, 8)),
    ("slice_last_dim_step", lambda x: x[..., ::3] * 2, (3, 4, 5)),
    ("slice_offset_step", lambda x: x[1:, 1::3].exp(), (4, 8)),
    ("slice_negative_bounds", lambda x: x[-3:-1, :-2] - 1, (4, 8)),
    ("slice_past_end", lambda x: x[:, 5:100] * 2, (4, 8)),
    ("narrow", lambda x: x.narrow(1, 2, 3) * 2, (4, 8)),
    ("select_int", lambda x: x[1] + 1, (4, 8)),
    ("select_negative", lambda x: x[:, -1] + 1, (4, 8)),
    ("select_both", lambda x: x[-1, 2] * 2, (4, 8)),
    ("select_3d", lambda x: x[:, 2, 1:] * 2, (3, 4, 5)),
    ("cat_dim0", lambda x: torch.cat([x, x * 2]), (4, 8)),
    ("cat_dim1_three", lambda x: torch.cat([x, x[:, :3] + 1, -x], 1), (4, 8)),
    ("cat_negative_dim", lambda x: torch.cat([x.sin(), x.cos()], -1), (3, 4, 5)),
    ("stack_dim0", lambda x: torch.stack([x, x + 1, x * 2]), (4, 8)),
    ("stack_last", lambda x: torch.stack([x, -x], -1), (4, 8)),
    ("split", lambda x: x.split(3, dim=1), (4, 8)),
    ("chunk", lambda x: tuple(c * 2 for c in x.chunk(2, 0)), (4, 8)),
    ("unbind", lambda x: x.unbind(1), (3, 4, 5)),
    ("identity_output", lambda x: x, (4, 8)),
    ("clone_contiguous", lambda x: x.t().contiguous().clone(), (4, 8)),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("fn, shape", [pytest.param(fn, s, id=n) for n, fn, s in SHAPE_OPS])
def test_shape_op(backend, fn, shape, dtype):
    """Views, slices, concatenation and stacking produce torch's shapes and values."""
    check(fn, make(*shape, dtype=dtype))


def test_cat_of_mixed_dtypes_promotes(backend):
    """torch.cat of float32 and int64 tensors gives float32."""
    check(lambda x, a: torch.cat([x, a], 0), make(2, 4), ints(3, 4))


# ---------------------------------------------------------------------------------------------
# Composites (decomposed by torch, then fused).

COMPOSITES = [
    ("softmax_last", lambda x: torch.softmax(x, -1)),
    ("softmax_first", lambda x: F.softmax(x, 0)),
    ("log_softmax_last", lambda x: F.log_softmax(x, -1)),
    ("log_softmax_middle", lambda x: torch.log_softmax(x, 1)),
    ("logsumexp_last", lambda x: torch.logsumexp(x, -1)),
    ("logsumexp_two_dims_keepdim", lambda x: torch.logsumexp(x, (0, 2), keepdim=True)),
    ("layer_norm_last", lambda x: F.layer_norm(x, (5,))),
    ("layer_norm_last_two", lambda x: F.layer_norm(x, (4, 5), eps=1e-3)),
    ("mse_loss_mean", lambda x: F.mse_loss(x, x * 0.5 + 1)),
    ("mse_loss_sum", lambda x: F.mse_loss(x, torch.zeros_like(x), reduction="sum")),
    ("mse_loss_none", lambda x: F.mse_loss(x.sin(), x.cos(), reduction="none")),
    ("standardize", lambda x: (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5)),
    ("silu", F.silu),
    ("hardtanh", lambda x: F.hardtanh(x, -0.5, 0.5)),
    ("leaky_relu", lambda x: F.leaky_relu(x, 0.1)),
    ("elu", F.elu),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("fn", [pytest.param(fn, id=n) for n, fn in COMPOSITES])
def test_composite(backend, fn, dtype):
    """Composite functions decompose into primitives and keep torch's numerics."""
    check(fn, make(3, 4, 5, dtype=dtype))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_layer_norm_with_weight_and_bias(backend, dtype):
    """layer_norm with weight and bias, weight only, bias only."""
    x, w, b = make(4, 8, dtype=dtype), make(8, dtype=dtype, seed=1), make(8, dtype=dtype, seed=2)
    check(
        lambda x, w, b: (
            F.layer_norm(x, (8,), w, b),
            F.layer_norm(x, (8,), w, None),
            F.layer_norm(x, (8,), None, b),
            torch.nn.functional.layer_norm(x, (8,), w, b, eps=0.1),
        ),
        x,
        w,
        b,
    )


def test_layer_norm_module(backend):
    """An nn.LayerNorm module's parameters are captured as constants."""
    ln = torch.nn.LayerNorm(8)
    with torch.no_grad():
        ln.weight.copy_(make(8, seed=1))
        ln.bias.copy_(make(8, seed=2))
    check(lambda x: ln(x).detach(), make(4, 8))


# ---------------------------------------------------------------------------------------------
# Non-contiguous inputs: the kernel reads through the input's strides.

NON_CONTIGUOUS = [
    ("transposed", lambda: make(8, 4).t()),
    ("sliced_columns", lambda: make(4, 16)[:, ::2]),
    ("sliced_offset", lambda: make(6, 10)[1:5, 2:10]),
    ("expanded_stride_0", lambda: make(8).expand(4, 8)),
    ("expanded_column", lambda: make(4, 1).expand(4, 8)),
    ("permuted_3d", lambda: make(5, 3, 4).permute(1, 2, 0)),
    ("transposed_then_sliced", lambda: make(16, 6).t()[1:5, ::2]),
]


@pytest.mark.parametrize("make_input", [pytest.param(f, id=n) for n, f in NON_CONTIGUOUS])
def test_non_contiguous_input(backend, make_input):
    """Elementwise, row reductions, column reductions and softmax on strided inputs."""
    x = make_input()
    y = make(*x.shape, seed=9)
    check(
        lambda x, y: (x * y + 1, x.exp(), x.sum(-1), x.amax(0), torch.softmax(x, -1), x.reshape(-1) * 2),
        x,
        y,
    )


@pytest.mark.parametrize(
    "fn, make_input",
    [
        pytest.param(lambda x: x * 2, lambda: make(1).expand(4), id="one_element_expanded"),
        pytest.param(lambda x: x.reshape(-1)[:5] * 2, lambda: make(4, 1).expand(4, 8), id="slice_within_stride_0_row"),
    ],
)
def test_input_read_at_one_address_by_every_lane(interpreter, fn, make_input):
    """Every lane of the block reads the same element of a stride-0 input."""
    check(fn, make_input())


def test_input_used_twice_with_different_views(backend):
    """One buffer read through two index maps in one kernel (x and x.T)."""
    check(lambda x: x * x.T + x.sum(0, keepdim=True), make(6, 6))


# ---------------------------------------------------------------------------------------------
# Chains and mixed programs.

CHAINS = [
    ("elementwise_chain", lambda x, y: ((x * 2 + 1).sin() * y).exp() - y.abs().sqrt()),
    ("gated", lambda x, y: torch.tanh(x) * torch.sigmoid(y) + F.gelu(x * y)),
    ("chain_then_reduce", lambda x, y: ((x - y) ** 2).mean(-1).sqrt()),
    ("reduce_then_broadcast", lambda x, y: x / x.abs().sum(0, keepdim=True) + y.amax(-1, keepdim=True)),
    ("two_stage_softmax", lambda x, y: torch.softmax(torch.softmax(x, -1) * y, 0)),
    ("matmul_as_reduction", lambda x, y: x @ y.T),
    ("linear_and_relu", lambda x, y: torch.relu(F.linear(x, y, y[0, :4])).sum(-1)),
    ("shared_subexpression", lambda x, y: (x.exp() + 1, x.exp() * y, (x.exp() * y).sum())),
    ("reduction_of_reduction", lambda x, y: x.sum(-1).amax() + y.amin(0).mean()),
    ("cosine_similarity", lambda x, y: F.cosine_similarity(x, y, dim=-1)),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("fn", [pytest.param(fn, id=n) for n, fn in CHAINS])
def test_chain(backend, fn, dtype):
    """Several ops composed: fusion must not change the values."""
    check(fn, make(4, 8, dtype=dtype), make(4, 8, dtype=dtype, seed=1, low=0.1))


def test_int_and_bool_outputs(backend):
    """Programs whose outputs are ints and bools: counts, masks, logical ops, int arithmetic."""
    x, y, a = make(4, 8), make(4, 8, seed=1), ints(4, 8)
    check(
        lambda x, y, a: (
            (x > 0).sum(-1),
            torch.logical_and(x > 0, y < 0),
            torch.logical_or(x > 0, y < 0),
            torch.logical_not(x > 0),
            torch.where(x > y, a, -a),
            (a * 3 + 1) // 2,
            a.to(torch.int32) + 1,
            torch.maximum(a, a * 2 - 5),
            (a > 0) == (x > 0),
        ),
        x,
        y,
        a,
    )


def test_large_int64_values_are_exact(backend):
    """int64 values beyond 2**53 keep every bit through add, mul and comparisons."""
    a = torch.tensor([2**60 + 1, -(2**60) - 1, 2**53 + 1, 7])
    check(lambda a: (a + 1, a * 1, a - a, a == 2**60 + 1, a.amax()), a)


def test_large_int64_floor_division_is_exact(backend):
    """a // 3 on int64 must not round through float64."""
    a = torch.tensor([2**60 + 1, -(2**60) - 1, 2**53 + 1, 7])
    check(lambda a: (a // 3, a % 3), a)


def test_bool_bitwise_operators(backend):
    """`mask1 & mask2`, `mask1 | mask2` and `~mask` are the usual way to combine masks."""
    x, y = make(4, 8), make(4, 8, seed=1)
    check(lambda x, y: ((x > 0) & (y < 0), (x > 0) | (y < 0), ~(x > 0)), x, y)


def test_half_precision_inputs(backend):
    """float16 in and out: computed in float32 inside the kernel, rounded once on the way out."""
    x = make(4, 8, dtype=torch.float16)
    check(lambda x: (x * 2, x.float().exp().half(), x.sum(-1), x.amax(0)), x, rtol=2e-3, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Zero-size tensors.


def test_zero_size_elementwise_and_row_reductions(backend):
    """Empty inputs give empty outputs of torch's shapes (reducing a non-empty axis)."""
    x = torch.randn(0, 4)
    check(lambda x: (x.exp() + 1, x.sum(-1), x.amax(-1), torch.softmax(x, -1), x * x), x)


@pytest.mark.parametrize(
    "fn", [pytest.param(lambda x: x.T * 2, id="transpose"), pytest.param(lambda x: x.reshape(4, 0), id="reshape")]
)
def test_zero_size_views(interpreter, fn):
    """Views of an empty tensor are empty tensors of the viewed shape."""
    check(fn, torch.randn(0, 4))


EMPTY_AXIS_REPRO = """
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch, tritonfunc
tritonfunc.set_backend("interpreter")
x = torch.randn({shape})
out = tritonfunc.jit(lambda x: {expr})(x)
expected = (lambda x: {expr})(x)
assert out.shape == expected.shape and torch.equal(out, expected), (out, expected)
"""


@pytest.mark.parametrize("shape, expr", [("0, 4", "x.sum(0)"), ("4, 0", "x.sum()")], ids=["sum0_of_0x4", "sum_of_4x0"])
def test_reduction_over_empty_axis_gives_identity(shape, expr):
    """x.sum(0) of a (0, 4) tensor is four zeros.  Run in a subprocess: the bug crashes the process."""
    code = textwrap.dedent(EMPTY_AXIS_REPRO.format(shape=shape, expr=expr))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{proc.stderr[-2000:]}"


def test_backend_fixture_is_active(backend):
    """Guards the fixture itself: each parametrization really forces its backend."""
    from tritonfunc import runtime

    assert runtime.backend_for(torch.device("cpu")) == backend
    assert tritonfunc.jit(lambda x: x + 1)(torch.zeros(2)).tolist() == [1.0, 1.0]
