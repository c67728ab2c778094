"""vmap's in_dims and out_dims in every form torch.func accepts, checked against torch.func.vmap.

Every test runs on both CPU backends (Triton's interpreter and the torch reference executor).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from vmap_helpers import check_vmap, make

import tritonfunc

B, N = 4, 5


def mul_add(x, y):
    return x * y + 1.0


# ---------------------------------------------------------------------------------------------
# in_dims.


def test_in_dims_int_maps_every_argument(backend):
    check_vmap(mul_add, make(B, N), make(B, N, seed=1))


@pytest.mark.parametrize("in_dims", [1, -1, -2, (1, 0), (0, -2), (-1, 1)])
def test_in_dims_int_negative_and_per_argument(backend, in_dims):
    """Negative in_dims are normalised; a tuple gives one in_dim per positional argument."""
    dims = (in_dims, in_dims) if isinstance(in_dims, int) else in_dims

    def arg(d, seed):
        x = make(B, N, seed=seed)
        return x if d % 2 == 0 else x.T.contiguous()

    check_vmap(mul_add, arg(dims[0], 0), arg(dims[1], 1), in_dims=in_dims)


def test_in_dim_none_is_not_mapped(backend):
    check_vmap(mul_add, make(B, N), make(N, seed=1), in_dims=(0, None))
    check_vmap(mul_add, make(N), make(N, B, seed=1), in_dims=(None, 1))


def test_in_dims_on_a_middle_axis_of_a_3d_input(backend):
    check_vmap(lambda x: x.softmax(-1) * x.sum(0), make(3, B, N), in_dims=1)


def test_in_dims_nested_dict(backend):
    p = {"x": make(B, N), "y": make(N, seed=1)}
    check_vmap(lambda p: p["x"] * p["y"], p, in_dims=({"x": 0, "y": None},))


def test_in_dims_nested_dict_with_negative_dim(backend):
    p = {"x": make(N, B), "y": make(N, seed=1)}
    check_vmap(lambda p: p["x"] * p["y"], p, in_dims=({"x": -1, "y": None},))


def test_in_dims_nested_list_and_tuple(backend):
    def f(a, pair, items):
        return a * pair[0] - pair[1] + items[0] * items[1]

    args = (make(B, N), (make(B, N, seed=1), make(N, seed=2)), [make(N, B, seed=3), make(N, seed=4)])
    check_vmap(f, *args, in_dims=(0, (0, None), [1, None]))


def test_in_dims_leaf_is_broadcast_over_a_subtree(backend):
    """One int for a whole dict argument maps every tensor in it; None leaves them all alone."""

    def f(p, q):
        return p["x"] * p["y"] + q[0] - q[1]

    p = {"x": make(B, N), "y": make(B, N, seed=1)}
    q = (make(N, seed=2), make(N, seed=3))
    check_vmap(f, p, q, in_dims=(0, None))


def test_non_tensor_arguments_with_in_dim_none(backend):
    def f(x, op, scale, offset, nothing):
        assert op == "mul" and nothing is None
        return x * scale + offset

    check_vmap(f, make(B, N), "mul", 2.5, 3, None, in_dims=(0, None, None, None, None))


def test_non_tensor_leaf_inside_a_dict_with_in_dim_none(backend):
    p = {"x": make(B, N), "n": 3}
    check_vmap(lambda p: p["x"] * p["n"], p, in_dims=({"x": 0, "n": None},))


def test_kwargs_are_passed_unbatched(backend):
    def f(x, *, w, k=1.0):
        return x * w + k

    w = make(N, seed=1)
    check_vmap(f, make(B, N), kwargs={"w": w, "k": 2.0})


def test_noncontiguous_and_expanded_inputs(backend):
    check_vmap(lambda x: x.softmax(-1), make(N, B).T)
    check_vmap(lambda x: x.softmax(-1), make(N).expand(B, N))
    check_vmap(lambda x: x * x.sum(), make(N, B).T, in_dims=1)


def test_integer_and_boolean_inputs_and_outputs(backend):
    check_vmap(lambda x: x * 3 + 1, torch.arange(B * N).reshape(B, N))
    check_vmap(lambda x: (x > 0, (x > 0).to(torch.int64) * 2), make(B, N))


def test_float32_inputs(backend):
    check_vmap(lambda x: x.softmax(-1) * 2, make(B, N, dtype=torch.float32), rtol=1e-5, atol=1e-6)


def test_zero_dim_examples(backend):
    """A 1-D input maps to 0-d examples."""
    check_vmap(lambda x, y: (x * y).exp(), make(B), make(B, seed=1))


# ---------------------------------------------------------------------------------------------
# out_dims.


@pytest.mark.parametrize("out_dims", [0, 1, 2, -1, -2, -3, (1,)])
def test_out_dims_int_negative_and_one_tuple(backend, out_dims):
    check_vmap(lambda x: x.reshape(N, 1) * 2, make(B, N), out_dims=out_dims)


def test_out_dims_tuple_of_ints(backend):
    check_vmap(lambda x: (x * 2, x.sum(), x.exp()), make(B, N), out_dims=(1, 0, -1))


def test_out_dims_int_is_broadcast_over_all_outputs(backend):
    check_vmap(lambda x: (x, x.sum() * x), make(B, N), out_dims=1)


def test_out_dims_dict_and_nested(backend):
    check_vmap(lambda x: {"p": x * 2, "q": x.sum()}, make(B, N), out_dims={"p": 1, "q": 0})
    check_vmap(lambda x: {"p": x * 2, "q": x.sum()}, make(B, N), out_dims={"p": -1, "q": -1})
    check_vmap(lambda x: (x, {"u": x * 2, "v": x.amax()}), make(B, N), out_dims=(0, {"u": 1, "v": 0}))


def test_out_dims_list_output(backend):
    check_vmap(lambda x: [x, x * 2], make(B, N))


def test_out_dim_none_for_an_unbatched_output(backend):
    y = make(N, seed=1)
    out = check_vmap(lambda x, y: (x * y, y.sum(), y * 2), make(B, N), y, in_dims=(0, None), out_dims=(0, None, None))
    assert out[1].shape == () and out[2].shape == (N,)


def test_out_dims_none_for_every_output(backend):
    y = make(N, seed=1)
    check_vmap(lambda x, y: (y * 2, y), make(B, N), y, in_dims=(0, None), out_dims=None)


def test_out_dim_none_for_a_non_tensor_output(backend):
    check_vmap(lambda x: (x * 2, 3.0, "tag"), make(B, N), out_dims=(0, None, None))


def test_out_dim_none_for_a_none_output(backend):
    check_vmap(lambda x: (x * 2, None), make(B, N), out_dims=(0, None))
    check_vmap(lambda x: None, make(B, N), out_dims=None)


def test_identity_returns_the_input_mapped(backend):
    check_vmap(lambda x: x, make(B, N))
    check_vmap(lambda x: x, make(B, N), out_dims=1)
    check_vmap(lambda x: x, make(N, B), in_dims=1, out_dims=1)
    check_vmap(lambda x: (x, x * 2, x), make(B, N))


# ---------------------------------------------------------------------------------------------
# Outputs that do not depend on the batch are broadcast to it.


def test_closure_output_is_broadcast(backend):
    w = make(N, seed=1)
    out = check_vmap(lambda x: w * 2, make(B, N))
    assert out.shape == (B, N)
    check_vmap(lambda x: w, make(B, N))


def test_constant_output_is_broadcast(backend):
    out = check_vmap(lambda x: torch.tensor(3.14), make(B, N))
    assert out.shape == (B,) and out.dtype == torch.float32
    check_vmap(lambda x: torch.tensor(3.14, dtype=torch.float64), make(B, N))


def test_unbatched_argument_output_is_broadcast(backend):
    y = make(N, seed=1)
    check_vmap(lambda x, y: (y, y.sum(), x * y), make(B, N), y, in_dims=(0, None))


def test_broadcast_output_with_nonzero_out_dim(backend):
    """torch.func (2.x) itself fails here (it expands with garbage sizes), so the oracle is its
    out_dims=0 result moved: a broadcast output behaves like any other output."""
    w = make(N, 3, seed=1)
    got = tritonfunc.vmap(lambda x: w * 2, out_dims=1)(make(B, N))
    want = torch.func.vmap(lambda x: w * 2)(make(B, N)).movedim(0, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got = tritonfunc.vmap(lambda x: w * 2, out_dims=-1)(make(B, N))
    torch.testing.assert_close(got, want.movedim(1, -1), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Batch sizes 1 and 0.


def matvec(x, w):
    return w.T @ x


@pytest.mark.parametrize("size", [1, 0])
@pytest.mark.parametrize(
    "f",
    [
        lambda x: x * 2 + 1,
        lambda x: x.softmax(-1),
        lambda x: x.sum(),
        lambda x: F.layer_norm(x - x.amax(-1, keepdim=True), (N,)),
    ],
    ids=["elementwise", "softmax", "sum", "amax_layer_norm"],
)
def test_batch_size_one_and_zero(backend, size, f):
    out = check_vmap(f, make(size, N))
    assert out.shape[0] == size


@pytest.mark.parametrize("size", [1, 0])
def test_batch_size_one_and_zero_with_unbatched_args_and_out_dims(backend, size):
    w = make(N, 3, seed=1)
    check_vmap(matvec, make(size, N), w, in_dims=(0, None))
    check_vmap(lambda x: (x * 2, x.sum()), make(size, N), out_dims=(1, 0))
    out = check_vmap(lambda x: torch.tensor(3.14), make(size, N))
    assert out.shape == (size,)


def test_batch_size_zero_with_chunk_size(backend):
    """torch.func (2.x) fails with an internal AssertionError here; the sensible result is the
    unchunked one, an empty batch."""
    x = make(0, N)
    got = tritonfunc.vmap(lambda x: x * 2, chunk_size=2)(x)
    assert got.shape == (0, N)


def test_batch_size_zero_in_an_outer_vmap(backend):
    inner = lambda x: tritonfunc.vmap(lambda r: r.sum())(x)
    ref = lambda x: torch.func.vmap(lambda r: r.sum())(x)
    out = check_vmap(inner, make(0, 3, N), ref=ref)
    assert out.shape == (0, 3)


def test_batch_size_zero_in_an_inner_vmap(backend):
    inner = lambda x: tritonfunc.vmap(lambda r: r * 2)(x)
    ref = lambda x: torch.func.vmap(lambda r: r * 2)(x)
    check_vmap(inner, make(B, 0, N), ref=ref)


def test_examples_with_a_zero_size_axis(backend):
    check_vmap(lambda x: x * 2, make(B, 0))
