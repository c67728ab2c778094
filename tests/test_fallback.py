"""The opaque fallback: ops without a fused lowering run as torch calls between the generated kernels.

Their derivatives and batching rules come from torch.func applied to that one op, so every transform
and composition works through them; the kernels on either side still fuse.  The oracle is torch.func
on the same function.
"""

import warnings

import pytest
import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same, check_transforms, make
from vmap_helpers import check_vmap

import tritonfunc
from tritonfunc import fallback

pytestmark = pytest.mark.filterwarnings("ignore::tritonfunc.fallback.NotFusedWarning")

W = make(3, 2, 3, 3, seed=1)  # conv weight: 3 out channels, 2 in, 3x3


def conv_chain(x, w):
    y = F.conv2d((x * 1.5).sin(), w)
    return (y.tanh() * y).sum()


def linalg_mix(a):
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    return torch.linalg.inv(a @ a.transpose(-1, -2) + eye).sin().sum()


# (name, function of the arguments, arguments): ops that stay torch calls, with fused work around them.
OPAQUE_CASES = [
    ("conv2d", conv_chain, (make(2, 2, 5, 5), W)),
    ("max_pool2d", lambda x: F.max_pool2d(x.exp(), 2).sum(), (make(2, 3, 4, 4),)),
    ("sort", lambda x: (torch.sort(x, -1).values * torch.arange(5.0, dtype=x.dtype)).sum(), (make(3, 5),)),
    ("topk", lambda x: torch.topk(x.cos(), 2, dim=-1).values.sum(), (make(3, 5),)),
    ("logcumsumexp", lambda x: torch.logcumsumexp(x * 2, 1).sum(), (make(3, 5),)),
    ("kthvalue", lambda x: torch.kthvalue(x, 2, dim=1).values.pow(2).sum(), (make(4, 5),)),
    ("linalg_inv", linalg_mix, (make(3, 3),)),
    # torch's reference leaves a 0-d operand unbroadcast, as a CPU scalar (functorch's OpInfo fmax)
    ("fmax_0d", lambda x, s: torch.fmax(x.sin(), s * 2).sum(), (make(3, 5), make(seed=2))),
]


@pytest.mark.parametrize("fn, args", [c[1:] for c in OPAQUE_CASES], ids=[c[0] for c in OPAQUE_CASES])
def test_opaque_op_matches_torch_func_under_every_transform(backend, fn, args):
    assert_same(tritonfunc.jit(fn)(*args), fn(*args))
    check_transforms(fn, *args)


@pytest.mark.parametrize("fn, args", [c[1:] for c in OPAQUE_CASES], ids=[c[0] for c in OPAQUE_CASES])
def test_opaque_op_under_vmap_of_grad(backend, fn, args):
    """Per-example gradients through the op: its batching rule is torch.func's vmap of its vjp."""
    batch = torch.stack([args[0], args[0] * 0.5 + 0.25, -args[0]])
    check_vmap(
        tritonfunc.grad(fn),
        batch,
        *args[1:],
        in_dims=(0,) + (None,) * (len(args) - 1),
        ref=torch.func.grad(fn),
        rtol=1e-7,
        atol=1e-9,
    )


def per_example_conv(x, w):
    return F.conv2d(x[None], w).sin().sum()


