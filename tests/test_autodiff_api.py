"""The autodiff API against torch.func: compositions, argnums, pytrees, has_aux, independent outputs,
kwargs, no_grad inside and around the transforms, and every error's type and text.

Numbers are compared with torch.func on float64 inputs; errors are raised by both libraries and
compared by type and message.  Most tests run on both CPU backends (`backend`).
"""

from __future__ import annotations

import re
from collections import namedtuple

import pytest
import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same, check_transforms, make, random_like

import tritonfunc

# ---------------------------------------------------------------------------------------------
# Compositions.


def _scalar_f(x):
    return (x.sin() * x.exp() + x.tanh() * x * x).sum()


def _coupled_f(x):
    """A scalar function with a dense Hessian (every coordinate talks to every other)."""
    return x.logsumexp(0) + (x.sum() ** 2) * 0.5 + (x.cos() * x).sum()


def test_third_derivative_by_nested_grad(backend):
    """grad(grad(grad(f))) on a scalar function, against torch.func."""
    x = torch.tensor(0.7, dtype=torch.float64)
    got = tritonfunc.grad(tritonfunc.grad(tritonfunc.grad(_scalar_f)))(x)
    want = torch.func.grad(torch.func.grad(torch.func.grad(_scalar_f)))(x)
    assert_same(got, want)


@pytest.mark.parametrize("f", [_scalar_f, _coupled_f], ids=["diagonal", "dense"])
def test_hessian_vector_product_forward_over_reverse(backend, f):
    """jvp(grad(f), (x,), (v,)) returns (grad f(x), H v) like torch.func."""
    x, v = make(5), make(5, seed=1)
    got = tritonfunc.jvp(tritonfunc.grad(f), (x,), (v,))
    want = torch.func.jvp(torch.func.grad(f), (x,), (v,))
    assert_same(got, want)


def test_vjp_of_grad_is_reverse_over_reverse(backend):
    x, ct = make(5), make(5, seed=2)
    got_out, got_fn = tritonfunc.vjp(tritonfunc.grad(_coupled_f), x)
    want_out, want_fn = torch.func.vjp(torch.func.grad(_coupled_f), x)
    assert_same(got_out, want_out, "grad")
    assert_same(got_fn(ct), want_fn(ct), "vjp of grad")


def test_grad_of_a_function_that_calls_grad(backend):
    """A gradient penalty: grad of ||grad f(x)||^2 + f(x), with the inner grad inside the function."""

    def outer(grad_fn, x):
        g = grad_fn(_coupled_f)(x)
        return (g * g).sum() + _coupled_f(x)

    x = make(5)
    got = tritonfunc.grad(lambda x: outer(tritonfunc.grad, x))(x)
    want = torch.func.grad(lambda x: outer(torch.func.grad, x))(x)
    assert_same(got, want)


def test_grad_of_jvp_and_jvp_of_jvp(backend):
    """Reverse over forward, and forward over forward, nest like torch.func's."""
    x, v, w = make(5), make(5, seed=1), make(5, seed=2)

    def dir_deriv(jvp, x):
        return jvp(_coupled_f, (x,), (v,))[1]

    got = tritonfunc.grad(lambda x: dir_deriv(tritonfunc.jvp, x))(x)
    want = torch.func.grad(lambda x: dir_deriv(torch.func.jvp, x))(x)
    assert_same(got, want, "grad of jvp")
    got = tritonfunc.jvp(lambda x: dir_deriv(tritonfunc.jvp, x), (x,), (w,))
    want = torch.func.jvp(lambda x: dir_deriv(torch.func.jvp, x), (x,), (w,))
    assert_same(got, want, "jvp of jvp")


def test_linearize_jvp_fn_called_twice(backend):
    """linearize's jvp_fn is reusable: each call is the JVP at the same primals."""
    x = make(4, 6)

    def f(x):
        return x.sin() * x.exp().sum(1, keepdim=True)

    out, jvp_fn = tritonfunc.linearize(f, x)
    assert_same(out, f(x), "linearize output")
    for seed in (1, 2):
        t = make(4, 6, seed=seed)
        assert_same(jvp_fn(t), torch.func.jvp(f, (x,), (t,))[1], f"jvp_fn call {seed}")


