"""Every matmul form is one dot_general: values and every transform against torch.func.

Each form runs under jit (against eager torch), jvp, vjp and grad (check_transforms), and vmap over
each operand and over both, in float64 on both CPU backends; the interpreter runs the tl.dot
template kernel for every form with a matrix's shape (a form whose M or N is 1, a matrix-vector or a
dot product, and an outer product are expanded into the fused multiply and sum instead).  Then float32 (tl.dot
in fp32), float16 and bfloat16 with loose tolerances, and the compositions users run most: hessian,
jacrev of a network, vmap(jacfwd(jacrev)), per-sample gradients, nested vmaps.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same, check_transforms
from vmap_helpers import check_vmap, make

import tritonfunc

# id, function, operand shapes.  M, N, K >= 16 unless the form has no such axis.
FORMS = [
    ("mm", lambda a, b: a @ b, [(20, 24), (24, 18)]),
    ("mv", lambda a, v: a @ v, [(20, 24), (24,)]),
    ("vm", lambda v, b: v @ b, [(24,), (24, 18)]),
    ("dot", lambda u, v: u @ v, [(24,), (24,)]),
    ("bmm", torch.bmm, [(3, 20, 24), (3, 24, 18)]),
    ("batch_broadcast", lambda a, b: a @ b, [(2, 3, 17, 16), (3, 16, 18)]),
    ("batch_times_matrix", lambda a, b: a @ b, [(3, 20, 24), (24, 18)]),
    ("matrix_times_batch", lambda a, b: a @ b, [(20, 24), (3, 24, 18)]),
    ("size_one_batch", lambda a, b: a @ b, [(1, 20, 24), (3, 24, 18)]),
    ("vector_times_batch", lambda v, b: v @ b, [(24,), (3, 24, 18)]),
    ("batch_times_vector", lambda a, v: a @ v, [(3, 20, 24), (24,)]),
    ("linear", lambda x, w, b: F.linear(x, w, b), [(2, 20, 24), (18, 24), (18,)]),
    ("linear_no_bias", lambda x, w: F.linear(x, w), [(20, 24), (18, 24)]),
    ("addmm", lambda c, a, b: torch.addmm(c, a, b, beta=0.5, alpha=2.0), [(20, 18), (20, 24), (24, 18)]),
    ("addmv", lambda c, a, v: torch.addmv(c, a, v, alpha=-1.0), [(20,), (20, 24), (24,)]),
    ("baddbmm", lambda c, a, b: torch.baddbmm(c, a, b, beta=2.0), [(3, 20, 18), (3, 20, 24), (3, 24, 18)]),
    ("addbmm", lambda c, a, b: torch.addbmm(c, a, b), [(20, 18), (3, 20, 8), (3, 8, 18)]),
    ("addr", lambda c, u, v: torch.addr(c, u, v, alpha=3.0), [(20, 18), (20,), (18,)]),
    ("outer", torch.outer, [(20,), (18,)]),
    ("inner", torch.inner, [(20, 24), (18, 24)]),
    ("einsum_scores", lambda q, k: torch.einsum("bqd,bkd->bqk", q, k), [(2, 20, 16), (2, 18, 16)]),
    ("einsum_two_axes", lambda a, b: torch.einsum("ijk,jkl->il", a, b), [(17, 4, 5), (4, 5, 18)]),
    ("einsum_batch_last", lambda a, b: torch.einsum("ikb,kjb->bij", a, b), [(17, 20, 2), (20, 18, 2)]),
    ("tensordot", lambda a, b: torch.tensordot(a, b, dims=([1, 2], [1, 0])), [(20, 4, 5), (5, 4, 18)]),
    ("multi_dot", lambda a, b, c: torch.linalg.multi_dot([a, b, c]), [(20, 24), (24, 16), (16, 18)]),
    ("bilinear", lambda x, y, w, b: F.bilinear(x, y, w, b), [(20, 16), (20, 17), (18, 16, 17), (18,)]),
]


def operands(shapes, dtype=torch.float64, seed=0):
    return [make(*s, dtype=dtype, seed=seed + i) for i, s in enumerate(shapes)]


@pytest.mark.parametrize("name, fn, shapes", FORMS, ids=[f[0] for f in FORMS])
def test_form_matches_torch_under_jit_and_autodiff(backend, name, fn, shapes):
    args = operands(shapes)
    assert_same(tritonfunc.jit(fn)(*args), fn(*args), "jit")
    check_transforms(fn, *args)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # torch.func's own, for bilinear
@pytest.mark.parametrize("name, fn, shapes", FORMS, ids=[f[0] for f in FORMS])
def test_form_matches_torch_func_under_vmap(backend, name, fn, shapes):
    """vmap over the first operand, over the last, and over all of them (the batch reaches the
    contraction as a free axis of one operand, or as a batch axis of both)."""
    args = operands(shapes)
    batched = operands([(3, *s) for s in shapes], seed=7)
    last = len(args) - 1
    check_vmap(fn, batched[0], *args[1:], in_dims=(0,) + (None,) * last)
    check_vmap(fn, *args[:-1], batched[-1], in_dims=(None,) * last + (0,))
    check_vmap(fn, *batched)


# float32 runs tl.dot in fp32 (exact products, fp32 sums in another order than torch's); half
# precision multiplies fp16 / bf16 operands and sums in fp32.
FORM_TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


@pytest.mark.parametrize("dtype", list(FORM_TOLERANCES), ids=str)
@pytest.mark.parametrize("name, fn, shapes", FORMS, ids=[f[0] for f in FORMS])
def test_form_in_lower_precision(backend, name, fn, shapes, dtype):
    args = operands(shapes, dtype)
    rtol, atol = FORM_TOLERANCES[dtype]
    want = fn(*args) if dtype == torch.float32 else fn(*[a.float() for a in args]).to(dtype)
    scale = max(1.0, float(want.abs().max()))  # rounding error grows with the result's magnitude
    assert_same(tritonfunc.jit(fn)(*args), want, "jit", rtol=rtol, atol=atol * scale)


def mlp(params, x):
    w1, b1, w2, b2 = params
    return F.linear(torch.tanh(F.linear(x, w1, b1)), w2, b2)


def mlp_params(d_in, hidden, d_out, dtype=torch.float64, seed=0):
    w1, b1, w2, b2 = operands([(hidden, d_in), (hidden,), (d_out, hidden), (d_out,)], dtype, seed)
    return (w1 / d_in**0.5, b1, w2 / hidden**0.5, b2)


def test_hessian_of_a_network(backend):
    params = mlp_params(16, 32, 1)
    f = lambda x: mlp(params, x).squeeze(-1)
    x = make(16, seed=3)
    assert_same(tritonfunc.hessian(f)(x), torch.func.hessian(f)(x), "hessian")


def test_jacrev_of_a_network_in_its_parameters(backend):
    params, x = mlp_params(16, 32, 17), make(20, 16, seed=3)
    got = tritonfunc.jacrev(mlp)(params, x)
    assert_same(got, torch.func.jacrev(mlp)(params, x), "jacrev")


def test_batched_hessians_vmap_jacfwd_jacrev(backend):
    params, x = mlp_params(2, 32, 3), make(4, 2, seed=3)

    def program(ft):
        return ft.vmap(ft.jacfwd(ft.jacrev(mlp, argnums=1), argnums=1), in_dims=(None, 0))

    assert_same(program(tritonfunc)(params, x), program(torch.func)(params, x), "vmap(jacfwd(jacrev))")


def loss(params, x, t):
    return F.cross_entropy(mlp(params, x)[None], t[None])


def test_per_sample_gradients_of_an_mlp(backend):
    params, x = mlp_params(24, 32, 16), make(40, 24, seed=3)
    t = torch.arange(40) % 16

    def program(ft):
        return ft.vmap(ft.grad(loss), in_dims=(None, 0, 0))

    assert_same(program(tritonfunc)(params, x, t), program(torch.func)(params, x, t), "vmap(grad)")


def test_nested_vmaps_make_two_batch_axes(backend):
    a, b = make(2, 3, 20, 24), make(2, 3, 24, 18, seed=1)
    got = tritonfunc.vmap(tritonfunc.vmap(torch.mm))(a, b)
    assert_same(got, torch.func.vmap(torch.func.vmap(torch.mm))(a, b), "vmap(vmap(mm))")


def test_second_order_through_a_bilinear_form(backend):
    """jvp of grad and vjp of grad: the dot's JVP and transpose rules differentiate again."""
    w = make(24, 24, seed=2)
    f = lambda x: (x @ w @ torch.tanh(x @ w.T).T).sum()
    x = make(20, 24)
    v = make(20, 24, seed=5)
    got = tritonfunc.jvp(tritonfunc.grad(f), (x,), (v,))
    assert_same(got, torch.func.jvp(torch.func.grad(f), (x,), (v,)), "jvp(grad)")
    _, got_fn = tritonfunc.vjp(tritonfunc.grad(f), x)
    _, want_fn = torch.func.vjp(torch.func.grad(f), x)
    assert_same(got_fn(v), want_fn(v), "vjp(grad)")


