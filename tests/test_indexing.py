"""Indexing with integer tensors and torch.gather: lowered to a one-hot select and a sum over the
indexed axis, so they fuse with their neighbours and differentiate and batch like everything else.
"""

import pytest
import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same, make

import tritonfunc

X = make(5, 3)
CASES = [
    ("rows", lambda x, t: x[t], torch.tensor([1, 4, -1])),
    ("zero_d", lambda x, t: x[t], torch.tensor(2)),
    ("columns", lambda x, t: x[:, t], torch.tensor([2, 0])),
    ("column_zero_d", lambda x, t: x[:, t], torch.tensor(1)),
    ("two_d_index", lambda x, t: x[t], torch.tensor([[0, 1], [2, 3]])),
    ("gather_dim1", lambda x, t: torch.gather(x, 1, t), torch.tensor([[0], [1], [2], [0], [1]])),
    ("gather_dim0", lambda x, t: torch.gather(x, 0, t), torch.tensor([[0, 4, 1]])),
    ("neg_log_softmax_pick", lambda x, t: -F.log_softmax(x[0], -1)[t], torch.tensor(2)),
]


@pytest.mark.parametrize("fn, index", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_integer_indexing_value_and_gradient(backend, fn, index):
    assert_same(tritonfunc.jit(fn)(X, index), fn(X, index))
    loss = lambda x, t: fn(x, t).sum()  # noqa: E731
    assert_same(tritonfunc.grad(loss)(X, index), torch.func.grad(loss)(X, index))


def test_per_sample_loss_picking_the_target_is_one_launch(interpreter):
    """vmap(grad(-log_softmax(z)[t])) over rows: the pick fuses into the row kernel."""
    z, t = make(6, 5), torch.tensor([0, 4, 2, 1, 3, 0])
    with tritonfunc.record_launches() as rec:
        got = tritonfunc.vmap(tritonfunc.grad(lambda z, t: -F.log_softmax(z, -1)[t]))(z, t)
    want = torch.func.vmap(torch.func.grad(lambda z, t: F.cross_entropy(z[None], t[None])))(z, t)
    assert_same(got, want)
    assert rec.count == 1


def test_out_of_range_captured_index_raises_index_error():
    with pytest.raises(IndexError, match="index 7 is out of bounds for dimension with size 5"):
        tritonfunc.jit(lambda x: x[torch.tensor([7])])(X)


def test_boolean_mask_indexing_is_refused_with_a_clear_error():
    with pytest.raises(NotImplementedError, match="output shape depends on tensor values"):
        tritonfunc.jit(lambda x: x[x > 0])(X)
