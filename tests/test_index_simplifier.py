"""The symbolic index simplifier (tritonfunc/indexing.py): every rewrite keeps the value of the index
at every point of its variables' ranges, and the round trips views make collapse back to the
variables, so a view between a contraction and its epilogue costs nothing (tinygrad's
test_symbolic.py does the same for its algebra)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tritonfunc.indexing import Idx, contiguous_strides, ravel, reshape_index, unravel

EXTENTS = {"m": 40, "n": 18}


def values(idx: Idx) -> np.ndarray:
    """The index at every (m, n), evaluated from its rendered text."""
    env = {"m": np.arange(EXTENTS["m"])[:, None], "n": np.arange(EXTENTS["n"])[None, :]}
    return np.broadcast_to(eval(idx.render(), env), (EXTENTS["m"], EXTENTS["n"]))  # noqa: S307


M, N = Idx.var("m", EXTENTS["m"]), Idx.var("n", EXTENTS["n"])
MM, NN = np.arange(EXTENTS["m"])[:, None], np.arange(EXTENTS["n"])[None, :]


@pytest.mark.parametrize("divisor", [1, 2, 3, 6, 9, 18, 36, 90, 360, 720])
def test_division_and_remainder_keep_their_values(divisor):
    flat = M * 18 + N
    assert (values(flat // divisor) == (MM * 18 + NN) // divisor).all()
    assert (values(flat % divisor) == (MM * 18 + NN) % divisor).all()


def test_a_multiple_plus_a_smaller_rest_divides_through_the_multiple():
    """(18 m + n) // 360 is m // 20 when n < 18: no opaque division survives."""
    assert ((M * 18 + N) // 360).render() == "(m // 20)"
    assert ((M * 18 + N) % 360).render() == "(m % 20) * 18 + n"


@pytest.mark.parametrize("shape", [(2, 20, 18), (40, 18), (4, 10, 3, 6), (720,), (5, 8, 18)])
def test_reshape_round_trips_collapse_to_the_variables(shape):
    """A dot's (m, n) reshaped to the output's shape and back is (m, n) again."""
    there = reshape_index((M, N), (40, 18), shape)
    back = reshape_index(there, shape, (40, 18))
    assert tuple(i.render() for i in back) == ("m", "n")
    flat = ravel(there, contiguous_strides(shape))
    assert (values(flat) == MM * 18 + NN).all()


def test_unravel_covers_every_position_once():
    seen = set()
    for m, n in itertools.product(range(EXTENTS["m"]), range(EXTENTS["n"])):
        env = {"m": m, "n": n}
        seen.add(tuple(eval(i.render(), env) for i in unravel(M * 18 + N, (4, 10, 18))))  # noqa: S307
    assert len(seen) == 720