def test_vjp_fn_called_twice_with_different_cotangents(backend):
    x, y = make(4, 6), make(6, seed=1)

    def f(x, y):
        return (x * y).tanh()

    _, got_fn = tritonfunc.vjp(f, x, y)
    _, want_fn = torch.func.vjp(f, x, y)
    for seed in (1, 2):
        ct = make(4, 6, seed=10 + seed)
        assert_same(got_fn(ct), want_fn(ct), f"vjp_fn call {seed}")


# Nestings written once against a module `m` (tritonfunc or torch.func) and compared.
_X, _Y, _S = make(5), make(5, seed=1), torch.tensor(0.7, dtype=torch.float64)


def _vjp_fn_inside_grad(m):
    _, fn = m.vjp(lambda a: a.sin() * a, _X)
    return m.grad(lambda ct: (fn(ct)[0] ** 2).sum())(_Y)


def _linearize_fn_inside_grad(m):
    _, fn = m.linearize(lambda a: a.sin() * a, _X)
    return m.grad(lambda t: (fn(t) ** 2).sum())(_Y)


def _closure_updated_between_calls(m):
    w = make(5, seed=3)
    g = m.grad(lambda a: (a * w).sum())
    first = g(_X)
    w.mul_(2)  # a captured tensor is read at each call, never baked into a cached kernel
    return first, g(_X)


NESTINGS = [
    # d/da [a * d/db (a + b)] = 1: the inner derivative must not see the outer variable's tangent.
    ("perturbation_confusion", lambda m: m.grad(lambda a: a * m.grad(lambda b: a + b)(_S))(_S)),
    ("inner_grad_at_outer_point", lambda m: m.grad(lambda a: (a * m.grad(lambda b: (a * b).sum())(a)).sum())(_X)),
    ("jvp_of_vjp", lambda m: m.jvp(lambda a: m.vjp(lambda b: b.sin() * a, a)[1](_Y)[0], (_X,), (_Y,))),
    ("grad_of_grad_and_value", lambda m: m.grad(lambda a: m.grad_and_value(lambda b: b.sin().sum())(a)[1])(_X)),
    (
        "grad_of_grad_argnums",
        lambda m: m.grad(lambda a, b: m.grad(lambda c, d: (c * d.sin()).sum(), argnums=1)(a, b).sum(), argnums=(0, 1))(
            _X, _Y
        ),
    ),
    ("vjp_fn_inside_grad", _vjp_fn_inside_grad),
    ("linearize_fn_inside_grad", _linearize_fn_inside_grad),
    ("closure_updated_between_calls", _closure_updated_between_calls),
    ("vjp_of_identity", lambda m: m.vjp(lambda a: a, _X)[1](_Y)),
    ("vjp_input_returned_twice", lambda m: m.vjp(lambda a: (a, a.exp()), _X)[1]((_Y, _X))),
    ("jvp_of_identity", lambda m: m.jvp(lambda a: a, (_X,), (_Y,))),
    ("grad_of_0d_identity", lambda m: m.grad(lambda a: a)(_S)),
    ("float32_grad", lambda m: m.grad(lambda a: (a.sin() * a.exp()).sum())(_X.float())),
    ("float32_cotangent_for_float64_output", lambda m: m.vjp(torch.sin, _X)[1](_Y.float())),
    ("inplace_on_intermediate", lambda m: m.grad(lambda a: a.sin().mul_(2).add_(a).sum())(_X)),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=n) for n, c in NESTINGS])
def test_nesting_matches_torch_func(backend, case):
    assert_same(case(tritonfunc), case(torch.func))


# ---------------------------------------------------------------------------------------------
# argnums.


def _mul3(x, y, z):
    return (x * y.exp() * z.sin()).sum()