@pytest.mark.parametrize(
    "name, ours, theirs, args",
    [
        (
            "vmap_jacrev_grad_conv",
            tritonfunc.vmap(tritonfunc.jacrev(tritonfunc.grad(per_example_conv)), in_dims=(0, None)),
            torch.func.vmap(torch.func.jacrev(torch.func.grad(per_example_conv)), in_dims=(0, None)),
            (make(2, 2, 3, 3), make(2, 2, 2, 2, seed=3)),
        ),
        (
            "hessian_sort",
            tritonfunc.hessian(lambda x: (torch.sort(x).values * torch.arange(4.0, dtype=x.dtype)).exp().sum()),
            torch.func.hessian(lambda x: (torch.sort(x).values * torch.arange(4.0, dtype=x.dtype)).exp().sum()),
            (make(4),),
        ),
        (
            "vmap_vmap_grad_inv",
            tritonfunc.vmap(tritonfunc.vmap(tritonfunc.grad(linalg_mix))),
            torch.func.vmap(torch.func.vmap(torch.func.grad(linalg_mix))),
            (make(2, 2, 3, 3),),
        ),
        (
            "jacfwd_jacrev_grad_inv",
            tritonfunc.jacfwd(tritonfunc.jacrev(tritonfunc.grad(linalg_mix))),
            torch.func.jacfwd(torch.func.jacrev(torch.func.grad(linalg_mix))),
            (make(2, 2),),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_opaque_op_in_depth_three_compositions(backend, name, ours, theirs, args):
    assert_same(ours(*args), theirs(*args))


def test_conv_between_elementwise_chains_is_kernel_torch_call_kernel(interpreter):
    x = make(2, 2, 5, 5)
    with tritonfunc.record_launches() as rec:
        got = tritonfunc.jit(conv_chain)(x, W)
    assert_same(got, conv_chain(x, W))
    assert [launch.kind for launch in rec.launches] == ["kernel", "torch", "kernel"]
    assert rec.kernels == 2 and rec.torch_calls == 1
    assert rec.launches[1].name == "aten.convolution.default"
    # the torch call reads the first kernel's buffer and the weight, and writes one output
    assert rec.launches[1].bytes_read == (x.numel() + W.numel()) * 8
    assert rec.launches[1].bytes_written == 2 * 3 * 3 * 3 * 8


def test_explain_lists_the_torch_call():
    text = tritonfunc.explain(conv_chain)(make(2, 2, 5, 5), W)
    assert "3 step(s): 2 kernel(s), 1 torch call(s)" in text
    assert "torch call (not fused) aten.convolution.default" in text


def test_not_fused_warning_names_the_op_once():
    fallback._warned.discard("aten.special_i0e.default")
    f = tritonfunc.jit(lambda x: torch.special.i0e(x) + 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f(make(4))
        f(make(5))
    messages = [str(w.message) for w in caught if issubclass(w.category, fallback.NotFusedWarning)]
    assert messages == [
        "tritonfunc: aten.special_i0e.default has no fused lowering; it runs as a torch call between the "
        "generated kernels"
    ]


def test_opaque_op_with_integer_outputs_and_several_results(backend):
    """sort returns values and int64 indices: the indices pass through, only the values differentiate."""

    def f(x):
        values, indices = torch.sort(x, dim=-1, descending=True)
        return values * 2, indices

    x = make(3, 4)
    assert_same(tritonfunc.jit(f)(x), f(x))
    assert_same(tritonfunc.vmap(f)(x), torch.func.vmap(f)(x))
    _, got_fn = tritonfunc.vjp(lambda x: f(x)[0], x)
    _, want_fn = torch.func.vjp(lambda x: f(x)[0], x)
    ct = make(3, 4, seed=5)
    assert_same(got_fn(ct), want_fn(ct))


def test_value_dependent_shapes_keep_torch_func_errors():
    """nonzero has no fixed shape: vmap refuses it with torch.func's words, jit with tritonfunc's."""
    with pytest.raises(RuntimeError, match="data-independent"):
        tritonfunc.jit(lambda x: torch.nonzero(x))(make(4))
    with pytest.raises(NotImplementedError, match="output shape depends on tensor values"):
        tritonfunc.jit(lambda x: torch.masked_select(x, x > 0))(make(4))


def test_opaque_result_checked_against_its_shape_rule(interpreter, monkeypatch):
    """A torch call that returns something else than its shape rule promised fails loudly."""
    prim = fallback.aten_prim(torch.ops.aten.special_i0e.default)
    monkeypatch.setattr(prim, "impl", lambda x, call: (x[:1],))
    with pytest.raises(RuntimeError, match="promised f64\\[4\\]"):
        tritonfunc.jit(lambda x: torch.special.i0e(x) * 3)(make(4))


def test_fallback_rules_survive_torch_func_swapped_for_tritonfunc(backend, monkeypatch):
    """`torch.func.vmap = tritonfunc.vmap` (swapping one for the other) must not send a fallback op's
    batching, jvp or vjp rule back into tritonfunc: they use torch.func's own transforms."""
    fn = lambda x: torch.sort(x.sin(), -1).values * 2  # noqa: E731
    x, t = make(3, 5), make(3, 5, seed=2)
    want_vmap = torch.func.vmap(fn)(x)
    want_jvp = torch.func.jvp(fn, (x,), (t,))
    want_vjp = torch.func.vjp(fn, x)[1](t)
    for name in ("vmap", "jvp", "vjp"):
        monkeypatch.setattr(torch.func, name, getattr(tritonfunc, name))
    monkeypatch.setattr(torch, "vmap", tritonfunc.vmap)
    assert_same(tritonfunc.vmap(fn)(x), want_vmap)
    assert_same(tritonfunc.jvp(fn, (x,), (t,)), want_jvp)
    assert_same(tritonfunc.vjp(fn, x)[1](t), want_vjp)
