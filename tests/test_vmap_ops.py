"""vmap over per-example reductions, shape operations and nested vmaps, against torch.func.vmap."""

from __future__ import annotations

import pytest
import torch
import torch.func
import torch.nn.functional as F
from vmap_helpers import check_vmap, make

import tritonfunc

B, N = 4, 6

LN_W, LN_B = make(N, seed=7), make(N, seed=8)

REDUCTIONS = {
    "sum": lambda x: x.sum(),
    "sum-dim0": lambda x: x.sum(0),
    "amax": lambda x: x.amax(-1),
    "mean-var": lambda x: (x.mean(-1), x.var(-1)),
    "softmax-last": lambda x: x.softmax(-1),
    "softmax-first": lambda x: x.softmax(0),
    "log_softmax": lambda x: F.log_softmax(x, -1),
    "logsumexp": lambda x: x.logsumexp(-1),
    "layer_norm": lambda x: F.layer_norm(x, (N,)),
    "layer_norm-affine": lambda x: F.layer_norm(x, (N,), LN_W, LN_B),
    "normalise": lambda x: (x - x.mean()) / (x.pow(2).sum().sqrt() + 1.0),
}


@pytest.mark.parametrize("name", REDUCTIONS)
def test_per_example_reduction(backend, name):
    check_vmap(REDUCTIONS[name], make(B, 3, N))


@pytest.mark.parametrize("name", ["sum", "softmax-last", "layer_norm-affine"])
def test_per_example_reduction_mapped_over_last_axis(backend, name):
    check_vmap(REDUCTIONS[name], make(3, N, B), in_dims=-1, out_dims=-1 if name != "sum" else 0)


SHAPE_OPS = {
    "reshape": lambda x: x.reshape(2, 9) * 2,
    "flatten": lambda x: x.flatten().exp(),
    "transpose": lambda x: x.T.sin(),
    "permute-reshape": lambda x: x.reshape(3, 3, 2).permute(2, 0, 1).reshape(6, 3),
    "slice": lambda x: x[1:, ::2] * x[:2, 1::2],
    "select": lambda x: x[0, :3] + x[:, -1],
    "unsqueeze-expand": lambda x: x[:, None, :].expand(3, 2, N) + x[None, 0:2, :].unsqueeze(-1).squeeze(-1),
    "cat": lambda x: torch.cat([x, x[:1] * 2, x[1:].exp()]),
    "cat-dim1": lambda x: torch.cat([x, x.T[:3]], dim=1),
    "stack": lambda x: torch.stack([x, x.cos()], dim=1),
    "split": lambda x: x.split([2, 4], dim=1)[1] * 2,
}


@pytest.mark.parametrize("name", SHAPE_OPS)
def test_per_example_shape_ops(backend, name):
    check_vmap(SHAPE_OPS[name], make(B, 3, N))


def test_shape_ops_mixing_batched_and_unbatched(backend):
    y = make(3, N, seed=1)
    check_vmap(lambda x, y: torch.cat([x, y]), make(B, 3, N), y, in_dims=(0, None))
    check_vmap(lambda x, y: torch.stack([y, x]), make(B, 3, N), y, in_dims=(0, None))
    check_vmap(lambda x, y: (x.T @ y).softmax(-1), make(B, 3, N), y, in_dims=(0, None))


def test_matmul_forms(backend):
    check_vmap(lambda a, b: a @ b, make(B, 3, N), make(B, N, 2, seed=1))
    check_vmap(lambda a, b: a @ b, make(B, 3, N), make(N, 2, seed=1), in_dims=(0, None))
    check_vmap(lambda a, b: a @ b, make(3, N), make(B, N, 2, seed=1), in_dims=(None, 0))
    check_vmap(lambda a, b: a @ b, make(B, N), make(B, N, seed=1))
    check_vmap(lambda m, v: m @ v, make(3, N), make(B, N, seed=1), in_dims=(None, 0))
    check_vmap(lambda a, b: torch.outer(a, b), make(B, N), make(B, 3, seed=1))


def test_vector_times_matrix(backend):
    check_vmap(lambda v, m: v @ m, make(B, N), make(N, 3, seed=1), in_dims=(0, None))


# ---------------------------------------------------------------------------------------------
# Nesting.


def nested(vmap, f, dims):
    for d in dims:
        f = vmap(f, in_dims=d)
    return f


def example(x):
    return (x.sin() * x.sum()).softmax(-1)


@pytest.mark.parametrize("dims", [(0, 0, 0), (1, 2, 0), (-1, 0, 1)], ids=str)
def test_three_nested_vmaps_with_different_batch_sizes(backend, dims):
    x = make(2, 3, 4, N)
    got = nested(tritonfunc.vmap, example, dims)(x)
    want = nested(torch.func.vmap, example, dims)(x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_nested_vmaps_over_different_arguments(backend):
    """Outer maps the rows of W, inner the rows of X: an all-pairs score matrix."""
    f = lambda x, w: (x * w).sum().tanh()
    got = tritonfunc.vmap(tritonfunc.vmap(f, in_dims=(0, None)), in_dims=(None, 0))(make(B, N), make(3, N, seed=1))
    want = torch.func.vmap(torch.func.vmap(f, in_dims=(0, None)), in_dims=(None, 0))(make(B, N), make(3, N, seed=1))
    assert got.shape == (3, B)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_nested_vmap_closing_over_the_outer_example(backend):
    y = make(3, N, seed=1)
    ours = lambda a: tritonfunc.vmap(lambda b: (a * b).softmax(-1))(y)
    ref = lambda a: torch.func.vmap(lambda b: (a * b).softmax(-1))(y)
    check_vmap(ours, make(B, N), ref=ref)
    ours = lambda a: tritonfunc.vmap(lambda b: a.sum())(y)
    ref = lambda a: torch.func.vmap(lambda b: a.sum())(y)
    check_vmap(ours, make(B, N), ref=ref)


def test_nested_vmap_with_out_dims_and_chunk_size(backend):
    y = make(3, N, seed=1)
    ours = lambda a: tritonfunc.vmap(lambda b: (a * b, b.sum()), out_dims=(1, 0), chunk_size=2)(y)
    ref = lambda a: torch.func.vmap(lambda b: (a * b, b.sum()), out_dims=(1, 0), chunk_size=2)(y)
    check_vmap(ours, make(B, N), ref=ref, out_dims=(-1, 0), chunk_size=3)


def test_vmap_inside_and_around_jit(backend):
    x = make(B, N)
    torch.testing.assert_close(tritonfunc.jit(lambda x: tritonfunc.vmap(example)(x))(x), torch.func.vmap(example)(x))
    torch.testing.assert_close(tritonfunc.vmap(tritonfunc.jit(example))(x), torch.func.vmap(example)(x))
