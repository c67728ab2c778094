"""Edge cases where a straightforward lowering gives a different answer from torch / torch.func:
boolean arithmetic, exact logarithms, floor division of floats, norms at zero, aliasing of results,
0-d Jacobians, several index tensors, and torch.func's error texts."""

import re

import pytest
import torch
import torch.func
from autodiff_helpers import assert_same, make
from helpers import check

import tritonfunc

X = torch.tensor([1.0, 2.0, -1.0, 5.5, -7.25], dtype=torch.float64)


def test_boolean_add_and_mul_are_logical(backend):
    b = torch.tensor([True, False, True])
    f = lambda x: (x + x, x * x, (x + x).sum(), (x + x).float())  # noqa: E731
    assert_same(tritonfunc.jit(f)(b), f(b))


def test_log2_log10_exp2_are_exact_where_torch_is(backend):
    x = torch.tensor([8.0, 1000.0, 2.0**29, 2.0**-3], dtype=torch.float64)
    f = lambda x: (torch.floor(torch.log2(x)), torch.floor(torch.log10(x)), torch.exp2(torch.log2(x)) == x)  # noqa: E731
    assert_same(tritonfunc.jit(f)(x), f(x))
    g = lambda x: (torch.log2(x) + torch.log10(x) + torch.exp2(x / 8)).sum()  # noqa: E731
    assert_same(tritonfunc.grad(g)(x), torch.func.grad(g)(x))


