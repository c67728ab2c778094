"""Normalizations and the softmax family (aten/nn.py) against torch.func on both CPU backends: values,
jvp, vjp, grad, vmap and second order; rows holding infinities or overflowing; batch norm in each mode,
with the running-statistics write-back that needs in-place support marked as expected to fail."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from autodiff_helpers import make
from helpers import check
from nn_checks import check_op
from vmap_helpers import assert_same_error

import tritonfunc

INF, NAN = float("inf"), float("nan")


# -- the softmax family ------------------------------------------------------------------------------

SOFTMAXES = [
    ("softmax", lambda x: torch.softmax(x, -1)),
    ("log_softmax", lambda x: torch.log_softmax(x, -1)),
    ("logsumexp", lambda x: torch.logsumexp(x, -1)),
    ("safe_softmax", lambda x: torch.ops.aten._safe_softmax(x, -1)),
]

# Rows with +inf (one, several, with -inf, with NaN), rows of -inf, partly -inf rows, a plain row.
SPECIAL_ROWS = torch.tensor(
    [
        [1.0, INF, 2.0],
        [INF, INF, 1.0],
        [INF, 2.0, -INF],
        [-INF, -INF, -INF],
        [-INF, 1.0, 2.0],
        [1.0, NAN, 2.0],
        [0.5, -1.0, 2.0],
    ],
    dtype=torch.float64,
)


@pytest.mark.parametrize("f", [pytest.param(f, id=n) for n, f in SOFTMAXES])
def test_softmax_family_on_infinite_rows(backend, f):
    """Values, gradients and tangents (NaN where torch gives NaN) of rows holding infinities."""
    check(f, SPECIAL_ROWS)
    weights = make(*SPECIAL_ROWS.shape, seed=3)
    loss = lambda x: (f(x) * weights[..., : f(x).shape[-1]]).sum() if f(x).dim() == 2 else (f(x) * weights[:, 0]).sum()  # noqa: E731
    torch.testing.assert_close(tritonfunc.grad(loss)(SPECIAL_ROWS), torch.func.grad(loss)(SPECIAL_ROWS), equal_nan=True)
    tangent = make(*SPECIAL_ROWS.shape, seed=4)
    got = tritonfunc.jvp(f, (SPECIAL_ROWS,), (tangent,))
    want = torch.func.jvp(f, (SPECIAL_ROWS,), (tangent,))
    torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("f", [pytest.param(f, id=n) for n, f in SOFTMAXES])
def test_softmax_family(backend, f):
    check_op(f, make(3, 6), second_order=f in (SOFTMAXES[0][1], SOFTMAXES[1][1]))


def test_softmax_with_dtype_and_half_inputs(backend):
    x = make(3, 5, dtype=torch.float16)
    check(lambda x: (torch.softmax(x, 0, dtype=torch.float32), torch.log_softmax(x, -1)), x)


# -- layer, RMS, group, instance and local response norm --------------------------------------------

W, B = make(5, seed=1), make(5, seed=2)
G4, B4, G2, B2 = make(4, seed=5), make(4, seed=6), make(2, seed=7), make(2, seed=8)

NORMS = [
    ("layer_norm", lambda x: F.layer_norm(x, (5,), W, B)),
    ("layer_norm_two_axes", lambda x: F.layer_norm(x, (4, 5), eps=1e-3)),
    ("rms_norm", lambda x: F.rms_norm(x, (5,), W)),
    ("rms_norm_eps", lambda x: F.rms_norm(x, (4, 5), eps=1e-2)),
    ("fused_rms_norm", lambda x: torch.ops.aten._fused_rms_norm(x, [5], W, None)),
    ("group_norm", lambda x: F.group_norm(x.reshape(3, 4, 5), 2, G4, B4)),
    ("group_norm_per_channel", lambda x: F.group_norm(x.reshape(3, 4, 5), 4)),
    ("native_group_norm", lambda x: torch.ops.aten.native_group_norm(x.reshape(3, 4, 5), None, None, 3, 4, 5, 2, 1e-5)),
    ("instance_norm", lambda x: F.instance_norm(x.reshape(3, 2, 10), weight=G2, bias=B2)),
    ("native_layer_norm", lambda x: torch.ops.aten.native_layer_norm(x, [5], W, None, 1e-5)),
]


@pytest.mark.parametrize("f", [pytest.param(f, id=n) for n, f in NORMS])
def test_norms(backend, f):
    check_op(f, make(3, 4, 5), second_order=f in SECOND_ORDER)


SECOND_ORDER = {NORMS[0][1], NORMS[2][1], NORMS[5][1]}  # layer, RMS and group norm


def test_norm_parameters_are_differentiated(backend):
    x = make(3, 4, 5)
    check_op(lambda x, w, b: F.layer_norm(x, (5,), w, b), x, W, B, batch=1)
    check_op(lambda x, w: F.rms_norm(x, (5,), w), x, W, batch=1)
    check_op(lambda x, w, b: F.group_norm(x, 2, w, b), x, G4, B4, batch=2)


def test_layer_norm_of_an_overflowing_row_is_nan(backend):
    """Rows whose variance overflows give NaN, as torch gives for these rows, never a silent 0.
    (torch's Welford updates give 0 for some other overflowing rows: NaN is tritonfunc's answer
    for every one of them.)"""
    x = torch.tensor([[1e300, 1.0, 2.0], [1e308, 1e308, -1e308], [1.0, 2.0, 4.0]], dtype=torch.float64)
    f = lambda x: F.layer_norm(x, (3,))  # noqa: E731
    check(f, x)
    torch.testing.assert_close(
        tritonfunc.grad(lambda x: f(x).sum())(x), torch.func.grad(lambda x: f(x).sum())(x), equal_nan=True
    )
    x32 = torch.tensor([[3e38, -3e38, 1.0]])
    check(f, x32)
    assert tritonfunc.jit(f)(torch.tensor([[1e200, -1e200, 0.0]], dtype=torch.float64)).isnan().all()


def test_local_response_norm(backend):
    check_op(lambda x: F.local_response_norm(x, 3), make(2, 4, 5), vmap=False)


# -- batch norm --------------------------------------------------------------------------------------

XB = make(4, 3, 2, 2)
MEAN, VAR = make(3, seed=1), make(3, low=0.5, high=2.0, seed=2)
GAMMA, BETA = make(3, seed=3), make(3, seed=4)


BATCH_NORMS = [
    ("eval", lambda x: F.batch_norm(x, MEAN, VAR, GAMMA, BETA, training=False, eps=1e-3)),
    ("eval_no_affine", lambda x: F.batch_norm(x, MEAN, VAR)),
    ("train_without_running_stats", lambda x: F.batch_norm(x, None, None, GAMMA, BETA, training=True)),
    ("train_1d", lambda x: F.batch_norm(x.reshape(4, 3, 4)[..., 0], None, None, training=True)),
    (
        "no_training_op",
        lambda x: torch.ops.aten._native_batch_norm_legit_no_training(x, GAMMA, None, MEAN, VAR, 0.1, 1e-5),
    ),
    ("no_stats_op", lambda x: torch.ops.aten._native_batch_norm_legit.no_stats(x, None, BETA, True, 0.1, 1e-5)),
    (
        "functional_op",
        lambda x: torch.ops.aten._native_batch_norm_legit_functional(x, GAMMA, BETA, MEAN, VAR, True, 0.2, 1e-5),
    ),
    ("native_eval", lambda x: torch.ops.aten.native_batch_norm(x, None, None, MEAN, VAR, False, 0.1, 1e-5)),
]


@pytest.mark.parametrize("f", [pytest.param(f, id=n) for n, f in BATCH_NORMS])
def test_batch_norm(backend, f):
    check_op(f, XB, second_order=f is BATCH_NORMS[2][1])


def test_batch_norm_parameters_and_batched_running_stats(backend):
    """Weight and bias differentiated; running statistics batched (an ensemble of models in eval)."""
    f = lambda x, m, v, w, b: F.batch_norm(x, m, v, w, b, training=False)  # noqa: E731
    check_op(f, XB, MEAN, VAR, GAMMA, BETA, diff=(0, 3, 4), batch=1)
    check_op(f, XB, MEAN, VAR, GAMMA, BETA, diff=(0, 3, 4), batch=2)


def test_batch_norm_module_in_eval(backend):
    bn = torch.nn.BatchNorm2d(3).double().eval()
    bn.running_mean.copy_(MEAN)
    bn.running_var.copy_(VAR)
    params = {k: v.detach() for k, v in bn.named_parameters()}
    f = lambda p, x: tritonfunc.functional_call(bn, p, (x,)).square().sum()  # noqa: E731
    g = lambda p, x: torch.func.functional_call(bn, p, (x,)).square().sum()  # noqa: E731
    torch.testing.assert_close(tritonfunc.grad(f)(params, XB), torch.func.grad(g)(params, XB))
    got = tritonfunc.vmap(tritonfunc.grad(f), (None, 0))(params, XB.unsqueeze(1))
    want = torch.func.vmap(torch.func.grad(g), (None, 0))(params, XB.unsqueeze(1))
    torch.testing.assert_close(got, want)


def _train_stats(T, x, mean, var):
    return T.grad(lambda x, m, v: F.batch_norm(x, m, v, training=True, momentum=0.3).square().sum())(x, mean, var)


def test_batch_norm_train_updates_running_stats_passed_as_arguments():
    """torch.func writes the updated running statistics back into the tensors passed in."""
    mean, var = MEAN.clone(), VAR.clone()
    got = _train_stats(tritonfunc, XB, mean, var)
    want_mean, want_var = MEAN.clone(), VAR.clone()
    want = _train_stats(torch.func, XB, want_mean, want_var)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close((mean, var), (want_mean, want_var))


def test_batch_norm_train_updates_captured_running_stats():
    mean, var = MEAN.clone(), VAR.clone()
    got = tritonfunc.grad(lambda x: F.batch_norm(x, mean, var, training=True).square().sum())(XB)
    want_mean, want_var = MEAN.clone(), VAR.clone()
    want = torch.func.grad(lambda x: F.batch_norm(x, want_mean, want_var, training=True).square().sum())(XB)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close((mean, var), (want_mean, want_var))


def test_batch_norm_module_in_train_writes_buffers_back_through_functional_call():
    bn = torch.nn.BatchNorm2d(3).double()
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    want_state = {k: v.clone() for k, v in state.items()}
    got = tritonfunc.jit(lambda s, x: tritonfunc.functional_call(bn, s, (x,)))(state, XB)
    want = torch.func.functional_call(bn, want_state, (XB,))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(state, want_state)


def test_vmap_batch_norm_with_unbatched_running_stats_raises_torchs_error():
    mean, var = MEAN.clone(), VAR.clone()
    f = lambda x: F.batch_norm(x, mean, var, training=True)  # noqa: E731
    assert_same_error(lambda: tritonfunc.vmap(f)(XB.unsqueeze(1)), lambda: torch.func.vmap(f)(XB.unsqueeze(1)))
