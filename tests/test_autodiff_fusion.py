"""Launch counts and bytes moved by the autodiff transforms (interpreter backend only: launches and
bytes exist only for generated Triton kernels).

The backward of an elementwise chain into a reduction, the forward-over-reverse Hessian-vector
product of the same function, and the gradient of a single-row cross-entropy each fit one kernel:
the forward values the backward needs are recomputed inside it, never stored.  Bytes are compared
with the ideal: every input read once, every output written once.
"""

from __future__ import annotations

import pytest
import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same, make

import tritonfunc


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _sin_exp_sum(x):
    return (x.sin() * x.exp()).sum()


def _assert_one_launch_near_ideal(rec, inputs, outputs):
    assert rec.count == 1, [(launch.name, launch.grid) for launch in rec.launches]
    ideal = _nbytes(*inputs) + _nbytes(*outputs)
    moved = rec.bytes_read + rec.bytes_written
    assert rec.bytes_read >= _nbytes(*inputs) and rec.bytes_written >= _nbytes(*outputs)
    assert moved <= 1.5 * ideal, f"moved {moved} bytes, ideal {ideal}"


@pytest.mark.parametrize("n", [5, 200])
def test_grad_of_elementwise_sum_is_one_launch(interpreter, n):
    x = make(n)
    with tritonfunc.record_launches() as rec:
        g = tritonfunc.grad(_sin_exp_sum)(x)
    assert_same(g, torch.func.grad(_sin_exp_sum)(x))
    _assert_one_launch_near_ideal(rec, [x], [g])


def test_grad_and_value_of_elementwise_sum_is_one_launch(interpreter):
    x = make(64)
    with tritonfunc.record_launches() as rec:
        g, value = tritonfunc.grad_and_value(_sin_exp_sum)(x)
    assert_same((g, value), torch.func.grad_and_value(_sin_exp_sum)(x))
    _assert_one_launch_near_ideal(rec, [x], [g, value])


def test_hessian_vector_product_is_one_launch(interpreter):
    """jvp(grad(f)) returns grad f(x) and H v from a single pass over x and v."""
    x, v = make(64), make(64, seed=1)
    with tritonfunc.record_launches() as rec:
        g, hv = tritonfunc.jvp(tritonfunc.grad(_sin_exp_sum), (x,), (v,))
    assert_same((g, hv), torch.func.jvp(torch.func.grad(_sin_exp_sum), (x,), (v,)))
    _assert_one_launch_near_ideal(rec, [x, v], [g, hv])


def test_grad_of_single_row_cross_entropy_is_one_launch(interpreter):
    """z of shape [C] with a 0-d int target: softmax, the one-hot pick and their adjoint, fused."""
    z, t = make(10, low=-3.0, high=3.0), torch.tensor(3)

    def loss(z):
        return F.cross_entropy(z, t)

    with tritonfunc.record_launches() as rec:
        g = tritonfunc.grad(loss)(z)
    assert_same(g, torch.func.grad(loss)(z))
    _assert_one_launch_near_ideal(rec, [z, t], [g])


def test_vjp_fn_call_is_one_launch(interpreter):
    """A vjp_fn call runs only the backward: one kernel reading x and the cotangent."""
    x, ct = make(4, 6), make(4, 6, seed=1)
    _, vjp_fn = tritonfunc.vjp(lambda x: x.sin() * x.exp(), x)
    with tritonfunc.record_launches() as rec:
        (g,) = vjp_fn(ct)
    assert_same(g, ct * (x.cos() * x.exp() + x.sin() * x.exp()))
    _assert_one_launch_near_ideal(rec, [x, ct], [g])
