"""In-place ops inside transforms, against torch.func: the caller's tensors change as they do under
torch.func (inputs, views of inputs, captured tensors under vmap, metadata changes such as x.t_()),
results that are the mutated input are that input, an in-place op under no_grad keeps the old
value's gradient path, and torch.func's errors come with its exact words (differentiated inputs,
captured tensors inside grad/vjp/jvp, batched values written into unbatched tensors under vmap).

Each case builds its own inputs, runs once with tritonfunc and once with torch.func, and returns
the result together with the tensors that may have been written; all of it must agree.
"""

from __future__ import annotations

import pytest
import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same, make
from vmap_helpers import assert_same_error

import tritonfunc


def _x():
    return torch.arange(6, dtype=torch.float64).reshape(2, 3) / 4 - 0.5


def _y():
    return torch.linspace(-1, 2, 6, dtype=torch.float64).reshape(2, 3)


def _written(fn):
    """A case that calls fn(m, *fresh inputs) and returns its result and the inputs afterwards."""

    def case(m):
        inputs = (_x(), _y())
        return fn(m, *inputs), inputs

    return case


_CAPTURED = _y()


def _doubled_under_no_grad(a):
    with torch.no_grad():
        a.mul_(2)  # allowed on a differentiated input: torch's optimizers update leaves this way
    return a * a


def _clamped_norms(x):
    y = x * 2
    with torch.no_grad():
        y.clamp_min_(0.75)  # changes the value, keeps y's gradient path
    return (y * x).sum()


def _write_through_views(m, x):
    def f(a):
        a[0].mul_(3)  # select
        a[:, ::2].add_(1)  # strided slice
        a.t()[1].sub_(0.5)  # transpose, then select
        a.unbind(1)[2].mul_(-1)  # unbind
        a.split(1, 0)[1].add_(a[0])  # split, reading another view of the same tensor
        return a.sum(0)

    return m.vmap(f)(x.unsqueeze(0).repeat(3, 1, 1))


