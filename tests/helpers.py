"""The oracle check shared by the test files: tritonfunc.jit(f) must agree with eager torch.

Eager `f` on the same inputs is the reference.  Every output leaf must match in type, shape, dtype
and value: floats within tolerances picked per dtype (tight for float64, so a float64 program that
silently computes in float32 fails), integers and booleans exactly, NaNs in the same places.
"""

from __future__ import annotations

import torch
from torch.utils import _pytree as pytree

import tritonfunc

# (rtol, atol) per floating dtype.  float64 is tight enough that float32 rounding (~6e-8 relative)
# anywhere on the way is caught; float32 allows a few ulps of reassociation in reductions and the
# difference between numpy's and torch's transcendental functions.
TOLERANCES = {
    torch.float64: (1e-9, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}


def assert_same(got, want, what="output", rtol=None, atol=None, tolerances=TOLERANCES, equal_nan=True) -> None:
    """Every leaf of `got` matches `want`: pytree structure, type, shape, dtype, device and value.

    Floats agree within (rtol, atol), by default `tolerances[dtype]`; integers and booleans exactly.
    """
    got_leaves, got_spec = pytree.tree_flatten(got)
    want_leaves, want_spec = pytree.tree_flatten(want)
    assert got_spec == want_spec, f"{what} structure differs:\n got {got_spec}\nwant {want_spec}"
    for i, (g, w) in enumerate(zip(got_leaves, want_leaves)):
        where = f"{what} leaf {i}"
        if not isinstance(w, torch.Tensor):
            assert not isinstance(g, torch.Tensor) and g == w, f"{where}: got {g!r}, want {w!r}"
            continue
        assert isinstance(g, torch.Tensor), f"{where}: got {type(g).__name__}, want a tensor"
        assert g.shape == w.shape, f"{where}: shape {tuple(g.shape)}, want {tuple(w.shape)}"
        assert g.dtype == w.dtype, f"{where}: dtype {g.dtype}, want {w.dtype}"
        assert g.device == w.device, f"{where}: device {g.device}, want {w.device}"
        w = w.detach()
        if w.dtype.is_floating_point:
            default_rtol, default_atol = tolerances.get(w.dtype, (None, None))
            torch.testing.assert_close(
                g,
                w,
                rtol=default_rtol if rtol is None else rtol,
                atol=default_atol if atol is None else atol,
                equal_nan=equal_nan,
                msg=lambda m, where=where: f"{where}: {m}",
            )
        else:  # integers and booleans: exactly
            torch.testing.assert_close(g, w, rtol=0, atol=0, msg=lambda m, where=where: f"{where}: {m}")


def check(f, *args, rtol=None, atol=None):
    """Runs `tritonfunc.jit(f)(*args)` and eager `f(*args)`; asserts that every output leaf matches.

    Returns the tritonfunc result, so a test can make further assertions on it.
    """
    got = tritonfunc.jit(f)(*args)
    assert_same(got, f(*args), rtol=rtol, atol=atol)
    return got