# ---------------------------------------------------------------------------------------------
# Other dtypes: fp32 runs tl.dot in fp32 (exact in the interpreter, IEEE on the GPU by default);
# fp16 and bf16 products accumulate in fp32, as torch's do.

LOW_PRECISION = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


@pytest.mark.parametrize("dtype", list(LOW_PRECISION), ids=str)
def test_linear_layer_and_its_gradients_in_lower_precision(backend, dtype):
    rtol, atol = LOW_PRECISION[dtype]
    x, w, b = operands([(40, 24), (18, 24), (18,)], dtype)
    f = lambda x, w, b: torch.tanh(F.linear(x, w, b))
    assert_same(tritonfunc.jit(f)(x, w, b), f(x, w, b), "jit", rtol=rtol, atol=atol)
    ct = make(40, 18, seed=9, dtype=dtype)
    got = tritonfunc.vjp(f, x, w, b)[1](ct)
    want = torch.func.vjp(f, x, w, b)[1](ct)
    assert_same(got, want, "vjp", rtol=4 * rtol, atol=4 * atol)
    got = tritonfunc.vmap(f, in_dims=(0, None, None))(x.reshape(2, 20, 24), w, b)
    assert_same(got, torch.func.vmap(f, in_dims=(0, None, None))(x.reshape(2, 20, 24), w, b), rtol=rtol, atol=atol)