@pytest.mark.parametrize("argnums", [0, 1, -1, -3, (0,), (1, 0), (2, 0, 1), (-1, 0)], ids=str)
def test_grad_argnums_select_and_order_like_torch_func(backend, argnums):
    """An int gives the bare gradient, a tuple (even of length 1) a tuple in argnums' order."""
    args = make(5), make(5, seed=1), make(5, seed=2)
    got = tritonfunc.grad(_mul3, argnums=argnums)(*args)
    want = torch.func.grad(_mul3, argnums=argnums)(*args)
    assert_same(got, want)
    assert isinstance(got, torch.Tensor) == isinstance(argnums, int)


def test_argnums_1_0_returns_gy_then_gx(backend):
    x, y = make(5), make(5, seed=1)
    gy, gx = tritonfunc.grad(lambda x, y: (x * y).sum(), argnums=(1, 0))(x, y)
    assert torch.equal(gy, x) and torch.equal(gx, y)


def test_grad_and_value_with_argnums(backend):
    args = make(5), make(5, seed=1), make(5, seed=2)
    got = tritonfunc.grad_and_value(_mul3, argnums=(2, 0))(*args)
    want = torch.func.grad_and_value(_mul3, argnums=(2, 0))(*args)
    assert_same(got, want)


# ---------------------------------------------------------------------------------------------
# Pytrees in and out.

Point = namedtuple("Point", ["a", "b"])


def _tree_loss(p):
    return (p["w"] * p["pair"][0].exp()).sum() + p["pair"][1][0].sin().sum() * p["pt"].a.sum() + p["pt"].b.sum()


def _tree():
    return {
        "w": make(4, 6),
        "pair": (make(4, 6, seed=1), [make(5, seed=2)]),
        "pt": Point(make(3, seed=3), make(2, 2, seed=4)),
    }


def test_grad_of_pytree_argument_keeps_its_structure(backend):
    """dict, tuple, list and namedtuple leaves: the gradient has the same structure."""
    p = _tree()
    got = tritonfunc.grad(_tree_loss)(p)
    want = torch.func.grad(_tree_loss)(p)
    assert_same(got, want)
    assert isinstance(got["pt"], Point) and isinstance(got["pair"][1], list)


def test_vjp_and_jvp_of_pytree_inputs_and_outputs(backend):
    """vjp and jvp with dict/tuple/namedtuple primals and a dict-of-tuple output."""

    def f(p, x):
        return {"s": p["pt"].a.sin() * x[:3], "t": (p["w"].exp(), (p["pair"][0] * x.sum()).sum())}

    p, x = _tree(), make(5, seed=9)
    check_transforms(f, p, x)


def test_vjp_and_jvp_with_tuple_output(backend):
    check_transforms(lambda x, y: (x.sin() * y, (x * y).sum(), y.exp()), make(4, 6), make(6, seed=1))


def test_grad_and_value_of_pytree(backend):
    p = _tree()
    assert_same(tritonfunc.grad_and_value(_tree_loss)(p), torch.func.grad_and_value(_tree_loss)(p))


# ---------------------------------------------------------------------------------------------
# has_aux: aux comes back as computed, and is not differentiated.


def _with_aux(x, y):
    loss = (x.sin() * y).sum()
    return loss, {"pred": x.exp(), "stats": (loss * 2, y.cos())}


def test_grad_has_aux(backend):
    x, y = make(4, 6), make(6, seed=1)
    got = tritonfunc.grad(_with_aux, argnums=(0, 1), has_aux=True)(x, y)
    want = torch.func.grad(_with_aux, argnums=(0, 1), has_aux=True)(x, y)
    assert_same(got, want)
    assert type(got[1]["pred"]) is torch.Tensor  # a plain tensor, not a tracer


def test_grad_and_value_has_aux(backend):
    x, y = make(4, 6), make(6, seed=1)
    got = tritonfunc.grad_and_value(_with_aux, has_aux=True)(x, y)
    want = torch.func.grad_and_value(_with_aux, has_aux=True)(x, y)
    assert_same(got, want)
    assert isinstance(got[1], tuple) and isinstance(got[1][1], dict)


def test_vjp_has_aux(backend):
    x, y = make(4, 6), make(6, seed=1)
    got_out, got_fn, got_aux = tritonfunc.vjp(_with_aux, x, y, has_aux=True)
    want_out, want_fn, want_aux = torch.func.vjp(_with_aux, x, y, has_aux=True)
    assert_same(got_out, want_out, "output")
    assert_same(got_aux, want_aux, "aux")
    ct = torch.tensor(1.7, dtype=torch.float64)
    assert_same(got_fn(ct), want_fn(ct), "cotangents")


