"""The trace cache never goes stale: a call is replayed only while everything that decided its trace
is unchanged (the key: transforms, shapes, dtypes, strides, argument values, grad mode; the guards:
what the function read besides its arguments), and captured tensors are read at every call.

Each test checks values against eager torch / torch.func, and the cache's own counters
(tritonfunc.cache_info()) to see that a replay, not a retrace, produced them where it should.
"""

import collections
import gc
import weakref

import pytest
import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same, make

import tritonfunc
from tritonfunc import runtime


@pytest.fixture(autouse=True)
def fresh_cache():
    tritonfunc.clear_caches()
    yield
    tritonfunc.set_cache(enabled=True, max_entries=256)


def counts() -> tuple[int, int, int]:
    info = tritonfunc.cache_info()
    return info["hits"], info["misses"], info["retraces"]


def test_a_repeated_call_is_replayed_not_traced(backend):
    f = tritonfunc.jit(lambda x: (x * 1.5).sin())
    x = make(4, 3)
    assert_same(f(x), (x * 1.5).sin())
    assert_same(f(x * 2), (x * 3).sin())
    assert counts() == (1, 1, 0)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(lambda x: make(5, 3), id="shape"),
        pytest.param(lambda x: x.float(), id="dtype"),
        pytest.param(lambda x: make(3, 4).t(), id="strides"),
        pytest.param(lambda x: x.clone().requires_grad_(), id="requires_grad"),
    ],
)
def test_a_new_shape_dtype_strides_or_requires_grad_traces_anew(backend, other):
    f = tritonfunc.jit(lambda x: x.exp() - 1)
    x = make(4, 3)
    f(x)
    y = other(x)
    assert_same(f(y), (y.exp() - 1).detach())
    assert counts() == (0, 2, 0)


def test_vmap_of_grad_rebuilt_at_every_iteration_hits(backend):
    def loss(w, x):
        return (x @ w).tanh().sum()

    w, xs = make(3), make(5, 4, 3)
    for i in range(3):
        got = tritonfunc.vmap(tritonfunc.grad(loss), in_dims=(None, 0))(w, xs[i])  # new wrappers each time
        assert_same(got, torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w, xs[i]))
    assert counts() == (2, 1, 0)


def test_transform_parameters_are_part_of_the_key(backend):
    def f(a, b):
        return (a * b.sin()).sum()

    a, b = make(3), make(3, seed=1)
    for argnums in (0, 1, (0, 1)):
        assert_same(tritonfunc.grad(f, argnums=argnums)(a, b), torch.func.grad(f, argnums=argnums)(a, b))
    assert_same(
        tritonfunc.vmap(f, in_dims=(0, None))(make(2, 3), b), torch.func.vmap(f, in_dims=(0, None))(make(2, 3), b)
    )
    assert_same(
        tritonfunc.vmap(f, in_dims=(None, 0))(a, make(2, 3)), torch.func.vmap(f, in_dims=(None, 0))(a, make(2, 3))
    )
    assert counts() == (0, 5, 0)


def test_the_same_function_under_different_transforms(backend):
    f = lambda x: (x.sin() * x).sum()  # noqa: E731
    x = make(4)
    for name in ("grad", "jacrev", "jacfwd", "hessian"):
        assert_same(getattr(tritonfunc, name)(f)(x), getattr(torch.func, name)(f)(x))
    assert_same(tritonfunc.jit(f)(x), f(x))
    assert counts() == (0, 5, 0)


def test_keyword_and_scalar_arguments(backend):
    f = tritonfunc.jit(lambda x, scale=1.0, flag=False: x * scale if flag else x - scale)
    x = make(3)
    assert_same(f(x, scale=2.0, flag=True), x * 2.0)
    assert_same(f(x, scale=3.0, flag=True), x * 3.0)
    assert_same(f(x, scale=3.0, flag=False), x - 3.0)
    assert_same(f(x, scale=3.0, flag=False), x - 3.0)
    assert counts() == (1, 3, 0)


def test_grad_mode_is_part_of_the_key(backend):
    f = tritonfunc.grad(lambda x: x.exp().sum())
    x = make(3)
    f(x)
    with torch.no_grad():
        assert_same(f(x), x.exp())
    assert counts() == (0, 2, 0)


