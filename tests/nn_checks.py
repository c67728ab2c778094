"""One call that checks an op's lowering under every transform against torch.func: the shared check of
the test_nn_*.py files.

`check_op(f, *args)` runs jit (against eager f), jvp and vjp (random tangents and cotangents), grad for a
scalar output, vmap over a batch of the first differentiated argument, and optionally second order,
each through tritonfunc and torch.func on the same float64 inputs; and asserts that the traced graph
holds no torch call (the op was fused, not run by torch).
"""

from __future__ import annotations

import autodiff_helpers
import torch
import torch.func
from helpers import check
from torch.utils import _pytree as pytree
from vmap_helpers import check_vmap

from tritonfunc.primitives import OPAQUE
from tritonfunc.trace import trace


def opaque_ops(f, *args) -> list[str]:
    """The ops of f's traced graph that run as torch calls."""
    return [n.prim.name for n in trace(f, args, {}).graph.nodes if n.prim.strategy == OPAQUE]


def batch_of(x: torch.Tensor) -> torch.Tensor:
    """Two different versions of x stacked on a new leading axis (two copies for integer tensors)."""
    if not x.is_floating_point():
        return torch.stack([x, x])
    g = torch.Generator().manual_seed(x.numel())
    return torch.stack([x, x + torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype)])


def check_op(
    f, *args, diff=None, batch=None, second_order=False, fused=True, vmap=True, jvp=True, rtol=None, atol=None
):
    """f at args under jit, jvp, vjp, grad (scalar outputs), vmap and (optionally) second order.

    diff: the differentiated argument positions (default: every floating tensor); batch: the argument
    vmap maps over (default: the first differentiated one); jvp=False skips forward mode (for ops whose
    forward mode torch.func lacks: check it against a reference instead).
    """
    if fused:
        assert not opaque_ops(f, *args), f"not fused: {opaque_ops(f, *args)}"
    check(f, *args, rtol=rtol, atol=atol)
    if diff is None:
        diff = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point())
    if diff:
        if jvp:
            autodiff_helpers.check_transforms(f, *args, argnums=diff, rtol=rtol, atol=atol)
        else:
            check_reverse(f, *args, argnums=diff)
    if vmap:
        batch = diff[0] if batch is None else batch
        batched = list(args)
        batched[batch] = batch_of(args[batch])
        in_dims = tuple(0 if i == batch else None for i in range(len(args)))
        check_vmap(f, *batched, in_dims=in_dims, rtol=rtol or 1e-9, atol=atol or 1e-12)
    if second_order:
        i = diff[0]
        weights = autodiff_helpers.random_like(f(*args), seed=7)

        def scalar(x):
            full = list(args)
            full[i] = x
            outs = pytree.tree_leaves(f(*full))
            return sum((o * w).sum() for o, w in zip(outs, pytree.tree_leaves(weights)) if o.is_floating_point())

        autodiff_helpers.check_second_order(scalar, args[i])


def check_reverse(f, *args, argnums):
    """vjp and (scalar outputs) grad only, against torch.func."""
    import tritonfunc

    primals = tuple(args[i] for i in argnums)
    g = autodiff_helpers.in_argnums(f, args, argnums)
    want_out, want_fn = torch.func.vjp(g, *primals)
    got_out, got_fn = tritonfunc.vjp(g, *primals)
    autodiff_helpers.assert_same(got_out, want_out, "vjp primal output")
    cts = autodiff_helpers.random_like(want_out, 2)
    autodiff_helpers.assert_same(got_fn(cts), want_fn(cts), "vjp cotangents")