def test_integer_matmul_is_exact(backend):
    a, b = torch.randint(-9, 9, (20, 24)), torch.randint(-9, 9, (24, 18))
    assert_same(tritonfunc.jit(torch.mm)(a, b), a @ b)


@pytest.mark.parametrize("shapes", [[(20, 0), (0, 18)], [(0, 24), (24, 18)], [(3, 0, 24), (3, 24, 18)]], ids=str)
def test_empty_contractions(backend, shapes):
    a, b = operands(shapes)
    assert_same(tritonfunc.jit(torch.matmul)(a, b), a @ b)


def test_strided_and_transposed_operands(backend):
    a = make(24, 40)[:, ::2]  # a column-strided view, read where it lies
    b = make(18, 24, seed=1).T
    f = lambda a, b: a.T @ b
    assert_same(tritonfunc.jit(f)(a, b), f(a, b))


def test_nan_and_inf_stay_in_their_rows_and_columns(backend):
    a, b = make(20, 24), make(24, 18, seed=1)
    a[3, 5], b[7, 11] = float("nan"), float("inf")
    assert_same(tritonfunc.jit(torch.mm)(a, b), a @ b)


@pytest.mark.parametrize(
    "name, fn",
    [
        ("addmm", lambda c, a, b, v: torch.addmm(c, a, b, alpha=0)),
        ("addmv", lambda c, a, b, v: torch.addmv(c[0], a, v, alpha=0, beta=2)),
        ("addbmm", lambda c, a, b, v: torch.addbmm(c, a[None], b[None], alpha=0)),
        ("baddbmm", lambda c, a, b, v: torch.baddbmm(c[None], a[None], b[None], alpha=0)),  # torch: NaN
        ("addr", lambda c, a, b, v: torch.addr(c, v[:2], v[:2], alpha=0)),  # torch: NaN
    ],
)
def test_zero_alpha_skips_the_product_where_torch_does(backend, name, fn):
    """addmm, addmv and addbmm with alpha=0 ignore the product, inf in it included (BLAS); baddbmm
    and addr compute 0 * inf = NaN.  tritonfunc follows each."""
    c, a, b, v = torch.zeros(2, 2, dtype=torch.float64), make(2, 3), make(3, 2, seed=1), make(3, seed=2)
    b[0, 0] = v[0] = float("inf")
    assert_same(tritonfunc.jit(fn)(c, a, b, v), fn(c, a, b, v))


@pytest.mark.parametrize(
    "name, fn",
    [
        ("mm rounds its product", lambda a, b: (a @ b) * 0.001),  # 96000 -> inf in fp16, as torch's mm
        ("addmm scales before rounding", lambda a, b: torch.addmm(torch.zeros_like(a), a, b, alpha=0.001)),
        ("linear adds its bias before rounding", lambda a, b: F.linear(a, b.T, torch.full_like(a[0], -60000.0))),
    ],
)
def test_a_half_product_rounds_where_torch_rounds_it(backend, name, fn):
    """A matmul returns its product in the operands' dtype; torch's add* ops (linear's bias) scale and
    add in float32 and round once.  Products of 96000 overflow fp16 only in the first."""
    a, b = torch.full((16, 16), 30.0, dtype=torch.float16), torch.full((16, 16), 200.0, dtype=torch.float16)
    assert_same(tritonfunc.jit(fn)(a, b), fn(a, b))