CASES = [
    ("jit_input", _written(lambda m, x, y: tritonfunc.jit(lambda a: a.sin_())(x) if m is tritonfunc else x.sin_())),
    ("vmap_input", _written(lambda m, x, y: m.vmap(lambda a: a.sin_())(x))),
    ("vmap_input_in_dims_1", _written(lambda m, x, y: m.vmap(lambda a: a.mul_(2), in_dims=1)(x))),
    ("vmap_view_of_input", _written(lambda m, x, y: m.vmap(lambda a: (a[0].add_(1), a * 2)[1])(x))),
    ("vmap_view_in_dims_1", _written(lambda m, x, y: m.vmap(lambda a: (a[0].add_(1), a)[1], in_dims=1)(x))),
    ("vmap_chunked", _written(lambda m, x, y: m.vmap(lambda a: a.mul_(2), chunk_size=1)(x))),
    (
        "vmap_unbatched_input_unbatched_value",
        _written(lambda m, x, y: m.vmap(lambda a, b: (b.add_(1), a)[1], (0, None))(x, y[0])),
    ),
    (
        "vmap_batched_input_unbatched_value",
        _written(lambda m, x, y: m.vmap(lambda a, b: a.copy_(b), (0, None))(x, y[0])),
    ),
    ("vmap_views_of_views", _written(lambda m, x, y: _write_through_views(m, x))),
    ("vmap_unsqueeze_", _written(lambda m, x, y: (m.vmap(lambda a: a.unsqueeze_(0))(x).shape, x.shape))),
    ("vmap_t_in_dims_1", _written(lambda m, x, y: (m.vmap(lambda a: a.unsqueeze_(0), in_dims=1)(x).shape, x.shape))),
    ("vmap_transpose_", _written(lambda m, x, y: m.vmap(lambda a: a.clone().unsqueeze(0).transpose_(0, 1))(x))),
    ("grad_undifferentiated_input", _written(lambda m, x, y: m.grad(lambda a, b: b.mul_(a).sum())(x, y))),
    (
        "grad_view_of_undifferentiated",
        _written(lambda m, x, y: m.grad(lambda a, b: (b[0].mul_(a[0]), (a * b).sum())[1])(x, y)),
    ),
    ("grad_of_clone_written", _written(lambda m, x, y: m.grad(lambda a: a.clone().mul_(a).sum())(x))),
    (
        "grad_and_value_written",
        _written(lambda m, x, y: m.grad_and_value(lambda a, b: (b.add_(a), (a * b).sum())[1])(x, y)),
    ),
    ("jvp_input_and_its_tangent", _written(lambda m, x, y: m.jvp(lambda a: a.mul_(2), (x,), (y,)))),
    ("jvp_view_of_input", _written(lambda m, x, y: m.jvp(lambda a: (a[0].mul_(2), a)[1], (x,), (y,)))),
    (
        "vjp_under_no_grad_write",
        _written(lambda m, x, y: (lambda o, fn: (o, fn(y)))(*m.vjp(_doubled_under_no_grad, x))),
    ),
    ("vmap_of_grad", _written(lambda m, x, y: m.vmap(m.grad(lambda a, b: (b.mul_(2), (a * b).sum())[1]))(x, y))),
    (
        "grad_of_vmap_write_undifferentiated",
        _written(
            lambda m, x, y: m.grad(lambda a, b: m.vmap(lambda c, d: (d.mul_(c), (c * d).sum())[1])(a, b).sum())(x, y)
        ),
    ),
    ("clamp_under_no_grad_grad", lambda m: m.grad(_clamped_norms)(_x())),
    ("clamp_under_no_grad_jvp", lambda m: m.jvp(_clamped_norms, (_x(),), (_y(),))),
    (
        "leaf_written_under_no_grad",
        _written(lambda m, x, y: m.grad(lambda a: _doubled_under_no_grad(a).sum())(x)),
    ),
    (
        "cosine_similarity_grad",
        lambda m: m.grad(lambda a, b: F.cosine_similarity(a, b, dim=-1).sum(), argnums=(0, 1))(_x(), _y()),
    ),
    ("cosine_similarity_jvp", lambda m: m.jvp(lambda a, b: F.cosine_similarity(a, b), (_x(), _y()), (_y(), _x()))),
    ("cosine_similarity_captured", lambda m: m.grad(lambda a: F.cosine_similarity(a, _CAPTURED).sum())(_x())),
    (
        "cosine_similarity_vmap_grad",
        lambda m: m.vmap(m.grad(lambda a, b: F.cosine_similarity(a, b, dim=0)))(_x(), _y()),
    ),
    (
        "tensor_made_inside_grad",
        lambda m: m.grad(lambda a: torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).add_(a).sum())(_x()[0]),
    ),
    ("factory_made_inside_vmap", lambda m: m.vmap(lambda a: torch.zeros(3, dtype=torch.float64).add_(1) * a)(_x())),
    # a tensor computed from a captured one, then written in place: applied once, under nested traces too
    (
        "zeros_like_captured_vmap",
        lambda m: m.vmap(lambda a: torch.zeros_like(_CAPTURED[0]).add_(_CAPTURED[0]) * a)(_x()),
    ),
    ("clone_captured_vmap", lambda m: m.vmap(lambda a: _CAPTURED[1].clone().sub_(_CAPTURED[0]) * a)(_x())),
    (
        "ones_like_captured_grad",
        lambda m: m.grad(lambda a: (torch.ones_like(_CAPTURED).sub_(_CAPTURED) * a).sum())(_x()),
    ),
    (
        "clone_captured_vmap_jacrev",
        lambda m: m.vmap(m.jacrev(lambda a: _CAPTURED[1].clone().mul_(_CAPTURED[0]).add_(1) * a.sin()))(_x()),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=n) for n, c in CASES])
def test_in_place_matches_torch_func(backend, case):
    assert_same(case(tritonfunc), case(torch.func))