def test_jvp_has_aux(backend):
    x, y = make(4, 6), make(6, seed=1)
    tangents = random_like((x, y), 3)
    got = tritonfunc.jvp(_with_aux, (x, y), tangents, has_aux=True)
    want = torch.func.jvp(_with_aux, (x, y), tangents, has_aux=True)
    assert_same(got, want)


# ---------------------------------------------------------------------------------------------
# Outputs that do not depend on an input; kwargs; non-tensor arguments.


def test_grad_of_unused_argument_is_zeros(backend):
    x, y = make(5), make(5, seed=1)
    got = tritonfunc.grad(lambda x, y: x.exp().sum(), argnums=(0, 1))(x, y)
    want = torch.func.grad(lambda x, y: x.exp().sum(), argnums=(0, 1))(x, y)
    assert_same(got, want)
    assert torch.equal(got[1], torch.zeros_like(y))


def test_grad_of_constant_output_is_zeros(backend):
    x = make(5)
    c = make(5, seed=4)
    got = tritonfunc.grad(lambda x: c.sum())(x)
    assert_same(got, torch.func.grad(lambda x: c.sum())(x))


def test_vjp_of_unused_input_is_zeros(backend):
    x, y = make(5), make(4, seed=1)

    def f(x, y):
        return x.sin(), x * 2

    got_out, got_fn = tritonfunc.vjp(f, x, y)
    want_out, want_fn = torch.func.vjp(f, x, y)
    cts = random_like(want_out, 5)
    assert_same(got_out, want_out)
    assert_same(got_fn(cts), want_fn(cts))


def test_jvp_of_independent_output_is_zeros_unless_strict(backend):
    x = make(5)
    c = make(5, seed=4)
    got = tritonfunc.jvp(lambda x: (c * 2, x.sin()), (x,), (torch.ones_like(x),))
    want = torch.func.jvp(lambda x: (c * 2, x.sin()), (x,), (torch.ones_like(x),))
    assert_same(got, want)


def test_jvp_strict_refuses_an_independent_output(backend):
    x = make(5)
    c = make(5, seed=4)
    assert_same_error(lambda m: m.jvp(lambda x: (x.sin(), c * 2), (x,), (torch.ones_like(x),), strict=True))
    assert_same_error(lambda m: m.jvp(lambda x: c * 2, (x,), (torch.ones_like(x),), strict=True), RuntimeError)


def test_jvp_strict_accepts_dependent_outputs(backend):
    x = make(5)
    got = tritonfunc.jvp(lambda x: x.exp(), (x,), (torch.ones_like(x),), strict=True)
    assert_same(got, (x.exp(), x.exp()))


def test_grad_passes_kwargs_through(backend):
    """Keyword arguments reach f; tensors among them are not differentiated."""

    def f(x, *, scale, shift):
        return ((x * scale + shift) ** 2).sum()

    x, shift = make(5), make(5, seed=1)
    got = tritonfunc.grad(f)(x, scale=3.0, shift=shift)
    want = torch.func.grad(f)(x, scale=3.0, shift=shift)
    assert_same(got, want)
    got = tritonfunc.grad_and_value(f)(x, scale=3.0, shift=shift)
    assert_same(got, torch.func.grad_and_value(f)(x, scale=3.0, shift=shift))


def test_non_tensor_arguments_are_passed_through(backend):
    """An int argument that is not differentiated is allowed, and changes the function."""

    def f(x, n, flag):
        y = x**n
        return y.sum() if flag else y.mean()

    x = make(5)
    for n, flag in [(2, True), (3, False)]:
        assert_same(tritonfunc.grad(f)(x, n, flag), torch.func.grad(f)(x, n, flag))


# ---------------------------------------------------------------------------------------------
# no_grad.


def _stopped(x):
    with torch.no_grad():
        c = x**2
    return (x**2 - c).sum()


