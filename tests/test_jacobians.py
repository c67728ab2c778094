"""jacrev, jacfwd, hessian, functional_call and stack_module_state against torch.func.

jacrev is vmap of a vjp_fn over the output basis and jacfwd vmap of jvp over the input basis, so
these also exercise the composition of every transform; the results' pytree layout
(outputs outside, argnums inside) is part of what is compared.
"""

import copy

import pytest
import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same, make

import tritonfunc


def two_outputs(x, y):
    return x[:3] * y.exp(), (x**2).sum()


def dict_output(x):
    return {"a": x.exp(), "b": x[:2].sum()}


JACOBIAN_CASES = [
    # id, function, args builder, kwargs for jacrev/jacfwd
    ("elementwise_and_reduce", lambda x: x.sin() * x.sum(), lambda: (make(5),), {}),
    ("matrix_input", lambda x: F.softmax(x, -1).reshape(-1)[:4], lambda: (make(2, 3),), {}),
    ("argnums_tuple", two_outputs, lambda: (make(5), make(3, seed=1)), {"argnums": (0, 1)}),
    ("argnums_second", two_outputs, lambda: (make(5), make(3, seed=1)), {"argnums": 1}),
    ("dict_output", dict_output, lambda: (make(4),), {}),
    ("dict_input", lambda d: (d["u"] * d["v"]).tanh(), lambda: ({"u": make(3), "v": make(3, seed=2)},), {}),
]


@pytest.mark.parametrize("name, fn, build, kwargs", JACOBIAN_CASES, ids=[c[0] for c in JACOBIAN_CASES])
@pytest.mark.parametrize("mode", ["jacrev", "jacfwd"])
def test_jacobian_matches_torch_func(backend, mode, name, fn, build, kwargs):
    args = build()
    got = getattr(tritonfunc, mode)(fn, **kwargs)(*args)
    want = getattr(torch.func, mode)(fn, **kwargs)(*args)
    assert_same(got, want, f"{mode} {name}")


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
def test_jacrev_chunk_size_gives_the_same_jacobian(backend, chunk_size):
    x = make(5)
    fn = lambda x: x.sin() * x.exp().sum()  # noqa: E731
    assert_same(tritonfunc.jacrev(fn, chunk_size=chunk_size)(x), torch.func.jacrev(fn)(x))


@pytest.mark.parametrize("mode", ["jacrev", "jacfwd"])
def test_jacobian_has_aux_returns_aux_undifferentiated(backend, mode):
    x = make(4)
    fn = lambda x: (x.sin() * 2, x.cos())  # noqa: E731
    assert_same(getattr(tritonfunc, mode)(fn, has_aux=True)(x), getattr(torch.func, mode)(fn, has_aux=True)(x))


@pytest.mark.parametrize("chunk_size", [0, -1])
def test_jacrev_rejects_non_positive_chunk_size(chunk_size):
    with pytest.raises(ValueError, match="jacrev: `chunk_size` should be greater than 0."):
        tritonfunc.jacrev(torch.sin, chunk_size=chunk_size)


HESSIAN_CASES = [
    ("sin_exp", lambda x: (x.sin() * x.exp()).sum(), lambda: (make(4),), 0),
    ("logsumexp", lambda x: torch.logsumexp(x, 0), lambda: (make(5),), 0),
    ("prod_with_zero", lambda x: x.prod(), lambda: (torch.tensor([0.0, 2.0, 3.0], dtype=torch.float64),), 0),
    ("two_args", lambda x, y: (x * y.exp()).sum(), lambda: (make(3), make(3, seed=1)), (0, 1)),
    ("vector_output", lambda x: x.sin() * x.sum(), lambda: (make(3),), 0),
]


@pytest.mark.parametrize("name, fn, build, argnums", HESSIAN_CASES, ids=[c[0] for c in HESSIAN_CASES])
def test_hessian_matches_torch_func(backend, name, fn, build, argnums):
    args = build()
    assert_same(tritonfunc.hessian(fn, argnums)(*args), torch.func.hessian(fn, argnums)(*args), name)


def test_hessian_of_a_scalar_function_is_one_launch(interpreter):
    """Forward-over-reverse fuses into a single kernel for an elementwise-then-sum function."""
    x = make(6)
    with tritonfunc.record_launches() as rec:
        tritonfunc.hessian(lambda x: (x.sin() * x.exp()).sum())(x)
    assert rec.count == 1


def test_functional_call_parameters_are_differentiable(backend):
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = make(3, 5)

    def loss(M):
        return lambda p, x: M.functional_call(model, p, (x,)).pow(2).sum()

    assert_same(tritonfunc.grad(loss(tritonfunc))(params, x), torch.func.grad(loss(torch.func))(params, x))


def test_ensemble_of_models_with_stack_module_state(backend):
    """The model-ensembling pattern: stacked parameters, a meta base model, vmap over the stack."""
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh()).double() for _ in range(4)]
    base = copy.deepcopy(models[0]).to("meta")
    x = make(2, 5)

    def ensemble(M):
        params, buffers = M.stack_module_state(models)
        run = lambda p, b, x: M.functional_call(base, (p, b), (x,))  # noqa: E731
        return M.vmap(run, in_dims=(0, 0, None))(params, buffers, x)

    assert_same(ensemble(tritonfunc), ensemble(torch.func))


@pytest.mark.parametrize("mode", ["jacrev", "jacfwd"])
def test_jacobian_is_one_launch_and_never_reads_a_basis(interpreter, mode):
    """The identity basis is computed in the kernel (iota == row), not read: bytes stay near the
    ideal (x read once, the Jacobian written once) instead of growing with n * n."""
    x = make(64)
    fn = lambda x: (x.tanh() * x).reshape(8, 8).sum(1)  # noqa: E731
    with tritonfunc.record_launches() as rec:
        jac = getattr(tritonfunc, mode)(fn)(x)
    assert_same(jac, getattr(torch.func, mode)(fn)(x))
    ideal = x.numel() * x.element_size() + jac.numel() * jac.element_size()
    assert rec.count == 1
    assert rec.bytes_read + rec.bytes_written <= 1.5 * ideal


FACTORIES = [
    ("arange", lambda x: x + torch.arange(3)),
    ("arange_float_step", lambda x: x * torch.arange(1, 7, 2.0)),
    ("zeros_ones_full", lambda x: x + torch.zeros(3) + torch.ones(4, 1) * torch.full((3,), 2.5)),
    ("eye", lambda x: x + torch.eye(4, 3)),
    ("empty_then_fill", lambda x: x + torch.empty(3).fill_(1.5)),
]


@pytest.mark.parametrize("fn", [f for _, f in FACTORIES], ids=[n for n, _ in FACTORIES])
def test_factories_inside_a_traced_function_are_computed_in_the_kernel(interpreter, fn):
    x = make(4, 3).float()
    with tritonfunc.record_launches() as rec:
        got = tritonfunc.jit(fn)(x)
    assert_same(got, fn(x))
    assert rec.bytes_read == x.numel() * x.element_size()  # nothing but x comes from memory
    assert_same(tritonfunc.vmap(fn)(x[None].expand(2, 4, 3)), torch.func.vmap(fn)(x[None].expand(2, 4, 3)))