def test_a_captured_tensor_updated_in_place_is_read_at_every_call(backend):
    w = make(3)
    f = tritonfunc.jit(lambda x: x * w + w.sum())  # w.sum() runs eagerly on the real w, and is traced
    x = make(3, seed=1)
    f(x)
    w.mul_(3)
    assert_same(f(x), x * w + w.sum())
    assert counts() == (1, 1, 0)


def test_a_transform_of_a_captured_tensor_inside_a_transform_is_traced_with_it(backend):
    """The inner transform runs on real tensors while the outer one traces: its ops are recorded
    (fused into the outer program), and read w again at each call.  On the interpreter it launched
    its kernels on the tensors the trace was making and crashed (an invalid storage)."""
    w = make(5, 3)
    f = tritonfunc.jit(lambda y: tritonfunc.vmap(torch.sin)(w) + tritonfunc.grad(lambda z: z.sin().sum())(w) * y)
    y = make(5, 3, seed=1)
    assert_same(f(y), torch.sin(w) + torch.cos(w) * y)
    w.add_(1)
    assert_same(f(y), torch.sin(w) + torch.cos(w) * y)


def test_a_generator_made_inside_the_function_draws_the_same_each_call(backend):
    """torch.randn(..., generator=torch.Generator().manual_seed(0)) inside the function: the same
    draws at every call, as in torch (a replay drew on from the first call's generator)."""
    f = tritonfunc.jit(lambda a: a + torch.randn(3, generator=torch.Generator().manual_seed(0), dtype=a.dtype))
    x = make(3)
    assert_same(f(x), f(x))
    assert any("torch.Generator" in line for line in tritonfunc.explain(f)(x).splitlines())


def test_a_captured_name_rebound_to_a_like_tensor_is_replayed_with_it(backend):
    w = make(3)
    f = tritonfunc.jit(lambda x: x * w)
    x = make(3, seed=1)
    f(x)
    w = make(3, seed=2)
    assert_same(f(x), x * w)
    w = make(5, seed=2)  # another shape: traced anew
    assert_same(f(make(5)), make(5) * w)
    assert counts() == (1, 2, 0)


def _scaled_by_length_of(h):
    return lambda x: x * h.shape[0]


def test_a_captured_tensor_read_only_for_its_shape_is_guarded(backend):
    """The trace bakes h.shape[0] in: a closure over a longer h, or h rebound, must trace anew."""
    x = make(3)
    assert_same(tritonfunc.jit(_scaled_by_length_of(torch.zeros(2)))(x), x * 2)
    assert_same(tritonfunc.jit(_scaled_by_length_of(torch.zeros(5)))(x), x * 5)
    h = torch.zeros(2)
    f = tritonfunc.jit(lambda x: x * h.shape[0])
    assert_same(f(x), x * 2)
    h = torch.zeros(7)
    assert_same(f(x), x * 7)
    h = torch.ones(7)  # the same metadata: replayed
    assert_same(f(x), x * 7)
    assert counts() == (1, 2, 2)


def test_a_captured_python_scalar_is_compared_at_every_call(backend):
    scale = 2.0
    f = tritonfunc.grad(lambda x: (x * scale).sin().sum())
    x = make(3)
    f(x)
    scale = 5.0
    assert_same(f(x), torch.func.grad(lambda x: (x * 5.0).sin().sum())(x))
    scale = 2.0  # the first variant is still there
    assert_same(f(x), torch.func.grad(lambda x: (x * 2.0).sin().sum())(x))
    assert counts() == (1, 1, 1)


SCALE = 2.0
TABLE = make(3, seed=9)


def uses_globals(x):
    return x * SCALE + TABLE


def test_globals_are_guarded(backend):
    global SCALE, TABLE
    f = tritonfunc.jit(uses_globals)
    x = make(3)
    f(x)
    SCALE = 4.0
    try:
        assert_same(f(x), x * 4.0 + TABLE)
        TABLE = make(3, seed=10)
        assert_same(f(x), x * 4.0 + TABLE)
    finally:
        SCALE, TABLE = 2.0, make(3, seed=9)
    assert counts() == (1, 1, 1)