def test_no_grad_inside_f_stops_gradients(backend):
    """f = x**2 - no_grad(x**2): its gradient is 2x, and its second derivative 2."""
    x = make(5)
    assert_same(tritonfunc.grad(_stopped)(x), torch.func.grad(_stopped)(x))
    assert_same(tritonfunc.grad(_stopped)(x), 2 * x)
    s = torch.tensor(0.3, dtype=torch.float64)
    got = tritonfunc.grad(tritonfunc.grad(_stopped))(s)
    assert_same(got, torch.func.grad(torch.func.grad(_stopped))(s))
    assert_same(got, torch.tensor(2.0, dtype=torch.float64))


def _sin_times_no_grad_exp(x):
    with torch.no_grad():
        c = x.exp()
    return x.sin() * c


def test_no_grad_inside_f_stops_vjp(backend):
    x, ct = make(4, 6), make(4, 6, seed=1)
    got_out, got_fn = tritonfunc.vjp(_sin_times_no_grad_exp, x)
    want_out, want_fn = torch.func.vjp(_sin_times_no_grad_exp, x)
    assert_same(got_out, want_out)
    assert_same(got_fn(ct), want_fn(ct))
    assert_same(got_fn(ct)[0], ct * x.cos() * x.exp())


def test_no_grad_inside_f_does_not_stop_jvp(backend):
    """torch.func.jvp runs on forward-AD dual tensors, which torch.no_grad() does not affect."""
    x, t = make(4, 6), make(4, 6, seed=1)
    got = tritonfunc.jvp(_sin_times_no_grad_exp, (x,), (t,))
    want = torch.func.jvp(_sin_times_no_grad_exp, (x,), (t,))
    assert_same(got, want)


def test_no_grad_around_the_call_is_ignored(backend):
    x = make(5)
    with torch.no_grad():
        got = tritonfunc.grad(lambda x: torch.sin(x).sum())(x)
        got_vjp = tritonfunc.vjp(torch.sin, x)[1](torch.ones_like(x))[0]
    assert_same(got, torch.cos(x))
    assert_same(got_vjp, torch.cos(x))


def _no_grad_around_inner_grad(m):
    def f(a):
        with torch.no_grad():
            g = m.grad(lambda b: b.sin().sum())(a)  # computed (cos a), but constant for the outer grad
        return (a * g).sum()

    return m.grad(f)(_X)


def _enable_grad_inside_no_grad(m):
    def f(a):
        with torch.no_grad():
            c = a * 2
            with torch.enable_grad():
                d = a.exp()
        return (c * d).sum()

    return m.grad(f)(_X)


def _no_grad_in_inner_function(m):
    def inner(b):
        with torch.no_grad():
            c = b.exp()
        return (b * c).sum()

    return m.grad(lambda a: m.grad(inner)(a).pow(2).sum())(_X)


def _no_grad_decorator(m):
    @torch.no_grad()
    def helper(a):
        return a.exp()

    return m.grad(lambda a: (a * helper(a)).sum())(_X)


def _set_grad_enabled_false(m):
    def f(a):
        torch.set_grad_enabled(False)
        try:
            c = a.exp()
        finally:
            torch.set_grad_enabled(True)
        return (a * c).sum()

    return m.grad(f)(_X)


def _no_grad_around_vjp_and_jvp(m):
    with torch.no_grad():
        out, fn = m.vjp(lambda a: a.sin() * a, _X)
        return out, fn(_Y), m.jvp(lambda a: a.sin() * a, (_X,), (_Y,))


GRAD_MODES = [
    ("no_grad_around_inner_grad", _no_grad_around_inner_grad),
    ("enable_grad_inside_no_grad", _enable_grad_inside_no_grad),
    ("no_grad_in_inner_function", _no_grad_in_inner_function),
    ("no_grad_decorator", _no_grad_decorator),
    ("set_grad_enabled_false", _set_grad_enabled_false),
    ("no_grad_around_vjp_and_jvp", _no_grad_around_vjp_and_jvp),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=n) for n, c in GRAD_MODES])
def test_grad_mode_matches_torch_func(backend, case):
    assert_same(case(tritonfunc), case(torch.func))


