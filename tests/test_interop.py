"""tritonfunc inside the PyTorch users already have: torch.autograd, torch.func and torch.compile
around tritonfunc calls.  The oracle is the same computation with torch / torch.func alone."""

import pytest
import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same, make

import tritonfunc

pytestmark = pytest.mark.filterwarnings("ignore::tritonfunc.fallback.NotFusedWarning")


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()


# ---------------------------------------------------------------------------------------------
# torch.autograd around tritonfunc.


def test_backward_through_vmap_of_a_modules_forward(backend):
    model = mlp()
    x = make(4, 3)
    tritonfunc.vmap(model)(x).square().sum().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.func.vmap(model)(x).square().sum().backward()
    assert_same(got, [p.grad for p in model.parameters()])


def _vjp_outputs_under_autograd(m):
    """vjp of x -> 3 x^2 at an x that requires grad: which results torch.autograd records,
    and what it differentiates them to, with vjp_fn run inside and outside no_grad.  (With a vjp taken
    under no_grad, torch.func's derivative of vjp_fn's result treats the intermediates it saved as
    constants; 3 x^2 saves only x, so the two agree.)"""
    x, ct = make(4).requires_grad_(), make(4, seed=1)
    out, vjp_fn = m.vjp(lambda a: a * a * 3, x)
    with torch.no_grad():
        (inside,) = vjp_fn(ct)
    with torch.no_grad():
        _, later_fn = m.vjp(lambda a: a * a * 3, x)
    (outside,) = later_fn(ct)
    flags = (out.requires_grad, inside.requires_grad, outside.requires_grad)
    return flags, out, inside, torch.autograd.grad(out.sum(), x), torch.autograd.grad(outside.sum(), x)


def test_vjp_and_its_vjp_fn_are_recorded_by_autograd_as_torch_funcs(backend):
    """vjp and vjp_fn (and linearize) run outside the whole-call cache path: they too are recorded
    by torch.autograd when their inputs require grad and grad mode is on, as torch.func's are."""
    got, want = _vjp_outputs_under_autograd(tritonfunc), _vjp_outputs_under_autograd(torch.func)
    assert got[0] == want[0] == (True, False, True)
    assert_same(got[1:], want[1:])
    x = make(4).requires_grad_()
    out, jvp_fn = tritonfunc.linearize(torch.sin, x)
    assert out.requires_grad and jvp_fn(torch.ones_like(x)).requires_grad


def test_backward_through_vmap_with_inputs_that_require_grad(backend):
    x, w = make(4, 3).requires_grad_(), make(3, seed=1).requires_grad_()
    out = tritonfunc.vmap(lambda row, w: (row * w).sin().sum(), in_dims=(0, None))(x, w)
    assert out.requires_grad
    got = torch.autograd.grad(out.sum(), (x, w))
    want_out = torch.func.vmap(lambda row, w: (row * w).sin().sum(), in_dims=(0, None))(x, w)
    assert_same(got, torch.autograd.grad(want_out.sum(), (x, w)))


def test_second_order_through_grad_is_exact(backend):
    """MAML: an outer autograd.grad of a loss built from an inner tritonfunc.grad (the full
    second-order term, which torch.func gives too)."""
    x, w = make(6, 3), make(3, seed=1).requires_grad_()

    def inner(w):
        return (x @ w).tanh().square().sum()

    def adapted_loss(grad):
        w_new = w - 0.1 * grad(inner)(w)
        return (x @ w_new).cos().sum()

    got = torch.autograd.grad(adapted_loss(tritonfunc.grad), w)
    want = torch.autograd.grad(adapted_loss(torch.func.grad), w)
    assert_same(got, want)


def test_double_backward(backend):
    x = make(5).requires_grad_()
    y = tritonfunc.jit(lambda x: (x.sin() * x.exp()).sum())(x)
    (g,) = torch.autograd.grad(y, x, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), x)
    y2 = (x.sin() * x.exp()).sum()
    (g2,) = torch.autograd.grad(y2, x, create_graph=True)
    assert_same((g, gg), (g2, torch.autograd.grad(g2.square().sum(), x)[0]))


def test_jvp_results_require_grad_when_the_primal_does(backend):
    x, t = make(4).requires_grad_(), make(4, seed=1)
    out, tangent = tritonfunc.jvp(torch.sin, (x,), (t,))
    assert out.requires_grad and tangent.requires_grad
    got = torch.autograd.grad((out + tangent).sum(), x)
    want_out, want_tangent = torch.func.jvp(torch.sin, (x,), (t,))
    assert_same(got, torch.autograd.grad((want_out + want_tangent).sum(), x))


def test_outputs_do_not_require_grad_without_grad_mode(backend):
    x = make(4).requires_grad_()
    with torch.no_grad():
        assert not tritonfunc.jit(torch.sin)(x).requires_grad


def test_an_optimizer_loop_with_a_tritonfunc_forward(backend):
    ours, theirs = mlp(), mlp()
    x, t = make(8, 3), torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])

    def loss(model, x):
        return F.cross_entropy(model(x), t)

    fused = tritonfunc.jit(lambda x: loss(ours, x))
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.5)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.5)
    for _ in range(3):
        opt_ours.zero_grad()
        fused(x).backward()
        opt_ours.step()
        opt_theirs.zero_grad()
        loss(theirs, x).backward()
        opt_theirs.step()
    assert_same(list(ours.parameters()), list(theirs.parameters()))


