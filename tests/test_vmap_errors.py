"""Every vmap misuse raises torch.func's exception, with torch.func's message, word for word.

Each test runs the same call through tritonfunc.vmap and torch.func.vmap and compares
type(e) and str(e); the explicit type and message fragments below document what is expected.
"""

from __future__ import annotations

import functools
import re

import pytest
import torch
import torch.func
import torch.nn.functional as F
from vmap_helpers import assert_same_error, check_vmap_error, make

import tritonfunc

B, N = 4, 5


def mul(x, y=None):
    return x * 2 if y is None else x * y


def double(x):
    return x * 2


def pair(x):
    return x * 2, x.sum()


# ---------------------------------------------------------------------------------------------
# in_dims and inputs.


def test_mismatched_batch_sizes():
    e = check_vmap_error(mul, make(B, N), make(3, N))
    assert isinstance(e, ValueError)
    assert "got sizes [4, 3] for the mapped dimension" in str(e)


def test_mismatched_batch_sizes_across_in_dims():
    check_vmap_error(mul, make(B, N), make(B, N, seed=1), in_dims=(0, 1))


@pytest.mark.parametrize("in_dim", [2, -3, 5])
def test_in_dim_out_of_range(in_dim):
    e = check_vmap_error(double, make(B, N), in_dims=in_dim)
    assert isinstance(e, ValueError) and "so expected in_dim to satisfy -2 <= in_dim < 2." in str(e)


def test_in_dim_on_a_zero_dim_tensor():
    check_vmap_error(double, torch.tensor(1.0))


@pytest.mark.parametrize("value", [3, 2.5, "s"])
def test_in_dim_on_a_non_tensor(value):
    e = check_vmap_error(mul, make(B, N), value, in_dims=(0, 0))
    assert isinstance(e, ValueError)
    assert f"is of type {type(value)}. We cannot vmap over non-Tensor arguments" in str(e)


def test_in_dim_broadcast_over_a_dict_with_a_non_tensor():
    check_vmap_error(lambda p: p["x"] * p["n"], {"x": make(B, N), "n": 3}, in_dims=0)


def test_no_batched_input():
    e = check_vmap_error(mul, make(B, N), make(B, N), in_dims=(None, None))
    assert isinstance(e, ValueError) and str(e) == "vmap: Expected at least one Tensor to vmap over"
    check_vmap_error(double, make(B, N), in_dims=None)
    check_vmap_error(mul, make(B, N), 3, in_dims=(None, None))


def test_no_inputs():
    e = check_vmap_error(lambda: torch.ones(2))
    assert isinstance(e, ValueError) and "got no inputs. Maybe you forgot to add inputs" in str(e)


def test_kwargs_only_is_no_inputs():
    check_vmap_error(lambda *, x: x, kwargs={"x": make(B, N)})


def test_in_dims_a_list():
    e = check_vmap_error(mul, make(B, N), make(B, N), in_dims=[0, 0])
    assert isinstance(e, ValueError)
    assert re.search(re.escape("expected `in_dims` to be int or a (potentially nested) tuple"), str(e))


def test_in_dims_function_name_in_message():
    """The message names the function, partials included."""
    e = check_vmap_error(mul, make(B, N), in_dims=[0])
    assert str(e).startswith("vmap(mul, in_dims=[0], ...)(<inputs>)")
    check_vmap_error(functools.partial(mul, y=2), make(B, N), in_dims=[0])


@pytest.mark.parametrize(
    "args, in_dims",
    [
        ((make(B, N), make(B, N)), (0, 0, 0)),
        ((make(B, N), make(B, N)), (0,)),
        (((make(B, N), make(B, N)),), ((0, 0, 0),)),
        (((make(B, N), make(B, N)),), ([0, 0],)),
        (({"x": make(B, N), "y": make(B, N)},), ({"x": 0, "z": None},)),
    ],
    ids=["too-many", "too-few", "nested-too-many", "list-for-tuple", "dict-keys"],
)
def test_in_dims_structure_mismatch(args, in_dims):
    def f(*a):
        return a[0]

    e = check_vmap_error(f, *args, in_dims=in_dims)
    assert isinstance(e, ValueError) and "in_dims is not compatible with the structure of `inputs`" in str(e)


@pytest.mark.parametrize("in_dims", [1.0, (1.0,), ("a",), ({"x": 0.5},)])
def test_in_dim_of_a_bad_type(in_dims):
    arg = {"x": make(B, N)} if isinstance(in_dims, tuple) and isinstance(in_dims[0], dict) else make(B, N)
    e = check_vmap_error(lambda a: a, arg, in_dims=in_dims)
    assert isinstance(e, ValueError)


# ---------------------------------------------------------------------------------------------
# out_dims and outputs.


@pytest.mark.parametrize("out_dims", ["a", ("a",), 1.5, (0, 1.0)])
def test_out_dims_of_a_bad_type(out_dims):
    f = pair if isinstance(out_dims, tuple) and len(out_dims) == 2 else double
    e = check_vmap_error(f, make(B, N), out_dims=out_dims)
    assert isinstance(e, ValueError) and "`out_dims` must be an int, None or a python collection of ints" in str(e)


