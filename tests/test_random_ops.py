"""Random operators: every one torch.func handles, under jit, vmap's three randomness modes, and the
autodiff transforms.

tritonfunc draws elementwise distributions with Triton's Philox generator and the rest through
torch with a generator seeded from the same per-run seeds, so values never equal torch's.  What is
pinned instead: distributions (mean, variance, support at a fixed seed), the structure of vmap's
modes ("same": one draw for the batch; "different": independent rows), torch.func's errors word
for word, repeatability under torch.manual_seed, fresh draws at every run of a graph traced once
(seeds are drawn when a graph runs, not when it is traced), a forward and its backward seeing the
same draws, and derivatives through draws as torch's (zero for sampled values, the mask for
dropout, the reparameterised gradient for gamma).

Philox kernels cost ~7 ms per program in the interpreter: sizes stay small.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.func
import torch.nn.functional as F
from vmap_helpers import assert_same_error

import tritonfunc
from tritonfunc.api import run_graph
from tritonfunc.graph import Seed
from tritonfunc.trace import trace

N = 4096  # samples per distribution check: the standard error of a mean is sigma / 64
B = 6


def moments(x: torch.Tensor) -> tuple[float, float]:
    x = x.double().flatten()
    return x.mean().item(), x.var().item()


def assert_moments(x, mean, var, sigmas=5.0, var_tol=0.15):
    got_mean, got_var = moments(x)
    assert abs(got_mean - mean) < sigmas * math.sqrt(var / x.numel()), (got_mean, mean)
    assert abs(got_var - var) < var_tol * var, (got_var, var)


# ---------------------------------------------------------------------------------------------
# Distributions, at a fixed seed.

DISTRIBUTIONS = [
    ("uniform_", lambda x: x.uniform_(2.0, 5.0), 3.5, 0.75, (2.0, 5.0)),
    ("normal_", lambda x: x.normal_(1.0, 2.0), 1.0, 4.0, None),
    ("normal_tensor_mean", lambda x: torch.normal(x + 1.0, 2.0), 1.0, 4.0, None),
    ("normal_tensor_std", lambda x: torch.normal(-1.0, x + 0.5), -1.0, 0.25, None),
    ("normal_float_float", lambda x: torch.normal(0.5, 3.0, (N,), dtype=x.dtype), 0.5, 9.0, None),
    ("randn_like", lambda x: torch.randn_like(x), 0.0, 1.0, None),
    ("rand", lambda x: torch.rand(N, dtype=x.dtype), 0.5, 1 / 12, (0.0, 1.0)),
    ("bernoulli_float", lambda x: x.bernoulli_(0.3), 0.3, 0.21, (0.0, 1.0)),
    ("bernoulli_tensor_p", lambda x: torch.bernoulli(x + 0.8), 0.8, 0.16, (0.0, 1.0)),
    ("exponential_", lambda x: x.exponential_(2.0), 0.5, 0.25, (0.0, math.inf)),
    ("geometric_", lambda x: x.geometric_(0.3), 1 / 0.3, 0.7 / 0.09, (1.0, math.inf)),
    ("log_normal_", lambda x: x.log_normal_(0.5, 0.4).log(), 0.5, 0.16, None),
    ("randint", lambda x: torch.randint(3, 9, (N,)).double(), 5.5, (6**2 - 1) / 12, (3, 8)),
    ("random_", lambda x: x.random_(-2, 4), 0.5, (6**2 - 1) / 12, (-2, 3)),
    ("dropout_kept", lambda x: F.dropout(x + 1, 0.25), 1.0, 1 / 3, (0.0, 4 / 3)),
    ("alpha_dropout_keeps_moments", lambda x: F.alpha_dropout(torch.randn_like(x), 0.2, True), 0.0, 1.0, None),
]


@pytest.mark.parametrize("name, draw, mean, var, support", DISTRIBUTIONS, ids=[d[0] for d in DISTRIBUTIONS])
def test_distribution(backend, name, draw, mean, var, support):
    torch.manual_seed(0)
    out = tritonfunc.jit(draw)(torch.zeros(N, dtype=torch.float64))
    assert out.shape == (N,)
    assert_moments(out, mean, var)
    if support is not None:
        assert support[0] <= out.min() and out.max() <= support[1]
        if isinstance(support[0], int):  # integer draws: every value of the range, about equally often
            counts = torch.bincount((out - support[0]).long())
            assert len(counts) == support[1] - support[0] + 1 and counts.min() > 0.8 * N / len(counts)


def test_cauchy_median_and_quartiles(backend):
    torch.manual_seed(0)
    out = tritonfunc.jit(lambda x: x.cauchy_(1.0, 2.0))(torch.zeros(N, dtype=torch.float64))
    assert abs(out.median().item() - 1.0) < 0.15
    assert abs(((out - 1).abs() < 2).double().mean().item() - 0.5) < 0.05  # half within one scale


def test_feature_dropout_drops_whole_channels(backend):
    x = torch.ones(64, 8, 5)
    out = tritonfunc.jit(lambda x: F.dropout1d(x, 0.5))(x)
    per_channel = out.amax(-1)
    assert ((out == per_channel[..., None]).all()) and set(per_channel.unique().tolist()) <= {0.0, 2.0}
    assert 0.35 < (per_channel > 0).float().mean().item() < 0.65


def test_permutation_and_multinomial(backend):
    torch.manual_seed(0)
    perm, picks = tritonfunc.jit(lambda w: (torch.randperm(10), torch.multinomial(w, 4)))(torch.rand(3, 10))
    assert sorted(perm.tolist()) == list(range(10))
    assert picks.shape == (3, 4) and all(len(set(r.tolist())) == 4 for r in picks)


def test_argument_errors_are_torchs(backend):
    for f in [
        lambda x: x.normal_(0.0, -1.0),
        lambda x: x.uniform_(2.0, 1.0),
        lambda x: x.bernoulli_(2.0),
        lambda x: x.exponential_(0.0),
        lambda x: x.geometric_(1.5),
        lambda x: x.log_normal_(0.0, -1.0),
        lambda x: x.cauchy_(0.0, -1.0),
        lambda x: torch.normal(x, -1.0),
        lambda x: x.random_(5, 2),
    ]:
        assert_same_error(lambda: tritonfunc.jit(f)(torch.zeros(3)), lambda: f(torch.zeros(3)))


# ---------------------------------------------------------------------------------------------
# Seeds: drawn when a graph runs, from torch's generator or the one given.


def test_a_graph_traced_once_draws_anew_at_each_run(backend):
    """The seeds are graph constants that stand for draws, so replaying one graph (as a trace
    cache will) gives fresh numbers, and the same numbers after torch.manual_seed."""
    x = torch.zeros(8)
    graph = trace(lambda x: x + torch.rand(8), (x,)).graph
    assert any(isinstance(c, Seed) for c in graph.const_values)
    torch.manual_seed(1)
    first, second = run_graph(graph, [x])[0], run_graph(graph, [x])[0]
    torch.manual_seed(1)
    again = run_graph(graph, [x])[0]
    assert not torch.equal(first, second)
    assert torch.equal(first, again)


def test_a_generator_argument_is_used_and_advanced(backend):
    g = torch.Generator().manual_seed(3)
    f = tritonfunc.jit(lambda x: x + torch.rand(8, generator=g) + torch.randint(0, 5, (8,), generator=g))
    x = torch.zeros(8)
    state = torch.get_rng_state()
    first, second = f(x), f(x)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is not touched
    g.manual_seed(3)
    assert torch.equal(f(x), first) and not torch.equal(first, second)


def test_forward_and_vjp_fn_see_the_same_draws(backend):
    x = torch.linspace(1, 2, 64, dtype=torch.float64)
    out, vjp_fn = tritonfunc.vjp(lambda x: F.dropout(x, 0.5), x)
    (g,) = vjp_fn(torch.ones_like(x))
    assert torch.equal(g, (out != 0).double() * 2)
    out, jvp_fn = tritonfunc.linearize(lambda x: x * torch.rand_like(x), x)
    assert torch.allclose(jvp_fn(torch.ones_like(x)), out / x)


# ---------------------------------------------------------------------------------------------
# Derivatives through draws, as torch's.

ZERO_DERIVATIVE = [
    lambda s: torch.normal(s, 1.0),
    lambda s: torch.normal(0.0, s),
    lambda s: torch.normal(s, s),
    lambda s: (s * 2).normal_(),
    lambda s: (s * 2).uniform_(),
    lambda s: torch.bernoulli(s / 4),
    lambda s: (s * 1).exponential_(),
    lambda s: torch.poisson(s),
]


@pytest.mark.parametrize("f", ZERO_DERIVATIVE)
def test_sampled_values_have_no_derivative(backend, f):
    x = torch.rand(5, dtype=torch.float64) + 0.5
    t = torch.ones_like(x)
    assert torch.equal(tritonfunc.grad(lambda s: f(s).sum())(x), torch.func.grad(lambda s: f(s).sum())(x))
    assert torch.equal(tritonfunc.jvp(lambda s: f(s).sum(), (x,), (t,))[1], torch.zeros((), dtype=torch.float64))


def test_derivatives_through_draws_use_the_drawn_values(backend):
    """Dropout's derivative is its mask, rrelu's its slopes, gamma's the reparameterised one at the
    sample: the backward run sees the forward's draws."""
    x = torch.linspace(0.5, 2, 32, dtype=torch.float64)
    for f, want in [
        (lambda a: F.dropout(a, 0.5), lambda a, out: out / a),
        (lambda a: F.rrelu(-a, training=True), lambda a, out: out / a),
        (lambda a: torch._standard_gamma(a), lambda a, out: torch._standard_gamma_grad(a, out)),
    ]:
        torch.manual_seed(0)
        out = tritonfunc.jit(f)(x)
        torch.manual_seed(0)
        g = tritonfunc.grad(lambda a: f(a).sum())(x)
        torch.testing.assert_close(g, want(x, out))