# ---------------------------------------------------------------------------------------------
# Errors: the same type and text as torch.func's.


def assert_same_error(call, expected_type=None):
    """Runs call(torch.func's module) and call(tritonfunc); both must raise the same error."""

    def raised(module):
        try:
            call(module)
        except Exception as e:  # noqa: BLE001
            return e
        return None

    want = raised(torch.func)
    assert want is not None, "torch.func did not raise"
    if expected_type is not None:
        assert type(want) is expected_type, f"torch.func raised {type(want).__name__}: {want}"
    with pytest.raises(type(want), match=re.escape(str(want))) as info:
        call(tritonfunc)
    assert type(info.value) is type(want)


def _mul(x, y):
    return (x * y).sum()


XY = (make(5), make(5, seed=1))

GRAD_ERRORS = [
    ("argnums_list", lambda m: m.grad(_mul, argnums=[0, 1])(*XY)),
    ("argnum_str", lambda m: m.grad(_mul, argnums=(0, "1"))(*XY)),
    ("argnums_str", lambda m: m.grad(_mul, argnums="0")(*XY)),
    ("argnum_out_of_range", lambda m: m.grad(_mul, argnums=2)(*XY)),
    ("argnum_negative_out_of_range", lambda m: m.grad(_mul, argnums=-3)(*XY)),
    ("argnums_empty", lambda m: m.grad(_mul, argnums=())(*XY)),
    ("argnums_duplicate", lambda m: m.grad(_mul, argnums=(0, 0))(*XY)),
    ("argnums_duplicate_after_wrapping", lambda m: m.grad(_mul, argnums=(0, -2))(*XY)),
    ("grad_non_scalar", lambda m: m.grad(lambda x: x * 2)(XY[0])),
    ("grad_shape_1_output", lambda m: m.grad(lambda x: x.sum().reshape(1))(XY[0])),
    ("grad_float_output", lambda m: m.grad(lambda x: 1.0)(XY[0])),
    ("grad_tuple_output", lambda m: m.grad(lambda x: (x.sum(), x.sum()))(XY[0])),
    ("grad_and_value_non_scalar", lambda m: m.grad_and_value(lambda x: x * 2)(XY[0])),
    ("grad_has_aux_not_tuple", lambda m: m.grad(lambda x: x.sum(), has_aux=True)(XY[0])),
    ("grad_has_aux_3_tuple", lambda m: m.grad(lambda x: (x.sum(), x, x), has_aux=True)(XY[0])),
    ("grad_has_aux_list", lambda m: m.grad(lambda x: [x.sum(), x], has_aux=True)(XY[0])),
    ("grad_aux_int", lambda m: m.grad(lambda x: (x.sum(), 1), has_aux=True)(XY[0])),
    ("grad_aux_str_in_dict", lambda m: m.grad(lambda x: (x.sum(), {"a": x, "b": "abc"}), has_aux=True)(XY[0])),
    ("grad_non_tensor_leaf", lambda m: m.grad(lambda p: p[0].sum())((XY[0], 1.0))),
    ("grad_int_argument_differentiated", lambda m: m.grad(lambda x, n: x.sum() * n, argnums=1)(XY[0], 3)),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=n) for n, c in GRAD_ERRORS])
def test_grad_error_matches_torch_func(backend, call):
    assert_same_error(call)