def test_vmap_returns_the_written_input_itself(backend):
    """torch.func returns the caller's tensor (a view of it) when the function returns its
    mutated argument; so does tritonfunc."""
    x = _x()
    out = tritonfunc.vmap(lambda a: a.mul_(2), in_dims=1, out_dims=1)(x)
    assert out.data_ptr() == x.data_ptr()
    assert_same(out, x)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda m: m.vmap(m.vmap(torch.Tensor.cos_, in_dims=2), in_dims=2, out_dims=2), id="inplace"),
        pytest.param(lambda m: m.vmap(m.vmap(lambda a: a.mT, in_dims=1), in_dims=2, out_dims=1), id="view"),
        pytest.param(lambda m: m.vmap(m.vmap(lambda a: a[1:].unsqueeze(0)), in_dims=1), id="slice"),
    ],
)
def test_nested_vmap_returns_a_view_of_the_input(backend, build):
    """A view (or the written argument) returned from inside nested vmaps with moved batch dims is
    a view of the caller's tensor, as in torch.func: a later write to the input shows through it."""
    results = []
    for m in (tritonfunc, torch.func):
        x = make(2, 5, 4, 3, 6, seed=3)
        out = build(m)(x)
        assert out._base is x
        x.mul_(-2)
        results.append((out.clone(), out.stride(), x))
    assert_same(results[0], results[1])


@pytest.mark.parametrize(
    "fn",
    [
        pytest.param(lambda a: a.t().reshape(-1), id="t_reshape"),
        pytest.param(lambda a: a.permute(1, 0).flatten(), id="permute_flatten"),
        pytest.param(lambda a: a[:, ::2].reshape(-1), id="strided_reshape"),
    ],
)
def test_a_reshape_that_must_copy_is_returned_as_a_copy(backend, fn):
    """The trace sees reshape of a transposed tensor as a view (tracers have no strides); the real
    tensor's strides allow none, so torch copies, and so does tritonfunc (it used to crash)."""
    x = make(3, 4)
    assert_same(tritonfunc.jit(fn)(x), fn(x))
    assert_same(tritonfunc.vmap(fn)(make(2, 3, 4)), torch.func.vmap(fn)(make(2, 3, 4)))
    assert_same(tritonfunc.vmap(fn, in_dims=1)(make(3, 2, 4)), torch.func.vmap(fn, in_dims=1)(make(3, 2, 4)))


MADE_INSIDE = [
    ("jvp", lambda m: lambda a, b: m.jvp(lambda s: (a * 2).add_(s) * s, (b,), (b,))),
    ("grad", lambda m: lambda a, b: m.grad(lambda s: a.clone().mul_(s).sin().sum())(b)),
    ("vjp", lambda m: lambda a, b: m.vjp(lambda s: a.clone().mul_(s).sin(), b)[1](b)),
    ("jacrev", lambda m: lambda a, b: m.jacrev(lambda s: a.clone().mul_(s).sin())(b)),
    ("jacfwd", lambda m: lambda a, b: m.jacfwd(lambda s: a.clone().mul_(s).sin())(b)),
]


@pytest.mark.parametrize("build", [pytest.param(f, id=n) for n, f in MADE_INSIDE])
def test_a_tensor_made_inside_a_gradient_transform_may_be_written(backend, build):
    """a.clone() of a vmapped value, made inside grad/vjp/jvp, is the function's own tensor (not a
    captured one): torch.func lets it be written in place, and tritonfunc computes the same."""
    x, t = _x(), _y()
    assert_same(tritonfunc.vmap(build(tritonfunc))(x, t), torch.func.vmap(build(torch.func))(x, t))


def test_a_vmapped_value_captured_by_grad_may_not_be_written():
    f = lambda m: m.vmap(lambda a, b: m.grad(lambda s: a.mul_(s).sum())(b))  # noqa: E731
    for m in (torch.func, tritonfunc):
        with pytest.raises(RuntimeError, match="would mutate a captured Tensor"):
            f(m)(_x(), _y())