# ---------------------------------------------------------------------------------------------
# vmap's randomness modes.

OPS = {
    "rand": lambda x: torch.rand(4),
    "randn_like": lambda x: torch.randn_like(x),
    "normal_float_float": lambda x: torch.normal(0.0, 1.0, (4,)),
    "normal_tensor": lambda x: torch.normal(x, 1.0),
    "normal_": lambda x: x.normal_(),
    "uniform_": lambda x: x.uniform_(),
    "bernoulli_tensor": lambda x: torch.bernoulli(x),
    "bernoulli_p": lambda x: torch.bernoulli(x, 0.3),
    "bernoulli_": lambda x: x.bernoulli_(0.3),
    "exponential_": lambda x: x.exponential_(),
    "randint": lambda x: torch.randint(0, 1000, (4,)),
    "randint_like": lambda x: torch.randint_like(x, 1000),
    "random_": lambda x: x.random_(0, 1000),
    "multinomial": lambda x: torch.multinomial(x, 2),
    "randperm": lambda x: torch.randperm(4),
    "dropout": lambda x: F.dropout(x, 0.5),
    "dropout1d": lambda x: F.dropout1d(x.reshape(2, 2), 0.5),
    "alpha_dropout": lambda x: F.alpha_dropout(x, 0.5, True),
    "feature_alpha_dropout": lambda x: F.feature_alpha_dropout(x.reshape(1, 2, 2), 0.5, True),
    "poisson": lambda x: torch.poisson(x * 10),
    "rrelu": lambda x: F.rrelu(x, training=True),
    "rrelu_eval": lambda x: F.rrelu(x),
    "fresh_normal_": lambda x: torch.empty(4).normal_(),
    "randn_out": lambda x: torch.randn(4, out=torch.empty(4)),  # refused before it reaches ATen
    "normal_out_captured": lambda x: torch.normal(_CAPTURED, _CAPTURED, out=torch.empty(4)),
    "bernoulli_out_captured": lambda x: torch.bernoulli(_CAPTURED, out=torch.empty(4)),
    "rrelu_captured": lambda x: F.rrelu(_CAPTURED),  # no traced operand: refused all the same
}
_CAPTURED = torch.rand(4)