VJP_ERRORS = [
    ("vjp_int_output", lambda m: m.vjp(lambda x: (x > 0).long(), XY[0])),
    ("vjp_int_output_in_tuple", lambda m: m.vjp(lambda x: (x, x.long()), XY[0])),
    ("vjp_returns_none", lambda m: m.vjp(lambda x: None, XY[0])),
    ("vjp_returns_empty_tuple", lambda m: m.vjp(lambda x: (), XY[0])),
    ("vjp_returns_float", lambda m: m.vjp(lambda x: 1.0, XY[0])),
    ("vjp_has_aux_not_tuple", lambda m: m.vjp(lambda x: x * 2, XY[0], has_aux=True)),
    ("vjp_aux_float", lambda m: m.vjp(lambda x: (x * 2, 1.0), XY[0], has_aux=True)),
    ("vjp_non_tensor_primal", lambda m: m.vjp(lambda x, n: x * n, XY[0], 2)),
    ("vjp_fn_cotangent_tuple_for_tensor", lambda m: m.vjp(lambda x: x * 2, XY[0])[1]((XY[0],))),
    ("vjp_fn_cotangent_list_for_tuple", lambda m: m.vjp(lambda x: (x, x * 2), XY[0])[1]([XY[0], XY[1]])),
    ("vjp_fn_cotangent_wrong_shape", lambda m: m.vjp(torch.sin, XY[0])[1](XY[0][:4])),
    ("vjp_fn_cotangent_dict_keys", lambda m: m.vjp(lambda x: {"a": x}, XY[0])[1]({"b": XY[0]})),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=n) for n, c in VJP_ERRORS])
def test_vjp_error_matches_torch_func(backend, call):
    assert_same_error(call)


X, T = XY
JVP_ERRORS = [
    ("jvp_primals_list", lambda m: m.jvp(torch.sin, [X], [T])),
    ("jvp_primals_tensor", lambda m: m.jvp(torch.sin, X, T)),
    ("jvp_tangents_list", lambda m: m.jvp(torch.sin, (X,), [T])),
    ("jvp_structure_mismatch", lambda m: m.jvp(_mul, (X, X), (T,))),
    ("jvp_nested_structure_mismatch", lambda m: m.jvp(lambda p: p[0].sum(), ((X, X),), ((T, T, T),))),
    ("jvp_non_tensor_primal", lambda m: m.jvp(lambda x, n: x * n, (X, 2.0), (T, 1.0))),
    ("jvp_non_tensor_tangent", lambda m: m.jvp(lambda x: x * 2, (X,), (1.0,))),
    ("jvp_tangent_wrong_shape", lambda m: m.jvp(torch.sin, (X,), (T[:4],))),
    ("linearize_tangent_wrong_shape", lambda m: m.linearize(torch.sin, X)[1](T[:4])),
    ("linearize_tangent_wrong_dtype", lambda m: m.linearize(torch.sin, X)[1](T.float())),
    ("linearize_tangent_wrong_structure", lambda m: m.linearize(torch.sin, X)[1](T, T)),
    ("jvp_empty_primals", lambda m: m.jvp(lambda: X, (), ())),
    ("jvp_returns_none", lambda m: m.jvp(lambda x: None, (X,), (T,))),
    ("jvp_returns_int", lambda m: m.jvp(lambda x: 3, (X,), (T,))),
    ("jvp_has_aux_not_tuple", lambda m: m.jvp(lambda x: x * 2, (X,), (T,), has_aux=True)),
    ("jvp_aux_int", lambda m: m.jvp(lambda x: (x * 2, 1), (X,), (T,), has_aux=True)),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=n) for n, c in JVP_ERRORS])
def test_jvp_error_matches_torch_func(call):
    assert_same_error(call)


def test_cross_entropy_loss_of_valid_logits_has_no_aux_error(backend):
    """A has_aux function whose aux is an int target tensor is fine (aux may hold any tensor)."""
    z, t = make(4, 5), torch.tensor([1, 0, 4, 2])
    got = tritonfunc.grad(lambda z: (F.cross_entropy(z, t), t), has_aux=True)(z)
    want = torch.func.grad(lambda z: (F.cross_entropy(z, t), t), has_aux=True)(z)
    assert_same(got, want)


def _shifted_square(x):
    import torch.autograd.forward_ad as fwAD

    with fwAD._set_fwd_grad_enabled(False):
        shift = x**2
    return x**2 - shift


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda tf, x, t: tf.jvp(_shifted_square, (x,), (t,)), id="jvp"),
        pytest.param(
            lambda tf, x, t: tf.jvp(lambda x: tf.jvp(_shifted_square, (x,), (t,))[1], (x,), (t,)), id="jvp_jvp"
        ),
        pytest.param(lambda tf, x, t: tf.grad(lambda x: _shifted_square(x).sum())(x), id="grad_ignores_it"),
        pytest.param(lambda tf, x, t: tf.jacfwd(_shifted_square)(x), id="jacfwd"),
    ],
)
def test_forward_ad_disabled_inside_f_is_respected_by_forward_mode_only(backend, transform):
    """Values computed with forward AD disabled are constants to jvp, as in torch.func (reverse
    mode does not look at that flag)."""
    x, t = make(3), make(3, seed=1)
    assert_same(transform(tritonfunc, x, t), transform(torch.func, x, t))