def test_captured_tensor_written_under_vmap_and_jit(backend):
    """vmap (and jit) may write a captured tensor: the closure's tensor changes once per call."""
    for m in (tritonfunc, torch.func):
        buf = torch.zeros(3, dtype=torch.float64)
        out = m.vmap(lambda a: (buf.add_(1), a * buf)[1])(_x())
        if m is tritonfunc:
            got = (out, buf.clone())
        else:
            want = (out, buf.clone())
    assert_same(got, want)
    buf = torch.zeros(3)
    tritonfunc.jit(lambda a: buf.mul_(a).add_(2))(torch.ones(3))
    assert_same(buf, torch.full((3,), 2.0))


# ---------------------------------------------------------------------------------------------
# Modules whose buffers change in place, under functional_call.


class Counter(torch.nn.Module):
    """Counts its calls and keeps a running average of its input's mean, in place."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2).double()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("avg", torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        self.count.add_(1)
        self.avg.mul_(0.9).add_(0.1 * x.mean())
        return self.lin(x).sum() * (1 + self.avg)


def _state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}, {
        k: v.clone() for k, v in model.named_buffers()
    }


def _functional_call_case(m, model, kind):
    params, buffers = _state(model)
    x = _x()
    call = lambda p, b, x: torch.func.functional_call(model, (p, b), (x,))  # noqa: E731
    if kind == "jit":
        result = tritonfunc.jit(call)(params, buffers, x) if m is tritonfunc else call(params, buffers, x)
    elif kind == "grad":
        result = m.grad(call)(params, buffers, x)
    else:  # an ensemble of 4 models over one batch
        torch.manual_seed(0)
        models = [Counter() for _ in range(4)]
        params, buffers = torch.func.stack_module_state(models)
        params = {k: v.detach() for k, v in params.items()}
        result = m.vmap(call, in_dims=(0, 0, None))(params, buffers, x)
    return result, buffers


@pytest.mark.parametrize("kind", ["jit", "grad", "ensemble"])
def test_functional_call_writes_buffers_back(backend, kind):
    torch.manual_seed(0)
    model = Counter()
    got = _functional_call_case(tritonfunc, model, kind)
    want = _functional_call_case(torch.func, model, kind)
    assert_same(got, want)
    assert float(want[1]["count"].flatten()[0]) == 1  # the case writes at all
    assert model.count == 0 and model.avg == 0  # the module keeps its own tensors


# ---------------------------------------------------------------------------------------------
# torch.func's errors.

_BUF = torch.zeros(3, dtype=torch.float64)

ERRORS = [
    ("grad_differentiated_input", lambda m: m.grad(lambda a: a.mul_(2).sum())(_x())),
    ("grad_view_of_differentiated", lambda m: m.grad(lambda a: (a[0].add_(1), a.sum())[1])(_x())),
    ("grad_metadata_of_differentiated", lambda m: m.grad(lambda a: a.t_().sum())(_x())),
    ("vjp_differentiated_input", lambda m: m.vjp(lambda a: a.mul_(2), _x())),
    ("grad_captured", lambda m: m.grad(lambda a: (_BUF.add_(1), a.sum())[1])(_x())),
    ("grad_captured_copy_", lambda m: m.grad(lambda a: (_BUF.copy_(a[0]), a.sum())[1])(_x())),
    ("vjp_captured", lambda m: m.vjp(lambda a: (_BUF.add_(a[0]), a.sum())[1], _x())),
    ("jvp_captured", lambda m: m.jvp(lambda a: (_BUF.add_(a[0]), a.sum())[1], (_x(),), (_y(),))),
    ("vmap_of_grad_captured", lambda m: m.vmap(m.grad(lambda a: (_BUF.add_(1), a.sum())[1]))(_x())),
    ("grad_of_vmap_captured", lambda m: m.grad(lambda a: m.vmap(lambda c: (_BUF.add_(1), c.sum())[1])(a).sum())(_x())),
    (
        "vmap_of_grad_writes_outer",
        lambda m: m.vmap(lambda a: m.grad(lambda c: (a.add_(1), (c * a).sum())[1])(_y()[0]))(_x()),
    ),
    ("grad_of_vmap_writes_differentiated", lambda m: m.grad(lambda a: m.vmap(lambda c: c.mul_(2))(a).sum())(_x())),
    ("vmap_add_batched_into_unbatched", lambda m: m.vmap(lambda a, b: b.add_(a), (0, None))(_x(), _y()[0])),
    ("vmap_mul_batched_into_unbatched", lambda m: m.vmap(lambda a, b: b.mul_(a), (0, None))(_x(), _y()[0])),
    ("vmap_pow_batched_into_unbatched", lambda m: m.vmap(lambda a, b: b.pow_(a), (0, None))(_x(), _y()[0])),
    ("vmap_copy_into_factory", lambda m: m.vmap(lambda a: torch.zeros(3, dtype=torch.float64).copy_(a))(_x())),
    (
        "vmap_index_fill_into_factory",
        lambda m: m.vmap(lambda a: torch.zeros(3, dtype=torch.float64).index_fill_(0, torch.tensor([0]), a[0]))(_x()),
    ),
    ("vmap_fill_factory", lambda m: m.vmap(lambda a: torch.zeros(3, dtype=torch.float64).fill_(a[0]))(_x())),
    ("vmap_captured_batched", lambda m: m.vmap(lambda a: (_BUF.add_(a), a)[1])(_x())),
    (
        "vmap_nested_level_2",
        lambda m: m.vmap(lambda a: m.vmap(lambda c, d: d.pow_(c), (0, None))(a, a[0]))(_x()[None].expand(2, 2, 3)),
    ),
    ("int_add_float", lambda m: m.vmap(lambda a, b: torch.arange(3).add_(b), (0, None))(_x(), _y()[0])),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=n) for n, c in ERRORS])
def test_in_place_errors_match_torch_func(case):
    before = _BUF.clone()
    assert_same_error(lambda: case(tritonfunc), lambda: case(torch.func))
    _BUF.copy_(before)


def _batch_norm_case(m, kind):
    """BatchNorm in train mode updates its running statistics in place: torch.func writes them into
    the user's buffer dict, and the module keeps its own."""
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).double() for _ in range(3)]
    x = torch.randn(5, 3, dtype=torch.float64)
    call = lambda p, b, x: torch.func.functional_call(models[0], (p, b), (x,)).pow(2).sum()  # noqa: E731
    if kind == "ensemble":
        params, buffers = torch.func.stack_module_state(models)
        params = {k: v.detach() for k, v in params.items()}
        result = m.vmap(call, in_dims=(0, 0, None))(params, buffers, x)
    else:
        params, buffers = _state(models[0])
        result = m.grad(call)(params, buffers, x)
    assert models[0][1].num_batches_tracked == 0
    return result, buffers


