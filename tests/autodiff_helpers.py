"""The autodiff oracle shared by the test_autodiff*.py files: torch.func on the same function.

`check_transforms(f, *args)` runs jvp (random tangents), vjp (random cotangents) and, for a scalar
output, grad, through tritonfunc and through torch.func, and asserts that every result leaf agrees
in type, shape, dtype and value.  Float64 tolerances are tight, so a rule computed in float32, or a
wrong derivative anywhere, fails.
"""

from __future__ import annotations

import functools

import helpers
import torch
import torch.func
from torch.utils import _pytree as pytree

import tritonfunc

# (rtol, atol) per floating dtype.
TOLERANCES = {torch.float64: (1e-7, 1e-9), torch.float32: (1e-5, 1e-5)}


def make(*shape, low=-2.0, high=2.0, seed=0, dtype=torch.float64):
    """Uniform values in [low, high), reproducible per (shape, seed)."""
    g = torch.Generator().manual_seed(seed + 1000 * len(shape) + sum(shape))
    return (torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low).to(dtype)


def random_like(tree, seed: int):
    """A pytree of standard-normal tensors with the structure, shapes and dtypes of `tree`."""
    g = torch.Generator().manual_seed(seed)
    return pytree.tree_map(
        lambda t: torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype),
        tree,
    )


# The shared comparison, with the tolerances above (derivatives accumulate more rounding).
assert_same = functools.partial(helpers.assert_same, tolerances=TOLERANCES)


def in_argnums(f, args: tuple, argnums: tuple):
    """f as a function of args[argnums] only, the other arguments fixed."""

    def g(*diff):
        full = list(args)
        for i, x in zip(argnums, diff):
            full[i] = x
        return f(*full)

    return g


def check_transforms(f, *args, argnums=None, seed: int = 0, rtol=None, atol=None):
    """Compares tritonfunc's jvp, vjp and (scalar outputs) grad of `f` at `args` with torch.func's.

    `argnums` (default: every floating-point tensor argument) picks the differentiated arguments;
    the others (int targets, flags, ...) are passed through unchanged.  The output may be any
    pytree of tensors; grad is checked when it is a single 0-d tensor.
    """
    if argnums is None:
        argnums = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point())
    argnums = tuple(argnums)
    primals = tuple(args[i] for i in argnums)
    g = in_argnums(f, args, argnums)

    tol = {"rtol": rtol, "atol": atol}

    # Forward mode: a random tangent per differentiated argument.
    tangents = random_like(primals, seed + 1)
    want_out, want_tan = torch.func.jvp(g, primals, tangents)
    got_out, got_tan = tritonfunc.jvp(g, primals, tangents)
    assert_same(got_out, want_out, "jvp primal output", **tol)
    assert_same(got_tan, want_tan, "jvp tangent output", **tol)

    # Reverse mode: a random cotangent per output leaf.
    want_out, want_fn = torch.func.vjp(g, *primals)
    got_out, got_fn = tritonfunc.vjp(g, *primals)
    assert_same(got_out, want_out, "vjp primal output", **tol)
    cotangents = random_like(want_out, seed + 2)
    assert_same(got_fn(cotangents), want_fn(cotangents), "vjp cotangents", **tol)

    # grad, straight on f with argnums, for scalar outputs.
    if isinstance(want_out, torch.Tensor) and want_out.dim() == 0:
        want = torch.func.grad(f, argnums=argnums)(*args)
        got = tritonfunc.grad(f, argnums=argnums)(*args)
        assert_same(got, want, "grad", **tol)


def check_second_order(f, x, seed: int = 0):
    """Forward-over-reverse (jvp of grad: grad and H v) and reverse-over-reverse (vjp of grad: H^T v)
    of a scalar function `f` of one tensor, against torch.func.  Exercises every rule's own
    derivative: the rules are written with primitives so that they differentiate again."""
    import torch.func as tf

    v = random_like(x, seed + 3)
    got = tritonfunc.jvp(tritonfunc.grad(f), (x,), (v,))
    want = tf.jvp(tf.grad(f), (x,), (v,))
    assert_same(got, want, "jvp(grad(f))")
    _, got_fn = tritonfunc.vjp(tritonfunc.grad(f), x)
    _, want_fn = tf.vjp(tf.grad(f), x)
    assert_same(got_fn(v), want_fn(v), "vjp(grad(f))")