class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2).double()
        self.scale = 2.0

    def forward(self, x):
        y = self.lin(x) * self.scale
        return y.tanh() if self.training else y


def test_module_flags_attributes_and_parameters(backend):
    model = Scaled()
    f = tritonfunc.jit(lambda x: model(x))
    x = make(4, 3)
    with torch.no_grad():
        assert_same(f(x), model(x))
        model.eval()  # `training` is guarded
        assert_same(f(x), model(x))
        model.scale = 3.0  # a user attribute
        assert_same(f(x), model(x))
        model.lin.weight.mul_(2)  # an optimizer step: in place
        assert_same(f(x), model(x))
        model.lin.weight = torch.nn.Parameter(make(2, 3, seed=4))  # a new parameter of the same shape
        assert_same(f(x), model(x))
    hits, misses, retraces = counts()
    assert (misses, retraces) == (1, 2) and hits == 2


def test_a_module_as_the_transformed_function(backend):
    model = Scaled().eval()
    x = make(4, 3)
    got = tritonfunc.vmap(model)(x)
    assert_same(got, torch.func.vmap(model)(x))
    model.train()
    assert_same(tritonfunc.vmap(model)(x), torch.func.vmap(model)(x))
    assert counts() == (0, 1, 1)


def test_what_cannot_be_guarded_is_traced_at_every_call(backend):
    holder = collections.deque([2.0])  # no __dict__: nothing tritonfunc can guard
    f = tritonfunc.jit(lambda x: x * holder[0])
    x = make(3)
    assert_same(f(x), x * 2.0)
    holder[0] = 7.0
    assert_same(f(x), x * 7.0)
    assert tritonfunc.cache_info()["unguardable"] == 2
    assert "deque, which tritonfunc cannot guard" in tritonfunc.explain(lambda x: x * holder[0])(x)


def test_a_host_read_of_a_captured_value_is_never_replayed(backend):
    w = make(3)
    f = tritonfunc.jit(lambda x: x * 2 if w.sum() > 0 else x * -2)
    x = make(3, seed=1)
    assert_same(f(x), x * 2 if w.sum() > 0 else x * -2)
    w.neg_()
    assert_same(f(x), x * 2 if w.sum() > 0 else x * -2)
    assert tritonfunc.cache_info()["unguardable"] == 2


def _vjp_of_captured(op, a, b):
    """A function of the cotangent alone: the vjp of a graph torch's autograd recorded outside it."""
    out = op(a, b)

    def vjp(v):
        return torch.autograd.grad(out, (a, b), v, retain_graph=True)

    return vjp


def test_autograd_over_captured_graphs_is_never_replayed(backend):
    """vmap of torch.autograd.grad over a captured graph: the same code closing over x + y, then x * y.
    No guard sees the autograd graph, so each call traces anew (a replay would be add's vjp)."""
    x, y, v = make(2, 3).requires_grad_(), make(2, 3, seed=1).requires_grad_(), make(4, 2, 3, seed=2)
    for op in (torch.add, torch.mul, torch.div):
        vjp = _vjp_of_captured(op, x, y)
        assert_same(tritonfunc.vmap(vjp)(v), torch.func.vmap(vjp)(v))
    assert tritonfunc.cache_info()["unguardable"] == 3
    assert "runs torch's autograd over tensors it captured" in tritonfunc.explain(tritonfunc.vmap(vjp))(v)


def test_random_draws_are_fresh_at_every_replay(interpreter):
    f = tritonfunc.jit(lambda x: x + torch.rand(4))
    x = torch.zeros(4)
    torch.manual_seed(0)
    first, second = f(x), f(x)
    assert not torch.equal(first, second)
    torch.manual_seed(0)
    assert torch.equal(f(x), first)
    assert counts()[0] == 2


def test_in_place_writes_happen_at_every_replay(backend):
    f = tritonfunc.jit(lambda x: x.add_(1))
    x = torch.zeros(3)
    f(x)
    out = f(x)
    assert out is x and torch.equal(x, torch.full((3,), 2.0))
    assert counts() == (1, 1, 0)


