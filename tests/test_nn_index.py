"""Scatters, indexed updates and lookups (aten/scatter.py) against torch.func under jit, jvp, vjp, grad
and vmap on both CPU backends; out-of-range indices raise torch's own errors; modes without a fused
form run as torch calls.  A non-accumulating scatter or index_put of several values is fused
when its indices are made inside the function and do not repeat; where they may repeat (captured,
computed or repeated indices) it is torch's own call, which writes the last value (CPU) and gives
each repeat the position's gradient, as torch.func does."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from autodiff_helpers import make
from nn_checks import check_op, opaque_ops
from vmap_helpers import assert_same_error

import tritonfunc
from tritonfunc.fallback import NotFusedWarning

X = make(4, 5)
SRC = make(3, 5, seed=5)  # (make seeds by shape: seed=1 would repeat X's rows, tying every max)
DUPLICATES = torch.tensor([[0, 1, 2, 3, 0], [1, 2, 3, 0, 1], [0, 2, 1, 3, 3]])  # repeated rows per column
UNIQUE = torch.tensor([[0, 1, 2, 3, 0], [1, 2, 3, 0, 1]])

SCATTERS = [
    ("scatter", lambda x, s: x.scatter(0, torch.tensor([[0, 1, 2, 3, 0], [1, 2, 3, 0, 1]]), s[:2])),
    ("scatter_dim1_partial", lambda x, s: x.scatter(1, torch.tensor([[4, 0], [2, 3], [1, 0]]), s[:, :2])),
    ("scatter_src_larger", lambda x, s: x.scatter(1, torch.tensor([[4, 0], [2, 3]]), s[:2, :2])),
    ("scatter_value", lambda x, s: x.scatter(0, UNIQUE, 2.5) * s[0]),
    ("scatter_negative_dim", lambda x, s: x.scatter(-1, torch.tensor([[3, 1]]), s[:1, :2])),
    ("scatter_add", lambda x, s: x.scatter_add(0, DUPLICATES, s)),
    *[
        (
            f"scatter_reduce_{r}_{'self' if inc else 'noself'}",
            lambda x, s, r=r, inc=inc: x.scatter_reduce(0, DUPLICATES, s, r, include_self=inc),
        )
        for r in ("sum", "mean", "amax", "amin")
        for inc in (True, False)
    ],
]


@pytest.mark.parametrize("f", [pytest.param(f, id=n) for n, f in SCATTERS])
def test_scatter(backend, f):
    check_op(f, X, SRC)


def test_scatter_with_reduce_add(backend):
    """The deprecated reduce="add" of scatter (torch has no derivative for it: values and vmap only)."""
    check_op(lambda x, s: x.scatter(0, DUPLICATES, s, reduce="add"), X, SRC, diff=(), batch=0)


def test_scatter_reduce_amax_ties_share_the_derivative(backend):
    """Ties between x and the written values, and among them, split the derivative evenly (torch)."""
    x = torch.tensor([[1.0, 2.0], [3.0, 0.5]], dtype=torch.float64)
    src = torch.tensor([[3.0, 2.0], [3.0, 2.0]], dtype=torch.float64)
    index = torch.tensor([[1, 0], [1, 0]])
    check_op(lambda x, s: x.scatter_reduce(0, index, s, "amax"), x, src, vmap=False)


def test_scatter_reduce_without_self_ignores_an_equal_self(backend):
    """With include_self=False, x plays no part even where it equals the written maximum.  torch's
    reverse mode (2.13) counts such an x among the ties and then drops its share (0.5 below), while
    its forward mode ignores it (1); tritonfunc follows the forward mode in both."""
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    src = torch.tensor([[1.0, 5.0]], dtype=torch.float64)
    f = lambda x, s: x.scatter_reduce(0, torch.tensor([[0, 0]]), s, "amax", include_self=False)  # noqa: E731
    _, pull = tritonfunc.vjp(f, x, src)
    torch.testing.assert_close(pull(torch.ones(1, 2, dtype=torch.float64))[1], torch.ones(1, 2, dtype=torch.float64))
    _, tangent = torch.func.jvp(f, (x, src), (torch.ones_like(x), torch.ones_like(src)))
    torch.testing.assert_close(tritonfunc.jvp(f, (x, src), (torch.ones_like(x), torch.ones_like(src)))[1], tangent)


def test_scatter_traced_index(backend):
    """An index computed inside the function (and batched under vmap) selects as a captured one does."""
    f = lambda x, s, i: x.scatter_add(0, i, s).scatter(0, i[:1], s[:1])  # noqa: E731
    check_op(f, X, SRC, DUPLICATES, diff=(0, 1))
    check_op(f, X, SRC, DUPLICATES, diff=(0, 1), batch=2, jvp=False)


REPEATS = [  # torch writes the last of the repeated values (CPU): a sum of them was returned before
    ("scatter_captured", lambda x, s: x.scatter(0, DUPLICATES, s)),
    ("scatter_repeated", lambda x, s: x.scatter(0, torch.tensor([[0, 1, 2, 3, 0], [0, 2, 2, 3, 1]]), s[:2])),
    ("scatter_captured_unique", lambda x, s: x.scatter(0, UNIQUE, s[:2])),
    ("index_put_repeated", lambda x, s: x.index_put((torch.tensor([1, 3, 1]),), s)),
    ("index_put_captured", lambda x, s: x.index_put((UNIQUE[0, :3],), s)),
    ("index_put_2d_repeated", lambda x, s: x.index_put((torch.tensor([0, 2, 0]), torch.tensor([1, 4, 1])), s[0, :3])),
]


@pytest.mark.parametrize("f", [pytest.param(f, id=n) for n, f in REPEATS])
def test_writes_whose_indices_may_repeat_are_torch_calls(backend, f):
    check_op(f, X, SRC, fused=False)
    assert opaque_ops(f, X, SRC) in (["aten.scatter.src"], ["aten.index_put.default"])


def test_one_value_written_at_repeated_indices_is_fused(backend):
    """x[idx] = 0.5: the same value however often an index repeats."""
    check_op(lambda x, s: _setitem(x * s[0], torch.tensor([1, 3, 1]), 0.5), X, SRC)
    check_op(lambda x, s: x.scatter(0, DUPLICATES, 2.5) * s[0], X, SRC)


INDEXED = [
    ("index_put", lambda x, s: x.index_put((torch.tensor([0, 2]),), s[:2])),
    ("index_put_two_axes", lambda x, s: x.index_put((torch.tensor([0, 2]), torch.tensor([1, -1])), s[0, :2])),
    ("index_put_accumulate", lambda x, s: x.index_put((torch.tensor([0, 2, 0]),), s, accumulate=True)),
    ("index_put_broadcast_value", lambda x, s: x.index_put((torch.tensor([3, 1]),), s[0, 0])),
    ("setitem_on_fresh_tensor", lambda x, s: _setitem(x * 2, (slice(None), torch.tensor([1, 3])), s[0, :2])),
    ("setitem_index_grid", lambda x, s: _setitem(x * 2, (torch.tensor([[0], [3]]), torch.tensor([[1, 4]])), s[:2, :2])),
    ("index_put__accumulate", lambda x, s: (x * 1).index_put_((torch.tensor([3, 1, 3]),), s, accumulate=True)),
    ("index_add", lambda x, s: x.index_add(0, torch.tensor([0, 2, 0]), s, alpha=2.0)),
    ("index_add_dim1", lambda x, s: x.index_add(1, torch.tensor([4, 1, 4]), s[:, :3].repeat(2, 1)[:4])),
    ("index_fill", lambda x, s: x.index_fill(1, torch.tensor([0, -2]), 2.5) * s[0]),
    ("index_fill_tensor_value", lambda x, s: x.index_fill(0, torch.tensor([1, 3]), s[0, 0])),
    ("index_select", lambda x, s: x.index_select(1, torch.tensor([4, 0, 4])) * s[0, 0]),
    ("embedding", lambda x, s: F.embedding(torch.tensor([[0, 2], [3, 0]]), x) * s[0]),
    ("embedding_padding_idx", lambda x, s: F.embedding(torch.tensor([[0, 2], [1, 0]]), x, padding_idx=0) * s[0]),
    ("embedding_negative_padding_idx", lambda x, s: F.embedding(torch.tensor([3, 2, 3]), x, padding_idx=-1) * s[0]),
    ("embedding_0d_index", lambda x, s: F.embedding(torch.tensor(2), x) * s[0]),
    ("masked_fill_tensor_value", lambda x, s: x.masked_fill(x > 0, s[0, 0])),
    ("one_hot", lambda x, s: F.one_hot(torch.tensor([0, 2, 1, 4]), 5) * x + s[0]),
]


def _setitem(x, key, value):
    x[key] = value
    return x


@pytest.mark.parametrize("f", [pytest.param(f, id=n) for n, f in INDEXED])
def test_indexed_updates_and_lookups(backend, f):
    check_op(f, X, SRC, second_order=True)


@pytest.mark.parametrize("accumulate", [False, True])
def test_index_put_boolean_mask_with_one_value(backend, accumulate):
    """x[mask] = v: a select.  (torch.func cannot vmap a mask computed from a batched x.)"""
    check_op(lambda x, s: x.index_put((x > 0,), s[0, 0], accumulate=accumulate), X, SRC, vmap=False, second_order=True)
    check_op(lambda x, s: _setitem(x * 1, X > 0, s[0, 0]), X, SRC)


def _fill_rows(x, s):
    y = x * 1
    y[x.sum(1) > 0] = s[0]  # a mask over the leading dim, a row broadcast into every selected row
    return y


def _fill_all_if(x, s):
    y = x * 1
    y[x.sum() > 0] = s[0, 0]  # a 0-d mask: all or nothing
    return y


@pytest.mark.parametrize("f", [pytest.param(_fill_rows, id="leading_dims"), pytest.param(_fill_all_if, id="0d")])
def test_setitem_with_a_partial_boolean_mask_is_a_masked_fill(backend, f):
    """x[mask] = v with a mask over x's leading dims: no shape depends on the values (it used to be
    refused as a host read under grad and jit).  torch.func cannot vmap it: no vmap check."""
    check_op(f, X, SRC, vmap=False, second_order=True)


def test_embedding_padding_idx_differs_between_modes(backend):
    """torch's reverse mode skips padding rows and its forward mode does not: both are matched."""
    idx = torch.tensor([[0, 2], [1, 0]])
    f = lambda w: F.embedding(idx, w, padding_idx=0)  # noqa: E731
    grad = tritonfunc.grad(lambda w: f(w).sum())(X)
    assert grad[0].abs().sum() == 0 and grad[2].abs().sum() > 0
    _, tangent = tritonfunc.jvp(f, (X,), (torch.ones_like(X),))
    assert torch.equal(tangent, torch.ones(2, 2, 5, dtype=X.dtype))


