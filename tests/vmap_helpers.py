"""Shared checks for the vmap tests: tritonfunc.vmap against torch.func.vmap on the same inputs.

torch.func on this machine is the oracle, for values (float64, tight tolerances, so a float32
detour anywhere is caught) and for errors (same exception type, same message).
"""

from __future__ import annotations

import pytest
import torch
import torch.func
from helpers import assert_same

import tritonfunc

RTOL, ATOL = 1e-9, 1e-12


def make(*shape, dtype=torch.float64, seed=0) -> torch.Tensor:
    """A reproducible float64 normal tensor, converted to `dtype`."""
    g = torch.Generator().manual_seed(seed * 1000 + sum(shape) + len(shape))
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def assert_trees_close(got, expected, rtol=RTOL, atol=ATOL) -> None:
    """Same pytree structure; tensor leaves with equal shape, dtype and values; other leaves equal."""
    assert_same(got, expected, rtol=rtol, atol=atol, equal_nan=False)


def check_vmap(f, *args, in_dims=0, out_dims=0, chunk_size=None, kwargs=None, ref=None, rtol=RTOL, atol=ATOL):
    """tritonfunc.vmap(f, ...)(*args, **kwargs) must equal torch.func.vmap(ref or f, ...)(...).

    `ref` is the same function written with torch.func's transforms, for functions that call
    transforms themselves.  Returns tritonfunc's result.
    """
    kwargs = kwargs or {}
    got = tritonfunc.vmap(f, in_dims, out_dims, chunk_size=chunk_size)(*args, **kwargs)
    expected = torch.func.vmap(ref or f, in_dims, out_dims, chunk_size=chunk_size)(*args, **kwargs)
    assert_trees_close(got, expected, rtol=rtol, atol=atol)
    return got


def raised(fn) -> Exception:
    try:
        fn()
    except Exception as e:
        return e
    pytest.fail("expected an exception, none was raised")


def assert_same_error(ours, theirs) -> Exception:
    """Both thunks raise; the exception types and messages are identical.  Returns ours."""
    e_ours, e_theirs = raised(ours), raised(theirs)
    assert type(e_ours) is type(e_theirs), f"{type(e_ours).__name__}: {e_ours}\nwant {type(e_theirs).__name__}"
    assert str(e_ours) == str(e_theirs)
    return e_ours


def check_vmap_error(f, *args, kwargs=None, **vmap_kwargs) -> Exception:
    """vmap(f, **vmap_kwargs)(*args) raises the same error in tritonfunc as in torch.func."""
    kwargs = kwargs or {}
    return assert_same_error(
        lambda: tritonfunc.vmap(f, **vmap_kwargs)(*args, **kwargs),
        lambda: torch.func.vmap(f, **vmap_kwargs)(*args, **kwargs),
    )