@pytest.mark.parametrize(
    "f, out_dims",
    [(pair, (0, 0, 0)), (double, (0, 0)), (pair, (1,)), (pair, [0, 1])],
    ids=["3-for-2", "2-for-1", "1-for-2", "list"],
)
def test_out_dims_structure_mismatch(f, out_dims):
    e = check_vmap_error(f, make(B, N), out_dims=out_dims)
    assert isinstance(e, ValueError) and "out_dims is not compatible with the structure of `outputs`" in str(e)


def test_out_dims_none_on_a_batched_output():
    e = check_vmap_error(double, make(B, N), out_dims=None)
    assert isinstance(e, ValueError) and "can not return a BatchedTensor when out_dim is None" in str(e)
    check_vmap_error(pair, make(B, N), out_dims=(0, None))


def test_non_tensor_output_with_an_int_out_dim():
    e = check_vmap_error(lambda x: (x * 2, 3.0), make(B, N))
    assert isinstance(e, ValueError)
    assert "must only return Tensors, got type <class 'float'>. Did you mean to set out_dims= to None" in str(e)
    check_vmap_error(lambda x: 3.0, make(B, N))
    check_vmap_error(lambda x: "s", make(B, N))


def test_none_output_with_an_int_out_dim():
    check_vmap_error(lambda x: None, make(B, N))


def test_out_dim_out_of_range():
    e = check_vmap_error(double, make(B, N), out_dims=3)
    assert isinstance(e, IndexError)
    check_vmap_error(double, make(B, N), out_dims=-4)


# ---------------------------------------------------------------------------------------------
# chunk_size and randomness flags.


@pytest.mark.parametrize("chunk_size", [0, -1, -5])
def test_chunk_size_not_positive(chunk_size):
    """Checked when vmap is called, before any input is seen."""
    e = assert_same_error(
        lambda: tritonfunc.vmap(double, chunk_size=chunk_size),
        lambda: torch.func.vmap(double, chunk_size=chunk_size),
    )
    assert isinstance(e, ValueError)
    assert str(e) == f"vmap: chunk_size should be None or greater than 0. (got {chunk_size})"


def test_randomness_bogus():
    e = assert_same_error(
        lambda: tritonfunc.vmap(double, randomness="bogus"),
        lambda: torch.func.vmap(double, randomness="bogus"),
    )
    assert isinstance(e, RuntimeError)
    assert str(e) == "Only allowed values for randomness are 'error', 'different', or 'same'. Got bogus"


@pytest.mark.parametrize(
    "f",
    [
        lambda x: torch.rand_like(x),
        lambda x: x + torch.randn(N, dtype=x.dtype),
        lambda x: F.dropout(x, 0.5),
        lambda x: x + torch.rand(N),
        lambda x: torch.bernoulli(torch.full_like(x, 0.5)),
    ],
    ids=["rand_like", "randn", "dropout", "rand-unbatched", "bernoulli"],
)
def test_random_op_in_error_mode(f):
    e = check_vmap_error(f, make(B, N))
    assert isinstance(e, RuntimeError)
    assert str(e).startswith("vmap: called random operation while in randomness error mode.")


# ---------------------------------------------------------------------------------------------
# Calls torch refuses too: torch.func's error for the call the user wrote, not the one tritonfunc's
# trace met first (a meta kernel's shape check, a data-dependent op it decomposes into).


@pytest.mark.parametrize(
    "f, x",
    [
        pytest.param(lambda t: torch.nonzero(t), make(B, 3), id="nonzero"),
        pytest.param(lambda t: torch.where(t > 0), make(B, 3), id="where_one_argument"),
        pytest.param(lambda t: torch.masked_select(t, t > 0), make(B, 3), id="masked_select"),
        pytest.param(lambda t: torch.unique(t), make(B, 3), id="unique"),
        pytest.param(lambda t: t[t > 0], make(B, 3), id="boolean_mask_index"),
        pytest.param(lambda t: torch.mm(t, torch.ones(2, 2, dtype=t.dtype)), make(B, 2, 2, 2), id="mm_rank"),
        pytest.param(lambda t: t.as_strided([1, 1], [1]), make(B, 4), id="as_strided_lengths"),
        pytest.param(lambda t: torch.squeeze(t, dim=1), make(B), id="squeeze_dim"),
        pytest.param(lambda t: torch.abs(t, out=torch.empty(3, dtype=t.dtype)), make(B, 3), id="out_variant"),
        pytest.param(lambda t: t + torch.ones(5, dtype=t.dtype), make(B, 4), id="broadcast"),
        pytest.param(lambda t: torch.equal(t, t), make(B, 4), id="equal"),
    ],
)
def test_a_call_torch_refuses_raises_torch_funcs_error(f, x):
    check_vmap_error(f, x)


@pytest.mark.parametrize("f", [torch.mv, lambda a, v: a @ v, torch.dot], ids=["mv", "matmul", "dot"])
def test_a_refused_call_is_worded_for_the_vmaps_batch(f):
    """torch.func names the batch in its shape errors ([4, 5] but got [4, 3] for a batch of 4)."""
    a = make(B, 3, 5) if f is not torch.dot else make(B, 5)
    check_vmap_error(f, a, make(B, 3, seed=1))


def test_shape_errors_under_grad_are_torchs():
    """Under grad torch runs the op itself: its eager message, not the meta kernel's."""
    f = lambda a: torch.mm(a, torch.ones(3, 3, dtype=a.dtype)).sum()  # noqa: E731
    assert_same_error(lambda: tritonfunc.grad(f)(make(2, 2, 2)), lambda: torch.func.grad(f)(make(2, 2, 2)))