def test_index_fill_batched_value_follows_the_per_example_loop(backend):
    """vmap over index_fill's value: torch.func 2.13 fills every example with the last value (a bug);
    tritonfunc gives what a loop over the examples gives."""
    values = torch.tensor([1.5, -2.0], dtype=torch.float64)
    f = lambda v: X.index_fill(1, torch.tensor([0, 3]), v)  # noqa: E731
    got = tritonfunc.vmap(f)(values)
    torch.testing.assert_close(got, torch.stack([f(v) for v in values]), rtol=0, atol=0)


OUT_OF_RANGE = [
    ("scatter", lambda x: x.scatter(0, torch.tensor([[0, 7, 0, 0, 0]]), x[:1])),
    ("scatter_negative", lambda x: x.scatter(0, torch.tensor([[0, -1, 0, 0, 0]]), x[:1])),
    ("scatter_add", lambda x: x.scatter_add(1, torch.tensor([[0, 5]]), x[:1, :2])),
    ("scatter_reduce", lambda x: x.scatter_reduce(0, torch.tensor([[4]]), x[:1, :1], "amax")),
    ("index_put", lambda x: x.index_put((torch.tensor([0, 7]),), x[:2])),
    ("index_put_negative", lambda x: x.index_put((torch.tensor([0, -5]),), x[:2])),
    ("index_put_second_axis", lambda x: x.index_put((torch.tensor([0, 1]), torch.tensor([1, 9])), x[0, 0])),
    ("index_add", lambda x: x.index_add(0, torch.tensor([0, -1]), x[:2])),
    ("index_fill", lambda x: x.index_fill(1, torch.tensor([0, 5]), 1.0)),
    ("embedding", lambda x: F.embedding(torch.tensor([0, 4]), x)),
    ("embedding_negative", lambda x: F.embedding(torch.tensor([-1]), x)),
]


