"""Average pooling and nearest resampling (aten/pooling.py) against torch.func under jit, jvp, vjp, grad
and vmap on both CPU backends; a sweep of configurations against eager torch on the reference backend;
max pooling and convolution (torch calls) under the transforms."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from autodiff_helpers import make
from helpers import check
from nn_checks import check_op, opaque_ops

import tritonfunc
from tritonfunc.fallback import NotFusedWarning

X2 = make(2, 2, 5, 6)
FILTERS = make(3, 2, 3, 3, seed=1)

POOLS = [
    ("avg_pool2d", lambda x: F.avg_pool2d(x, 2)),
    ("avg_pool2d_stride_padding", lambda x: F.avg_pool2d(x, 3, 2, 1)),
    ("avg_pool2d_ceil_exclude_pad", lambda x: F.avg_pool2d(x, (3, 2), (2, 1), (1, 0), True, False)),
    ("avg_pool2d_divisor", lambda x: F.avg_pool2d(x, 2, 1, 1, divisor_override=3)),
    ("avg_pool1d", lambda x: F.avg_pool1d(x.reshape(2, 2, 30), 4, 3, 2, True)),
    ("avg_pool3d", lambda x: F.avg_pool3d(x.reshape(1, 2, 2, 5, 6), (2, 3, 2), (1, 2, 2), (1, 1, 0))),
    ("adaptive_avg_pool2d_even", lambda x: F.adaptive_avg_pool2d(x, (5, 3))),
    ("adaptive_avg_pool2d_uneven", lambda x: F.adaptive_avg_pool2d(x, (3, 4))),
    ("adaptive_avg_pool1d", lambda x: F.adaptive_avg_pool1d(x.reshape(4, 5, 6), 4)),
    ("nearest_integer_factor", lambda x: F.interpolate(x, scale_factor=2)),
    ("nearest_size", lambda x: F.interpolate(x, size=(7, 4))),
    ("nearest_fractional_scale", lambda x: F.interpolate(x, scale_factor=(1.5, 0.5))),
    ("nearest_exact", lambda x: F.interpolate(x, scale_factor=1.7, mode="nearest-exact")),
    ("nearest_1d", lambda x: F.interpolate(x.reshape(2, 2, 30), size=45)),
    ("nearest_3d", lambda x: F.interpolate(x.reshape(1, 2, 2, 5, 6), scale_factor=(2, 1, 0.5))),
]


@pytest.mark.parametrize("f", [pytest.param(f, id=n) for n, f in POOLS])
def test_pooling_and_resampling(backend, f):
    check_op(f, X2, second_order=f is POOLS[2][1])


def test_integer_nearest_upsampling_is_a_view():
    """No comparisons, no sums: a broadcast and a reshape."""
    from tritonfunc.trace import trace

    graph = trace(lambda x: F.interpolate(x, scale_factor=(2, 3)), (X2,), {}).graph
    assert {n.prim.name for n in graph.nodes} <= {"broadcast_in_dim", "reshape", "copy"}


def test_avg_pool_configurations_match_torch():
    """Every kernel, stride, padding, ceil_mode and count_include_pad combination of small sizes."""
    tritonfunc.set_backend("torch")
    try:
        x = make(1, 2, 7, 6)
        for k, s, p, ceil, include in itertools.product((1, 2, 3), (1, 2, 3), (0, 1), (False, True), (False, True)):
            if p <= k // 2:
                check(lambda x: F.avg_pool2d(x, k, s, p, ceil, include), x)
    finally:
        tritonfunc.set_backend(None)


def test_nearest_sizes_match_torch():
    """The source row of every output row, for every small input and output size and some scales."""
    tritonfunc.set_backend("torch")
    try:
        for mode, n in itertools.product(("nearest", "nearest-exact"), (1, 2, 3, 5, 7)):
            x = make(1, 1, n)
            for size in range(1, 16):
                check(lambda x: F.interpolate(x, size=size, mode=mode), x)
            for scale in (0.5, 1.5, 2.5, 3.0, 1 / 3):
                if int(n * scale) > 0:
                    check(lambda x: F.interpolate(x, scale_factor=scale, mode=mode), x)
    finally:
        tritonfunc.set_backend(None)


# -- torch calls: max pooling and convolution --------------------------------------------------------

TORCH_CALLS = [
    ("max_pool2d", lambda x: F.max_pool2d(x, 2, 1, 1)),
    ("conv2d", lambda x: F.conv2d(x, FILTERS, padding=1).relu()),
]


@pytest.mark.parametrize("f", [pytest.param(f, id=n) for n, f in TORCH_CALLS])
def test_max_pool_and_convolution_run_as_torch_calls_under_every_transform(backend, f):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotFusedWarning)
        assert opaque_ops(f, X2)
        check_op(f, X2, fused=False)
        x = X2[:1]
        got = tritonfunc.vmap(tritonfunc.grad(lambda x: f(x).square().sum()))(x.unsqueeze(1))
        want = torch.func.vmap(torch.func.grad(lambda x: f(x).square().sum()))(x.unsqueeze(1))
        torch.testing.assert_close(got, want)