def test_float_floor_division_and_remainder_follow_torch(backend):
    f = lambda x: (torch.floor_divide(x, 0.1), torch.remainder(x, 0.1), torch.fmod(x, -0.3), x // -2.5, x % -2.5)  # noqa: E731
    got, want = tritonfunc.jit(f)(X), f(X)
    for g, w in zip(got, want):
        assert torch.equal(g, w), (g, w)
    loss = lambda x: (torch.remainder(x, 0.7) + torch.fmod(x, 0.3)).sum()  # noqa: E731
    assert_same(tritonfunc.grad(loss)(X), torch.func.grad(loss)(X))


@pytest.mark.parametrize("ord", [2, 1, 3, float("inf"), -float("inf"), 0])
def test_vector_norms_and_their_gradients(backend, ord):
    f = lambda a: torch.linalg.vector_norm(a, ord)  # noqa: E731
    assert_same(tritonfunc.jit(f)(X), f(X))
    assert_same(tritonfunc.grad(f)(X), torch.func.grad(f)(X))


def test_norm_derivative_at_zero_is_zero_not_nan(backend):
    z = torch.zeros(3, dtype=torch.float64)
    assert_same(tritonfunc.grad(lambda a: a.norm())(z), torch.func.grad(lambda a: a.norm())(z))
    assert_same(tritonfunc.grad(lambda a: torch.dist(a, a * 0))(z), torch.zeros(3, dtype=torch.float64))
    t = torch.ones_like(z)
    assert_same(tritonfunc.jvp(lambda a: a.norm(), (z,), (t,)), torch.func.jvp(lambda a: a.norm(), (z,), (t,)))


def test_in_place_update_through_a_detached_alias():
    """d = y.detach() shares y's storage: d.add_(1) changes y's value but not its derivative."""

    def f(x):
        y = x * 2
        d = y.detach()
        d.add_(1)
        return (y * y).sum()

    assert_same(tritonfunc.jit(f)(X), f(X))
    assert_same(tritonfunc.grad_and_value(f)(X), torch.func.grad_and_value(f)(X))
    t = torch.ones_like(X)
    assert_same(tritonfunc.jvp(f, (X,), (t,)), torch.func.jvp(f, (X,), (t,)))


def test_results_never_alias_inputs_or_each_other(backend):
    assert tritonfunc.jit(lambda x: x.clone())(X).data_ptr() != X.data_ptr()
    a, b = tritonfunc.jit(lambda x: (x + 1, x + 1))(X)
    assert a.data_ptr() != b.data_ptr()
    gy, gz = tritonfunc.grad(lambda x, y, z: x.sum(), argnums=(1, 2))(X, X.clone(), X.clone())
    assert gy.data_ptr() != gz.data_ptr()


@pytest.mark.parametrize("mode", ["jacrev", "jacfwd"])
def test_jacobian_of_a_scalar_function_of_a_scalar(backend, mode):
    s = torch.tensor(2.0, dtype=torch.float64)
    assert_same(getattr(tritonfunc, mode)(lambda t: t * t)(s), getattr(torch.func, mode)(lambda t: t * t)(s))
    assert_same(tritonfunc.hessian(lambda t: t**3)(s), torch.func.hessian(lambda t: t**3)(s))


def test_two_index_tensors_and_two_zero_d_indices_under_vmap(backend):
    m = torch.randn(4, 5, dtype=torch.float64)
    i, j = torch.tensor([0, 3, 1]), torch.tensor([4, 0, 2])
    assert_same(tritonfunc.jit(lambda m: m[i, j])(m), m[i, j])
    assert_same(tritonfunc.vmap(lambda a, b: m[a, b])(i, j), torch.func.vmap(lambda a, b: m[a, b])(i, j))


def test_grad_of_an_integer_argument_raises_like_torch_func():
    with pytest.raises(RuntimeError, match="only Tensors of floating point dtype can require gradients"):
        tritonfunc.grad(lambda x: x.float().sum())(torch.arange(3))


@pytest.mark.parametrize("fn", [lambda x: x.item(), lambda x: x if x > 0 else -x], ids=["item", "control_flow"])
def test_vmap_data_dependence_errors_match_torch_func(fn):
    x = torch.randn(3)
    with pytest.raises(RuntimeError) as want:
        torch.func.vmap(fn)(x)
    with pytest.raises(RuntimeError) as got:
        tritonfunc.vmap(fn)(x)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("mode", ["jacrev", "jacfwd"])
def test_jacobian_of_complex_input_raises_like_torch_func(mode):
    x = torch.randn(3).to(torch.complex128)
    with pytest.raises(RuntimeError, match=f"{mode}: Expected all inputs to be real"):
        getattr(tritonfunc, mode)(lambda x: x)(x)


# ---------------------------------------------------------------------------------------------
# Dtypes torch.func treats in its own way.

MIXED_TANGENTS = {
    "sin": torch.sin,
    "scale": lambda x: x * 2,
    "sum": lambda x: x.sum(),
    "softmax": lambda x: x.softmax(0),
    "where": lambda x: torch.where(x > 0, x, x * x),
    "to_half": lambda x: x.to(torch.float16),
    "two_outputs": lambda x: (x.exp() * x, x.sum()),
}


@pytest.mark.parametrize("f", list(MIXED_TANGENTS.values()), ids=list(MIXED_TANGENTS))
@pytest.mark.parametrize("tangent_dtype", [torch.float64, torch.float16])
def test_jvp_tangent_of_another_dtype_follows_torch_func(backend, f, tangent_dtype):
    """A float64 tangent of a float32 input gives float64 tangents, as torch's forward AD does (a
    float16 one promotes with float32 partials).  Values agree to float32 rounding: the partials are
    float32 values either way, multiplied in another order."""
    x = X.float()
    t = torch.linspace(-1, 1, 5, dtype=tangent_dtype)
    assert_same(tritonfunc.jvp(f, (x,), (t,)), torch.func.jvp(f, (x,), (t,)), rtol=1e-6, atol=1e-6)


COMPLEX = {
    "input": (lambda x: x * 2, torch.ones(2, dtype=torch.complex64)),
    "captured": (lambda x: (x == _C).double(), torch.ones(2)),
    "cast": (lambda x: x.to(torch.complex128), torch.ones(2)),
    "factory": (lambda x: x + torch.zeros(2, dtype=torch.complex64), torch.ones(2)),
    "draw": (lambda x: x + torch.randn(2, dtype=torch.complex64).real, torch.ones(2)),
    "view_as_complex": (lambda x: torch.view_as_complex(x) * 2, torch.ones(2, 2)),
}
_C = torch.ones(2, dtype=torch.complex64)


@pytest.mark.parametrize("f, x", list(COMPLEX.values()), ids=list(COMPLEX))
def test_complex_values_are_refused_with_their_dtype(backend, f, x):
    """Silently dropping the imaginary part would be a wrong value: refused on every backend."""
    with pytest.raises(NotImplementedError, match=r"tritonfunc: complex tensors are not supported .*complex"):
        tritonfunc.jit(f)(x)
    with pytest.raises(NotImplementedError, match="tritonfunc: complex"):
        tritonfunc.vmap(f)(x[None].expand(3, *x.shape))


@pytest.mark.parametrize(
    "f",
    [lambda x: torch.softmax(x[:, :0], -1), lambda x: x[:, :0].sum(1) + x.sum(1), lambda x: x[:0].logsumexp(0)],
    ids=["softmax", "sum_then_add", "logsumexp"],
)
def test_reductions_over_an_empty_axis(backend, f):
    """Over a zero-size axis: torch's results (the reduction's identity; empty softmax rows)."""
    x = make(3, 4)
    check(f, x)
    assert_same(tritonfunc.vmap(f)(torch.stack([x, x * 2])), torch.func.vmap(f)(torch.stack([x, x * 2])))


@pytest.mark.parametrize(
    "shape, pad", [((2, 0, 3, 3), (1, 1, 1, 1, 1, 1)), ((0, 3), (1, 1, 1, 1)), ((2, 2, 0), (1, 2))], ids=str
)
def test_padding_an_empty_axis_gives_the_fill(backend, shape, pad):
    """Padding makes elements out of none: only the fill, and no kernel reads the empty operand (the
    interpreter crashed reading it; functorch's OpInfo constant_pad_nd)."""
    f = lambda x, s: torch.nn.functional.pad(x, pad, value=1.5) * s  # noqa: E731
    x, s = torch.zeros(shape, dtype=torch.float64), make(seed=3)
    check(f, x, s)
    assert_same(tritonfunc.grad(lambda s: f(x, s).sum())(s), torch.func.grad(lambda s: f(x, s).sum())(s))
    batch = torch.stack([x, x])
    assert_same(tritonfunc.vmap(f, in_dims=(0, None))(batch, s), torch.func.vmap(f, in_dims=(0, None))(batch, s))


@pytest.mark.parametrize(
    "f, shapes",
    [
        (lambda x: torch.argsort(x * 2), [(2, 0)]),
        (lambda x: torch.cumprod(x.sin(), 0), [(0,)]),
        (lambda x, y: torch.fmax(x, y.exp()), [(0, 1, 3), (0, 10, 3)]),
        (lambda x: torch.frexp(x + 1)[0], [(1, 0, 3)]),
    ],
    ids=["argsort", "cumprod", "fmax", "frexp"],
)
def test_a_torch_call_on_an_empty_intermediate(backend, f, shapes):
    """No kernel computes an empty value, and a torch call reading one got a bare KeyError (the
    interpreter, functorch's OpInfo argsort/cumprod/fmax/frexp): it gets an empty tensor."""
    args = [make(*s) for s in shapes]
    check(f, *args)
    batched = [torch.stack([a, a]) for a in args]
    assert_same(tritonfunc.vmap(f)(*batched), torch.func.vmap(f)(*batched))


@pytest.mark.parametrize(
    "f",
    [
        lambda a, w: a.index_put((torch.tensor([0, 2]),), w[:2]),
        lambda a, w: a.index_add(0, torch.tensor([0, 2]), w[:2]),
        lambda a, w: (a.__setitem__(torch.tensor([0, 2]), w[:2]), a)[1],
    ],
    ids=["index_put", "index_add", "setitem"],
)
def test_arguments_a_meta_kernel_lets_by_raise_torchs_error(backend, f):
    """A value that does not broadcast to the indexed rows: torch's own error, not a primitive's
    shape assertion inside tritonfunc."""
    a, w = make(3, 4), make(4, seed=1)
    with pytest.raises(RuntimeError) as want:
        f(a.clone(), w)
    with pytest.raises(RuntimeError, match=re.escape(str(want.value))):
        tritonfunc.jit(f)(a.clone(), w)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.jvp(lambda a: a * 2.5, (torch.arange(3),), (torch.ones(3),)),
        lambda m: m.jvp(lambda a: a.exp(), (torch.ones(3),), (torch.arange(3),)),
        lambda m: m.jacfwd(lambda a: a.exp())(torch.arange(3)),
    ],
    ids=["integer_primal", "integer_tangent", "jacfwd_of_integers"],
)
def test_forward_mode_refuses_integer_primals_and_tangents_like_torch_func(backend, call):
    """They had zero tangents (or a cast one) where torch.func raises."""
    with pytest.raises(ValueError) as want:
        call(torch.func)
    with pytest.raises(ValueError, match=re.escape(str(want.value))):
        call(tritonfunc)