@pytest.mark.parametrize("f", [pytest.param(f, id=n) for n, f in OUT_OF_RANGE])
def test_out_of_range_captured_index_raises_torchs_error(f):
    assert_same_error(lambda: tritonfunc.jit(f)(X), lambda: f(X))


NOT_FUSED = [
    ("scatter_reduce_prod", lambda x, s: x.scatter_reduce(0, DUPLICATES, s, "prod"), "scatter_reduce"),
    (
        "embedding_scale_grad_by_freq",
        lambda x, s: F.embedding(torch.tensor([0, 2, 0]), x, scale_grad_by_freq=True) * s[0],
        "embedding",
    ),
    (
        "index_put_separated_axes",
        lambda x, s: _setitem(x.reshape(4, 5, 1) * 1, (torch.tensor([1, 2]), slice(None), torch.tensor([0, 0])), s[0]),
        "index_put",
    ),
]


@pytest.mark.parametrize("f, op", [pytest.param(f, op, id=n) for n, f, op in NOT_FUSED])
def test_modes_without_a_fused_form_run_as_torch_calls(backend, f, op):
    """The op runs as a torch call (with a NotFusedWarning), and every transform still matches."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotFusedWarning)
        assert any(op in name for name in opaque_ops(f, X, SRC))
        check_op(f, X, SRC, fused=False, vmap=False)


def test_scatter_multiply_runs_as_a_torch_call(backend):
    """reduce="multiply" (torch differentiates it in neither mode)."""
    f = lambda x, s: x.scatter(0, UNIQUE, s[:2], reduce="multiply")  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotFusedWarning)
        check_op(f, X, SRC, fused=False, diff=(), batch=0)


@pytest.mark.parametrize(
    "f, op",
    [
        (lambda w, i: F.embedding(i, w) * 2, "aten.embedding.default"),
        (lambda w, i: w[i].sin(), "aten.index.Tensor"),
        (lambda w, i: w.gather(0, i[:, None].expand(-1, 64)).sin(), "aten.gather.default"),
    ],
    ids=["embedding", "index", "gather"],
)
def test_many_lookups_in_a_large_table_are_torch_calls(backend, f, op):
    """A one-hot select would compare each of 2048 indices with all 5000 rows: torch's own lookup
    instead, with torch.func's derivatives; small tables (above) and one pick per row stay fused."""
    w, i = (
        make(5000, 64, dtype=torch.float32),
        torch.randint(0, 5000, (2048,), generator=torch.Generator().manual_seed(0)),
    )
    assert opaque_ops(f, w, i) == [op]
    check_op(f, w, i, fused=False, vmap=False, jvp=False)