@pytest.mark.parametrize("kind", ["grad", "ensemble"])
def test_batch_norm_running_stats_written_back(backend, kind):
    assert_same(_batch_norm_case(tritonfunc, kind), _batch_norm_case(torch.func, kind))


def test_aliasing_of_captured_tensors_tritonfunc_cannot_follow_is_refused(backend):
    """A view made outside tritonfunc's tracing (here, of a captured tensor) does not follow writes to
    its base inside the function: reading it afterwards would be stale, so it is refused."""
    buf = torch.zeros(2, 3)
    view = buf[0]

    def f(x):
        buf.add_(x)
        return view * 2

    with pytest.raises(NotImplementedError, match="tritonfunc: a captured tensor is read after"):
        tritonfunc.jit(f)(torch.ones(2, 3))
    assert_same(tritonfunc.jit(lambda x: (buf.add_(x), buf * 2)[1])(torch.ones(2, 3)), torch.full((2, 3), 2.0))


def _write_through_one_read_the_other(m, through_view: bool):
    """jvp inside vmap of a function that clones a vmapped tensor, writes through the clone or a
    view of it, and returns both: the write is seen through the other (functorch's
    TestVmapJvpInplaceView right_dual_base_prop and right_dual_view_prop)."""

    def f(x, y):
        x = x.clone()
        view = x[0]
        (view if through_view else x).copy_(y)
        return view, x

    x, y, t = make(2, 3, 4), make(2, 4, 3, seed=1), make(2, 4, 3, seed=2)
    if through_view:
        y, t = y[0], t[0]
    inner = lambda x, y, t: m.jvp(lambda y: f(x, y), (y,), (t,))  # noqa: E731
    return m.vmap(inner, in_dims=(1, -1, -1))(x, y, t)