def _adds(big):
    return tritonfunc.jit(lambda x: x + big)


def test_the_cache_holds_no_captured_tensor(backend):
    big = torch.randn(64)
    gone = weakref.ref(big)
    f = _adds(big)
    f(torch.zeros(64))
    del f, big
    gc.collect()
    assert gone() is None


def test_the_caches_are_bounded(interpreter, monkeypatch):
    tritonfunc.set_cache(max_entries=3)
    monkeypatch.setattr(runtime, "MAX_LOADED_KERNELS", 4)
    f = tritonfunc.jit(lambda x: x * 2.5 + 0.5)
    for n in range(1, 9):
        assert_same(f(torch.ones(n)), torch.full((n,), 3.0))
    info = tritonfunc.cache_info()
    assert info["entries"] <= 3 and len(runtime._MODULES) <= 4 and len(runtime._EXECUTABLES) <= runtime.MAX_EXECUTABLES


def test_the_cache_can_be_turned_off(backend):
    tritonfunc.set_cache(enabled=False)
    w = make(3)
    f = tritonfunc.jit(lambda x: x * w)
    f(make(3))
    assert_same(f(make(3)), make(3) * w)
    assert tritonfunc.cache_info()["entries"] == 0


def test_per_sample_losses_with_captured_model_parameters(backend):
    """The common pattern: a model's parameters captured by a closure (F.linear transposes them
    eagerly; that transpose is traced too, so later parameter updates are seen)."""
    lin = torch.nn.Linear(3, 4).double()

    def loss(x, t):
        return F.cross_entropy(lin(x)[None], t[None])

    x, t = make(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    tritonfunc.vmap(tritonfunc.grad(loss))(x, t)
    with torch.no_grad():
        lin.weight.add_(0.5)
    assert_same(tritonfunc.vmap(tritonfunc.grad(loss))(x, t), torch.func.vmap(torch.func.grad(loss))(x, t))
    assert counts() == (1, 1, 0)


def test_a_transform_called_alone_then_wrapped_keeps_its_own_key(backend):
    """Wrapping a transform that was already called must not inherit what the cache noted on it."""
    f = lambda x: (x.sin() * x).sum()  # noqa: E731
    g = tritonfunc.grad(f)
    x = make(3)
    assert_same(g(x), torch.func.grad(f)(x))
    xs = make(2, 3)
    assert_same(tritonfunc.vmap(g)(xs), torch.func.vmap(torch.func.grad(f))(xs))
    assert_same(tritonfunc.jacrev(g)(x), torch.func.jacrev(torch.func.grad(f))(x))


def test_vjp_and_linearize_replay_their_trace_and_see_captured_updates(backend):
    w = make(5)
    f = lambda x: (x.sin() * w).exp()  # noqa: E731
    x, ct = make(5, seed=1), make(5, seed=2)
    for _ in range(3):
        out, vjp_fn = tritonfunc.vjp(f, x)
        want_out, want_fn = torch.func.vjp(f, x)
        assert_same((out, vjp_fn(ct)), (want_out, want_fn(ct)))
        out, jvp_fn = tritonfunc.linearize(f, x)
        assert_same((out, jvp_fn(ct)), torch.func.jvp(f, (x,), (ct,)))
        w.mul_(1.5)
    assert counts() == (4, 2, 0)


def test_building_a_transform_in_a_loop_holds_nothing(monkeypatch):
    """vmap(grad(f)) rebuilt at every step registers nothing with Dynamo (that cost ~55 us a build
    and grew its tables forever) and leaves nothing behind once dropped."""
    from tritonfunc import library

    monkeypatch.setattr(torch.compiler, "allow_in_graph", lambda fn: pytest.fail("allow_in_graph at build"))
    gc.collect()
    before = set(library._wrappers.keys())
    built = [tritonfunc.vmap(tritonfunc.grad(lambda x: x.sin().sum())) for _ in range(50)]
    ours = set(library._wrappers.keys()) - before
    assert len(ours) == 100
    del built
    gc.collect()
    assert not ours & set(library._wrappers.keys())