def _vmapped(m, f, randomness, batched: bool):
    x = torch.rand(B, 4) * 0.8 + 0.1  # valid probabilities
    if batched:
        return m.vmap(f, randomness=randomness)(x)
    # the op sees an unbatched tensor; the output is made batched by adding a batched zero
    g = lambda a, y: (lambda r: r + a.sum() * 0 if r.dtype.is_floating_point else r)(f(y))  # noqa: E731
    return m.vmap(g, in_dims=(0, None), randomness=randomness)(x, x[0].clone())


def _outcome(m, f, randomness, batched):
    try:
        out = _vmapped(m, f, randomness, batched)
    except Exception as e:  # noqa: BLE001
        return type(e), str(e)
    return out.shape, out.dtype


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("randomness", ["error", "same", "different"])
@pytest.mark.parametrize("name", list(OPS))
def test_randomness_mode_matches_torch_func(name, randomness, batched):
    """torch.func's verdict for every op, mode, and batched or unbatched operand: the same error
    (type and words), or a result of the same shape and dtype."""
    tritonfunc.set_backend("torch")  # structure only: the kernels are checked below
    try:
        got = _outcome(tritonfunc, OPS[name], randomness, batched)
    finally:
        tritonfunc.set_backend(None)
    assert got == _outcome(torch.func, OPS[name], randomness, batched)


