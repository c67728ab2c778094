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


def check(f, *args, rtol=None, atol=None):
    """Runs `tritonfunc.jit(f)(*args)` and eager `f(*args)`; asserts that every output leaf matches.

    Returns the tritonfunc result, so a test can make further assertions on it.
    """
    got = tritonfunc.jit(f)(*args)
    expected = f(*args)
    got_leaves, got_spec = pytree.tree_flatten(got)
    exp_leaves, exp_spec = pytree.tree_flatten(expected)
    assert got_spec == exp_spec, f"output structure differs:\n got {got_spec}\nwant {exp_spec}"
    for i, (g, e) in enumerate(zip(got_leaves, exp_leaves)):
        where = f"output leaf {i}"
        if not isinstance(e, torch.Tensor):
            assert not isinstance(g, torch.Tensor) and g == e, f"{where}: got {g!r}, want {e!r}"
            continue
        assert isinstance(g, torch.Tensor), f"{where}: got {type(g).__name__}, want a tensor"
        assert g.shape == e.shape, f"{where}: shape {tuple(g.shape)}, want {tuple(e.shape)}"
        assert g.dtype == e.dtype, f"{where}: dtype {g.dtype}, want {e.dtype}"
        assert g.device == e.device, f"{where}: device {g.device}, want {e.device}"
        e = e.detach()
        if e.dtype.is_floating_point:
            default_rtol, default_atol = TOLERANCES.get(e.dtype, (None, None))
            torch.testing.assert_close(
                g,
                e,
                rtol=default_rtol if rtol is None else rtol,
                atol=default_atol if atol is None else atol,
                equal_nan=True,
                msg=lambda m, where=where: f"{where}: {m}",
            )
        else:  # integers and booleans: exactly
            torch.testing.assert_close(g, e, rtol=0, atol=0, msg=lambda m, where=where: f"{where}: {m}")
    return got
