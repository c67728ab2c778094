"""chunk_size and the launch structure of vmap: the batch is part of the kernel grid, so a fused
per-example function is one launch for the whole batch, and chunk_size k makes ceil(B/k) of them.

Launch counts and bytes exist only for Triton kernels: those tests force the interpreter.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.func
import torch.nn.functional as F
from vmap_helpers import assert_trees_close, check_vmap, make, nbytes

import tritonfunc

B, N = 5, 8


def elementwise(x):
    return (x.sin() * 2 + 1).abs()


def row_softmax(x):
    return x.softmax(-1)


def row_reduce(x):
    return x - x.sum() * x.amax()


FUNCS = {"elementwise": elementwise, "softmax": row_softmax, "reduction": row_reduce}


@pytest.mark.parametrize("chunk_size", [1, 2, 3, B, B + 3])
def test_chunk_size_gives_torch_func_results(backend, chunk_size):
    w = make(N, seed=1)
    f = lambda x, w: {"s": (x * w).softmax(-1), "m": x.amax(), "w": w * 2}
    check_vmap(f, make(B, N), w, in_dims=(0, None), chunk_size=chunk_size)
    check_vmap(f, make(N, B), w, in_dims=(1, None), out_dims={"s": -1, "m": 0, "w": 0}, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [2, 3])
def test_chunk_size_with_unbatched_out_dim_none(backend, chunk_size):
    """torch.func (2.x) cannot concatenate an out_dim=None output across chunks (TypeError from
    torch.cat); the result must be that of the unchunked vmap."""
    y = make(N, seed=1)
    f = lambda x, y: (x * y, y.sum())
    got = tritonfunc.vmap(f, in_dims=(0, None), out_dims=(0, None), chunk_size=chunk_size)(make(B, N), y)
    want = torch.func.vmap(f, in_dims=(0, None), out_dims=(0, None))(make(B, N), y)
    assert_trees_close(got, want)


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("chunk_size", [1, 2, 3, B, B + 3])
def test_chunk_size_bounds_launches(interpreter, name, chunk_size):
    with tritonfunc.record_launches() as rec:
        check_vmap(FUNCS[name], make(B, N), chunk_size=chunk_size)
    assert rec.count == math.ceil(B / chunk_size)


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("size", [4, 32])
def test_one_launch_without_chunk_size(interpreter, name, size):
    x = make(size, N)
    with tritonfunc.record_launches() as rec:
        out = check_vmap(FUNCS[name], x)
    assert rec.count == 1
    ideal = nbytes(x, out)
    assert ideal <= rec.bytes_read + rec.bytes_written <= 1.5 * ideal


@pytest.mark.parametrize(
    "f",
    [
        lambda x, w: (x * w).softmax(-1),
        lambda x, w: F.layer_norm(x, (N,), w),
        lambda x, w: x - w.sum() * x.amax(),
        lambda x, w: torch.cat([x, x[:3] * w[:3]]),
    ],
    ids=["softmax", "layer_norm", "reduction", "cat"],
)
def test_one_launch_with_an_unbatched_weight_read_once(interpreter, f):
    x, w = make(B, N), make(N, seed=1)
    with tritonfunc.record_launches() as rec:
        out = check_vmap(f, x, w, in_dims=(0, None))
    assert rec.count == 1
    assert rec.bytes_written >= nbytes(out)
    assert rec.bytes_read + rec.bytes_written <= 1.5 * nbytes(x, w, out)


def test_nested_vmap_is_one_launch(interpreter):
    x = make(2, 3, N)
    with tritonfunc.record_launches() as rec:
        got = tritonfunc.vmap(tritonfunc.vmap(row_softmax))(x)
    torch.testing.assert_close(got, torch.func.vmap(torch.func.vmap(row_softmax))(x), rtol=1e-9, atol=1e-12)
    assert rec.count == 1