def test_the_backward_of_a_jit_call_is_fused_kernels(interpreter):
    x = make(16, 8).requires_grad_()
    y = tritonfunc.jit(lambda x: torch.softmax(x.sin(), -1))(x)
    with tritonfunc.record_launches() as rec:
        y.square().sum().backward()
    assert rec.torch_calls == 0 and rec.kernels >= 1
    want = torch.autograd.grad(torch.softmax(x.sin(), -1).square().sum(), x)[0]
    assert_same(x.grad, want)


def test_in_place_writes_under_autograd_are_refused_clearly():
    x = make(3).requires_grad_()
    buffer = torch.zeros(3)
    with pytest.raises(NotImplementedError, match="tritonfunc: .*cannot be recorded by autograd"):
        tritonfunc.jit(lambda x: buffer.add_(1) * x)(x)


# ---------------------------------------------------------------------------------------------
# torch.func around tritonfunc: tritonfunc's own derivative and batching rules.


def f(x):
    return (x.sin() * x).sum()


@pytest.mark.parametrize(
    "name, ours, theirs",
    [
        ("grad_of_jit", lambda x: torch.func.grad(tritonfunc.jit(f))(x[0]), lambda x: torch.func.grad(f)(x[0])),
        (
            "vmap_of_grad",
            lambda x: torch.func.vmap(tritonfunc.grad(f))(x),
            lambda x: torch.func.vmap(torch.func.grad(f))(x),
        ),
        (
            "jacrev_of_vmap",
            lambda x: torch.func.jacrev(tritonfunc.vmap(torch.sin))(x),
            lambda x: torch.func.jacrev(torch.func.vmap(torch.sin))(x),
        ),
        (
            "jvp_of_jit",
            lambda x: torch.func.jvp(tritonfunc.jit(torch.tanh), (x,), (x.cos(),)),
            lambda x: torch.func.jvp(torch.tanh, (x,), (x.cos(),)),
        ),
        (
            "hessian_of_jit",
            lambda x: torch.func.hessian(tritonfunc.jit(f))(x[0]),
            lambda x: torch.func.hessian(f)(x[0]),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_torch_func_transforms_over_tritonfunc(backend, name, ours, theirs):
    x = make(3, 4)
    assert_same(ours(x), theirs(x))


# ---------------------------------------------------------------------------------------------
# torch.compile around tritonfunc: one custom op in its graph.

STEP = tritonfunc.vmap(tritonfunc.grad(f))


@pytest.mark.parametrize("compiler", ["eager", "aot_eager", "inductor"])
def test_torch_compile_fullgraph_around_a_transform(interpreter, compiler):
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: STEP(x) * 2, fullgraph=True, backend=compiler)
    x = make(3, 4)
    assert_same(compiled(x), torch.func.vmap(torch.func.grad(f))(x) * 2)


def test_torch_compile_backward_through_a_tritonfunc_call(interpreter):
    torch._dynamo.reset()
    fused = tritonfunc.jit(lambda x: (x.sin() * x).sum(-1))
    compiled = torch.compile(lambda x: fused(x).square().sum(), fullgraph=True, backend="aot_eager")
    x = make(3, 4).requires_grad_()
    got = torch.autograd.grad(compiled(x), x)
    assert_same(got, torch.autograd.grad((x.sin() * x).sum(-1).square().sum(), x))


def test_transforms_made_inside_a_compiled_function_say_what_to_do():
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: tritonfunc.grad(f)(x), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="create tritonfunc transforms outside the function torch.compile compiles"):
        compiled(make(4))


# ---------------------------------------------------------------------------------------------
# make_fx around tritonfunc: each call is recorded as one tritonfunc::call op, which runs again.


def _vjp_fn():
    _, vjp_fn = tritonfunc.vjp(lambda a: a.exp().sum(), make(4, seed=2))
    return lambda ct: vjp_fn(ct)


@pytest.mark.parametrize(
    "build, shape",
    [
        pytest.param(lambda: tritonfunc.vmap(torch.sin), (4, 3), id="vmap"),
        pytest.param(lambda: tritonfunc.jacrev(tritonfunc.jacrev(lambda a: (a.sin() * a).sum())), (4,), id="jacrev2"),
        pytest.param(_vjp_fn, (), id="vjp_fn"),
    ],
)
def test_make_fx_records_a_replayable_call(backend, build, shape):
    from torch.fx.experimental.proxy_tensor import make_fx

    f = build()
    graph = make_fx(f)(make(*shape))
    assert any("tritonfunc.call" in str(n.target) for n in graph.graph.nodes)
    assert_same(graph(make(*shape, seed=1)), f(make(*shape, seed=1)))


def test_forward_mode_dual_tensors_keep_their_tangents(backend):
    """torch.autograd.forward_ad duals that do not require grad: the tangent goes through the
    call's jvp (the interpreter ran the raw kernels and returned no tangent)."""
    import torch.autograd.forward_ad as fwAD

    x, t = make(3), make(3, seed=1)
    f = lambda a: a.sin() * 2  # noqa: E731
    for transform in (tritonfunc.jit(f), tritonfunc.vmap(f)):
        with fwAD.dual_level():
            out = fwAD.unpack_dual(transform(fwAD.make_dual(x, t)))
        assert_same(out.primal, f(x))
        assert out.tangent is not None
        assert_same(out.tangent, 2 * x.cos() * t)