def test_forward_ad_disabled_around_jvp_does_not_reach_inside(backend):
    import torch.autograd.forward_ad as fwAD

    x, t = make(3), make(3, seed=1)
    with fwAD._set_fwd_grad_enabled(False):
        got = tritonfunc.jvp(torch.sin, (x,), (t,))
        want = torch.func.jvp(torch.sin, (x,), (t,))
    assert_same(got, want)


# ---------------------------------------------------------------------------------------------
# torch's autograd API inside a transform: refused as torch.func refuses it.


def _requires_grad_inside(x):
    x.requires_grad_()
    return x.sin().sum()


def _retain_grad_inside(x):
    y = x.sin()
    y.retain_grad()
    return y.sum()


def _autograd_functional_vjp_inside(x):
    return torch.autograd.functional.vjp(lambda a: a.sin().sum(), x)[1]


_W = make(5, seed=4)

MISUSE = [
    ("requires_grad_", _requires_grad_inside),
    ("retain_grad", _retain_grad_inside),
    ("autograd_functional", _autograd_functional_vjp_inside),
    ("requires_grad_on_captured", lambda x: (x * _W.detach().requires_grad_()).sum()),
]
TRANSFORMS = [
    ("vmap", lambda m, f: m.vmap(f)(make(3, 5))),
    ("grad", lambda m, f: m.grad(f)(make(5))),
    ("vjp", lambda m, f: m.vjp(f, make(5))),
    ("jvp", lambda m, f: m.jvp(f, (make(5),), (make(5, seed=2),))),
    ("jacrev", lambda m, f: m.jacrev(f)(make(5))),
    ("vmap_grad", lambda m, f: m.vmap(m.grad(f))(make(3, 5))),
]


@pytest.mark.parametrize("transform", [pytest.param(t, id=n) for n, t in TRANSFORMS])
@pytest.mark.parametrize("f", [pytest.param(f, id=n) for n, f in MISUSE])
def test_autograd_api_inside_a_transform_is_refused_as_torch_func(f, transform):
    assert_same_error(lambda m: transform(m, f))


class _NoSetupContext(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


class _StraightThrough(torch.autograd.Function):
    """round forward, identity backward: a trace of the forward alone would give zero gradients."""

    @staticmethod
    def forward(x):
        return torch.round(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g

    @staticmethod
    def jvp(ctx, t):
        return t


@pytest.mark.parametrize("transform", [pytest.param(t, id=n) for n, t in TRANSFORMS])
def test_autograd_function_without_setup_context_is_torch_funcs_error(transform):
    assert_same_error(lambda m: transform(m, lambda x: _NoSetupContext.apply(x).sum()))


@pytest.mark.parametrize("transform", [pytest.param(t, id=n) for n, t in TRANSFORMS + [("jit", None)]])
def test_autograd_function_rules_are_never_silently_replaced(transform):
    """torch.func applies the Function's own backward and jvp; tritonfunc cannot, so it refuses the
    Function rather than differentiate its forward (the gradient here would be 0 instead of 1)."""
    f = lambda x: _StraightThrough.apply(x * 1.5).sum()  # noqa: E731
    run = (lambda m, f: m.jit(f)(make(5))) if transform is None else transform
    with pytest.raises(NotImplementedError, match="autograd.Function _StraightThrough is not supported"):
        run(tritonfunc, f)


def test_a_transform_inside_an_autograd_function_forward_is_fine(backend):
    class Sin(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return tritonfunc.vmap(torch.sin)(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            return g * ctx.saved_tensors[0].cos()

    x = make(3, 4).requires_grad_()
    (g,) = torch.autograd.grad(Sin.apply(x).sum(), x)
    assert_same(g, x.detach().cos())
