"""vmap composed with grad, vjp, jvp and linearize, against the same composition in torch.func;
and the launch count of the classic one, per-sample gradients of a row-wise cross-entropy."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
import torch.func
import torch.nn.functional as F
from vmap_helpers import assert_trees_close, make, nbytes

import tritonfunc

B, D, C = 6, 5, 4


def linear_loss(w, x, y):
    return (x @ w - y) ** 2


def test_per_sample_gradients_of_a_linear_model(backend):
    w, x, y = make(D), make(B, D, seed=1), make(B, seed=2)
    got = tritonfunc.vmap(tritonfunc.grad(linear_loss), in_dims=(None, 0, 0))(w, x, y)
    want = torch.func.vmap(torch.func.grad(linear_loss), in_dims=(None, 0, 0))(w, x, y)
    assert got.shape == (B, D)
    assert_trees_close(got, want)


def test_per_sample_gradients_of_a_linear_model_are_one_launch(interpreter):
    w, x, y = make(D), make(B, D, seed=1), make(B, seed=2)
    with tritonfunc.record_launches() as rec:
        tritonfunc.vmap(tritonfunc.grad(linear_loss), in_dims=(None, 0, 0))(w, x, y)
    assert rec.count == 1


def targets(seed=0):
    return torch.randint(0, C, (B,), generator=torch.Generator().manual_seed(seed))


def cross_entropy_xW(W, x, t):
    return F.cross_entropy((x @ W)[None], t[None])


def cross_entropy_rowW(W, x, t):
    return F.cross_entropy(x[None] @ W, t[None])


def test_per_sample_gradients_of_softmax_cross_entropy(backend):
    W, x, t = make(D, C), make(B, D, seed=1), targets()
    got = tritonfunc.vmap(tritonfunc.grad(cross_entropy_xW), in_dims=(None, 0, 0))(W, x, t)
    want = torch.func.vmap(torch.func.grad(cross_entropy_xW), in_dims=(None, 0, 0))(W, x, t)
    assert_trees_close(got, want)


def test_per_sample_gradients_of_softmax_cross_entropy_row_times_matrix(backend):
    W, x, t = make(D, C), make(B, D, seed=1), targets()
    for argnums in (0, (0, 1)):
        got = tritonfunc.vmap(tritonfunc.grad(cross_entropy_rowW, argnums), in_dims=(None, 0, 0))(W, x, t)
        want = torch.func.vmap(torch.func.grad(cross_entropy_rowW, argnums), in_dims=(None, 0, 0))(W, x, t)
        assert_trees_close(got, want)


def row_cross_entropy(z, t):
    return F.cross_entropy(z[None], t[None])


def test_per_row_cross_entropy_gradient_is_one_launch(interpreter):
    z, t = make(B, C), targets()
    with tritonfunc.record_launches() as rec:
        got = tritonfunc.vmap(tritonfunc.grad(row_cross_entropy))(z, t)
    assert_trees_close(got, torch.func.vmap(torch.func.grad(row_cross_entropy))(z, t))
    assert rec.count == 1
    assert rec.bytes_read + rec.bytes_written <= 1.5 * nbytes(z, t, got)


def test_vmap_grad_and_value(backend):
    f = lambda z, t: (row_cross_entropy(z, t), z.softmax(-1))
    z, t = make(B, C), targets()
    got = tritonfunc.vmap(tritonfunc.grad_and_value(f, has_aux=True))(z, t)
    want = torch.func.vmap(torch.func.grad_and_value(f, has_aux=True))(z, t)
    assert_trees_close(got, want)


def example(a):
    return a.sin() * a.sum()


def test_vmap_of_a_vjp_fn(backend):
    a, cts = make(D), make(B, D, seed=1)
    _, ours = tritonfunc.vjp(example, a)
    _, theirs = torch.func.vjp(example, a)
    assert_trees_close(tritonfunc.vmap(ours)(cts), torch.func.vmap(theirs)(cts))
    # Over the standard basis: the Jacobian, as jacrev builds it.
    jac = tritonfunc.vmap(ours)(torch.eye(D, dtype=torch.float64))[0]
    assert_trees_close(jac, torch.func.jacrev(example)(a))


def test_vmap_of_vjp_with_batched_primals_and_cotangents(backend):
    xs, cts = make(B, D), make(B, D, seed=1)
    got = tritonfunc.vmap(lambda p, c: tritonfunc.vjp(example, p)[1](c)[0])(xs, cts)
    want = torch.func.vmap(lambda p, c: torch.func.vjp(example, p)[1](c)[0])(xs, cts)
    assert_trees_close(got, want)


def test_batched_jvp(backend):
    a, vs = make(D), make(B, D, seed=1)
    got = tritonfunc.vmap(lambda v: tritonfunc.jvp(example, (a,), (v,))[1])(vs)
    want = torch.func.vmap(lambda v: torch.func.jvp(example, (a,), (v,))[1])(vs)
    assert_trees_close(got, want)
    # The primal output does not depend on the batch: it is broadcast.
    got = tritonfunc.vmap(lambda v: tritonfunc.jvp(example, (a,), (v,)))(vs)
    want = torch.func.vmap(lambda v: torch.func.jvp(example, (a,), (v,)))(vs)
    assert_trees_close(got, want)


def test_vmap_of_a_linearized_function(backend):
    a, vs = make(D), make(B, D, seed=1)
    _, ours = tritonfunc.linearize(example, a)
    _, theirs = torch.func.linearize(example, a)
    assert_trees_close(tritonfunc.vmap(ours)(vs), torch.func.vmap(theirs)(vs))


def test_grad_of_a_function_using_vmap(backend):
    def loss(vmap):
        return lambda w, xs: vmap(lambda r: (r * w).sin().sum())(xs).pow(2).sum()

    w, xs = make(D), make(B, D, seed=1)
    for argnums in (0, 1, (0, 1)):
        got = tritonfunc.grad(loss(tritonfunc.vmap), argnums)(w, xs)
        want = torch.func.grad(loss(torch.func.vmap), argnums)(w, xs)
        assert_trees_close(got, want)


def test_nested_vmap_of_grad(backend):
    f = lambda r: example(r).softmax(-1).pow(2).sum()
    x = make(2, 3, D)
    got = tritonfunc.vmap(tritonfunc.vmap(tritonfunc.grad(f)))(x)
    want = torch.func.vmap(torch.func.vmap(torch.func.grad(f)))(x)
    assert_trees_close(got, want)


def test_per_sample_gradients_batch_size_zero(backend):
    """torch.func (2.x) fails here in autograd (IndexError from select); the answer is an empty
    batch of gradients."""
    w, x, y = make(D), make(0, D), make(0)
    got = tritonfunc.vmap(tritonfunc.grad(linear_loss), in_dims=(None, 0, 0))(w, x, y)
    assert got.shape == (0, D) and got.dtype == torch.float64


def test_grad_of_a_vmap_over_an_empty_batch():
    """In a subprocess: the interpreter once crashed (segfault) reducing over a zero-size axis,
    which would take the test session down."""
    script = textwrap.dedent(
        """
        import torch, tritonfunc
        tritonfunc.set_backend("interpreter")
        w, xs = torch.randn(5, dtype=torch.float64), torch.randn(0, 5, dtype=torch.float64)
        g = tritonfunc.grad(lambda w: tritonfunc.vmap(lambda r: (r * w).sum())(xs).sum())(w)
        assert torch.equal(g, torch.zeros(5, dtype=torch.float64)), g
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