@pytest.mark.parametrize(
    "fn, operands",
    [
        (lambda a, b: a @ b, [torch.ones(4, 5), torch.ones(5, 3, dtype=torch.float64)]),
        (lambda a, b: F.linear(a, b), [torch.ones(4, 5), torch.ones(3, 5, dtype=torch.float64)]),
        (lambda a, b: torch.mv(a, b), [torch.ones(4, 5), torch.ones(5, dtype=torch.float64)]),
        (lambda a, b: torch.addmm(torch.zeros(4, 3), a, b), [torch.ones(4, 5).double(), torch.ones(5, 3).double()]),
        (lambda a, b: a @ b, [torch.ones(4, 5, dtype=torch.bool), torch.ones(5, 3, dtype=torch.bool)]),
    ],
    ids=["mm", "linear", "mv", "addmm", "bool"],
)
def test_operands_torch_refuses_are_refused_in_its_words(backend, fn, operands):
    """torch's matmul kernels take one dtype and no bool (its meta functions, which the trace runs,
    do not check): tritonfunc raises torch's own error instead of casting."""
    with pytest.raises(Exception) as want:
        fn(*operands)
    with pytest.raises(type(want.value), match=re.escape(str(want.value))):
        tritonfunc.jit(fn)(*operands)
    batched = (operands[0][None], operands[1])
    try:  # torch.func's vmap promotes addmm's input (`self`), refuses the rest
        want_batched = torch.func.vmap(fn, in_dims=(0, None))(*batched)
    except Exception as e:  # noqa: BLE001
        with pytest.raises(type(e)):
            tritonfunc.vmap(fn, in_dims=(0, None))(*batched)
    else:
        assert_same(tritonfunc.vmap(fn, in_dims=(0, None))(*batched), want_batched)


def test_an_empty_batch_of_products(backend):
    a, b = make(0, 4, 5), make(5, 2, seed=1)
    f = lambda a, b: ((a @ b) ** 2).sum()
    assert_same(tritonfunc.jit(f)(a, b), f(a, b))
    assert_same(tritonfunc.grad(f, argnums=1)(a, b), torch.func.grad(f, argnums=1)(a, b))


@pytest.mark.parametrize("shapes", [[(4, 5), (6,)], [(), (6,)], [(6,), (5, 4)], [(3, 4, 5), (6,)]], ids=str)
def test_shapes_that_do_not_multiply_raise_torchs_error(backend, shapes):
    """A 1-D operand is traced as a 2-D one (matmul squeezes its result in place): its shape errors
    are still torch's own words for the user's call."""
    a, b = (torch.ones(s) for s in shapes)
    with pytest.raises(RuntimeError) as want:
        torch.matmul(a, b)
    with pytest.raises(RuntimeError, match=re.escape(str(want.value))):
        tritonfunc.jit(torch.matmul)(a, b)


def test_vmap_promotes_the_input_of_addmm_as_torch_func_does(backend):
    """Eager addmm refuses an input (`self`) of another dtype than its matrices; torch.func's vmap
    rules promote it."""
    c, a, b = make(3, 4, 6).float(), make(3, 4, 5, seed=1), make(5, 6, seed=2)
    for in_dims in [(0, 0, None), (None, 0, None)]:
        args = (c if in_dims[0] == 0 else c[0], a, b)
        got = tritonfunc.vmap(torch.addmm, in_dims=in_dims)(*args)
        assert_same(got, torch.func.vmap(torch.addmm, in_dims=in_dims)(*args))
    with pytest.raises(RuntimeError, match="self and mat2 must have the same dtype"):
        tritonfunc.jit(torch.addmm)(c[0], a[0], b)


def test_linear_of_two_vectors_and_a_scalar_bias(backend):
    v, bias = make(5), make(seed=1)
    assert_same(tritonfunc.jit(F.linear)(v, v, bias), F.linear(v, v, bias))
    w, b = make(3, 5, seed=3), make(3, seed=4)
    for f in [lambda x, w, b: F.linear(x, w, bias=b), lambda x, w, b: F.linear(input=x, weight=w, bias=b)]:
        assert_same(tritonfunc.jit(f)(v, w, b), f(v, w, b))  # a 1-D input, the bias by keyword
        assert_same(tritonfunc.jit(f)(v, v, bias), f(v, v, bias))
    assert_same(tritonfunc.grad(F.linear, argnums=1)(v, v, bias), torch.func.grad(F.linear, argnums=1)(v, v, bias))
    x = make(4, 5, seed=2)
    assert_same(tritonfunc.vmap(F.linear, in_dims=(0, None, None))(x, v, bias), x @ v + bias)