def _rows(out):
    return {tuple(r.flatten().tolist()) for r in out}


@pytest.mark.parametrize(
    "name", ["rand", "normal_", "uniform_", "randint", "random_", "dropout", "exponential_", "fresh_normal_"]
)
def test_same_gives_one_draw_and_different_independent_rows(interpreter, name):
    f = OPS[name]
    torch.manual_seed(0)
    same = _vmapped(tritonfunc, f, "same", batched=True)
    assert len(_rows(same if name != "dropout" else same != 0)) == 1
    if name != "fresh_normal_":  # torch.func refuses "different" in-place draws into a fresh tensor
        different = _vmapped(tritonfunc, f, "different", batched=True)
        assert len(_rows(different)) == B


def test_same_randomness_chunks_repeat_the_draws(interpreter):
    """As torch.func: the generator state is restored before each chunk."""
    x = torch.zeros(7)
    for f in (lambda a: a + torch.rand(3), lambda a: a + torch.randint(0, 10**6, (3,))):
        out = tritonfunc.vmap(f, randomness="same", chunk_size=3)(x)
        assert len(_rows(out)) == 1
        out = tritonfunc.vmap(f, randomness="different", chunk_size=3)(x)
        assert len(_rows(out)) == 7


def test_in_place_draw_into_a_batched_input_is_written_back(interpreter):
    x = torch.zeros(B, 5)
    out = tritonfunc.vmap(lambda a: a.uniform_(), randomness="different")(x)
    assert out is x and len(_rows(x)) == B and (x > 0).all()
    x = torch.zeros(B, 5)
    tritonfunc.vmap(lambda a: a.normal_(), randomness="same")(x)
    assert len(_rows(x)) == 1 and x.std() > 0


def test_jacobians_through_draws(backend):
    """jacrev's vmap over vjp_fn replays the forward's draws (no randomness flag needed, as in
    torch.func); jacfwd and an outer vmap draw anew under their randomness flags."""
    x = torch.linspace(1, 2, 6, dtype=torch.float64)
    j = tritonfunc.jacrev(lambda a: F.dropout(a, 0.5))(x)
    assert torch.equal(j, torch.diag(j.diagonal())) and set(j.diagonal().tolist()) <= {0.0, 2.0}
    j = tritonfunc.jacfwd(lambda a: F.dropout(a, 0.5), randomness="same")(x)
    assert torch.equal(j, torch.diag(j.diagonal())) and set(j.diagonal().tolist()) <= {0.0, 2.0}
    rows = tritonfunc.vmap(tritonfunc.jacrev(lambda a: a * torch.rand_like(a)), randomness="different")(x.expand(4, 6))
    assert rows.shape == (4, 6, 6) and len(_rows(rows)) == 4
    check = lambda m: m.jacfwd(lambda a: F.dropout(a, 0.5))(x)  # noqa: E731  (error mode)
    assert_same_error(lambda: check(tritonfunc), lambda: check(torch.func))


@pytest.mark.parametrize(
    "draw",
    [
        lambda x, c: torch.normal(c, c, out=torch.empty(4)),  # its result was the unfilled tensor
        lambda x, c: torch.normal(x, c, out=torch.empty(4)),
        lambda x, c: torch.bernoulli(c, out=c.clone()),
    ],
    ids=["normal_captured", "normal_traced", "bernoulli"],
)
def test_a_draw_into_an_out_argument_is_refused(draw):
    """tritonfunc does not write random draws into out= tensors: refused, naming the operator."""
    c = torch.rand(4)
    with pytest.raises(NotImplementedError, match=r"tritonfunc: aten\.\w+\.\w+ writes into its out= argument"):
        tritonfunc.jit(lambda x: draw(x, c) + x)(torch.ones(4))