@pytest.mark.parametrize("through_view", [False, True], ids=["through_base", "through_view"])
def test_a_deeper_trace_writes_an_enclosing_tensor_and_reads_its_view(backend, through_view):
    got = _write_through_one_read_the_other(tritonfunc, through_view)
    assert_same(got, _write_through_one_read_the_other(torch.func, through_view))


def test_write_inside_a_nested_grad_to_a_tensor_an_outer_vmap_wrote(backend):
    for m in (tritonfunc, torch.func):
        buf = torch.zeros(3)

        def f(x, buf=buf, m=m):
            buf.add_(1)
            return m.grad(lambda y: (buf.add_(1), (y * 2).sum())[1])(x)

        e = pytest.raises(RuntimeError, m.vmap(f), torch.ones(2, 3))
        assert "would mutate a captured Tensor" in str(e.value)


def test_an_argument_written_while_aliased_by_another_is_refused(backend):
    x = torch.zeros(3)
    with pytest.raises(NotImplementedError, match="shares memory with another argument"):
        tritonfunc.jit(lambda a, b: (a.add_(1), b * 2)[1])(x, x)
    y = torch.zeros(2, 6)
    with pytest.raises(NotImplementedError, match="shares memory with another argument"):
        tritonfunc.vmap(lambda a, b: a.add_(b), in_dims=(0, 0))(y[:, :4], y[:, 2:])
    assert x.eq(0).all() and y.eq(0).all()  # refused before anything was written
    # Two halves of one buffer do not overlap: nothing to refuse.
    y = torch.zeros(2, 6)
    tritonfunc.vmap(lambda a, b: a.add_(b + 1), in_dims=(0, 0))(y[:, :3], y[:, 3:])
    assert_same(y, torch.tensor([[1.0] * 3 + [0.0] * 3] * 2))


@pytest.mark.parametrize(
    "make_fresh",
    [
        pytest.param(lambda x: torch.zeros_like(x), id="zeros_like"),
        pytest.param(lambda x: torch.empty_like(x).fill_(0.5), id="empty_like_fill"),
        pytest.param(lambda x: x.new_zeros(x.shape), id="new_zeros"),
        pytest.param(lambda x: torch.full_like(x, 2.0), id="full_like"),
    ],
)
def test_a_tensor_made_like_a_batched_one_takes_batched_writes(backend, make_fresh):
    """Under torch.func's vmap, zeros_like(x) of a batched x is batched, so writing batched values
    into it is allowed (the documented fix for in-place errors); unlike torch.zeros(shape)."""

    def f(x):
        fresh = make_fresh(x)
        fresh.add_(x.sin())
        return fresh * 2

    x = torch.randn(3, 4, dtype=torch.float64)
    assert_same(tritonfunc.vmap(f)(x), torch.func.vmap(f)(x))


def test_a_fresh_tensor_not_made_like_the_batch_refuses_batched_writes():
    def f(x):
        fresh = torch.zeros(4, dtype=x.dtype)
        return fresh.add_(x)

    x = torch.randn(3, 4, dtype=torch.float64)
    assert_same_error(lambda: tritonfunc.vmap(f)(x), lambda: torch.func.vmap(f)(x))
