"""vmap's randomness flag.  tritonfunc draws from Triton's Philox generator seeded from torch's, so
its streams differ from torch's by design: values are never compared with torch.func's, only
the structure ("same": one draw broadcast; "different": independent rows), the distribution and
repeatability under torch.manual_seed.  (The "error" mode is in test_vmap_errors.py.)

Random kernels are slow in the interpreter (~7 ms per program): sizes stay small.
"""

from __future__ import annotations

import pytest
import torch
import torch.func
import torch.nn.functional as F
from vmap_helpers import check_vmap_error

import tritonfunc

B = 8


def assert_rows_equal(out: torch.Tensor) -> None:
    assert (out == out[:1]).all(), "rows differ under randomness='same'"


def assert_rows_distinct(out: torch.Tensor) -> None:
    rows = {tuple(r.tolist()) for r in out.flatten(1)}
    assert len(rows) == out.shape[0], "rows repeat under randomness='different'"


@pytest.mark.parametrize(
    "f",
    [lambda x: torch.rand(3), lambda x: torch.rand_like(x), lambda x: x * 0 + torch.randn(5, dtype=x.dtype)],
    ids=["rand", "rand_like", "randn"],
)
def test_same_randomness_is_one_draw_for_the_whole_batch(interpreter, f):
    x = torch.zeros(B, 5, dtype=torch.float64)
    out = tritonfunc.vmap(f, randomness="same")(x)
    assert out.shape[0] == B
    assert_rows_equal(out)
    assert out.std() > 0  # an actual draw, not a constant


def test_same_randomness_combines_with_batched_values(interpreter):
    x = torch.arange(B, dtype=torch.float64)[:, None].expand(B, 6)
    out = tritonfunc.vmap(lambda x: x + torch.rand_like(x), randomness="same")(x)
    assert_rows_equal(out - x)
    assert ((out - x >= 0) & (out - x < 1)).all()


@pytest.mark.parametrize(
    "draw, mean, var",
    [(lambda x: torch.rand_like(x), 0.5, 1 / 12), (lambda x: torch.randn(64, dtype=torch.float64), 0.0, 1.0)],
    ids=["uniform", "normal"],
)
def test_different_randomness_rows_are_independent_draws(interpreter, draw, mean, var):
    x = torch.zeros(16, 64, dtype=torch.float64)
    out = tritonfunc.vmap(draw, randomness="different")(x)
    assert out.shape == (16, 64) and out.dtype == torch.float64
    assert_rows_distinct(out)
    n = out.numel()
    assert abs(out.mean().item() - mean) < 5 * (var / n) ** 0.5
    assert abs(out.var().item() - var) < 0.15 * var
    if mean == 0.5:
        assert out.min() >= 0 and out.max() < 1
    # Row means vary as independent draws do, not as one shared draw.
    assert out.mean(1).std() > 0


def test_random_results_repeat_after_manual_seed(interpreter):
    f = tritonfunc.vmap(lambda x: x + torch.rand_like(x), randomness="different")
    x = torch.zeros(B, 6)
    torch.manual_seed(0)
    first = f(x)
    torch.manual_seed(0)
    second = f(x)
    third = f(x)
    assert torch.equal(first, second)
    assert not torch.equal(second, third)


def test_chunked_randomness(interpreter):
    """'same' gives every chunk the same draws; 'different' keeps rows distinct across chunks."""
    x = torch.zeros(B)
    same = tritonfunc.vmap(lambda x: x + torch.rand(4), randomness="same", chunk_size=3)(x)
    assert same.shape == (B, 4)
    assert_rows_equal(same)
    different = tritonfunc.vmap(lambda x: x + torch.rand(4), randomness="different", chunk_size=3)(x)
    assert_rows_distinct(different)


def test_dropout_masks(interpreter):
    x = torch.ones(B, 16)
    different = tritonfunc.vmap(lambda x: F.dropout(x, 0.5), randomness="different")(x)
    same = tritonfunc.vmap(lambda x: F.dropout(x, 0.5), randomness="same")(x)
    for out in (different, same):
        assert ((out == 0) | (out == 2)).all()  # kept values are scaled by 1 / (1 - p)
    assert_rows_distinct(different)
    assert_rows_equal(same)


def test_same_randomness_with_a_batched_probability_raises(interpreter):
    check_vmap_error(lambda p: torch.bernoulli(p), torch.rand(B, 6), randomness="same")


def test_random_op_in_nested_vmaps(interpreter):
    inner = tritonfunc.vmap(lambda q: q + torch.rand(()), randomness="different")
    out = tritonfunc.vmap(inner, randomness="different")(torch.zeros(4, 6))
    assert_rows_distinct(out.flatten()[:, None])
