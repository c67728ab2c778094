"""The perf suite's workloads: what users of torch.func run, each written once.

A workload's `setup(device, **size)` returns `(args, program)`; `program(ft)` builds the composition
from `ft`'s transforms, where `ft` is `tritonfunc` or `torch.func`, so every provider runs the same
composition on the same float32 inputs. `gpu` sizes fill an H100; on the CPU they are only planned
(traced, scheduled and counted by `tritonfunc.explain`, on meta tensors); `cpu` sizes are run
through Triton's interpreter (about 1 ms per program instance: keep them tiny).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Workload:
    name: str
    doc: str  # one line, shown in the table and on the dashboard
    setup: Callable[..., tuple[tuple, Callable]]
    cpu: list[dict]  # run through the interpreter (tiny)
    gpu: list[dict]  # timed on a GPU; planned on the CPU
    composed: bool = True  # a composition of transforms: the ">= 5x torch.func eager" target applies
    contraction: bool = False  # contractions dominate: the roofline also counts flops over peak
    tags: tuple[str, ...] = field(default=())

    # Agreement with torch.func (atol is relative to the result's largest magnitude); contractions
    # sum in another order than cuBLAS/MKL, so they are held to 1e-3.
    @property
    def rtol(self) -> float:
        return 1e-3 if self.contraction else 1e-4

    @property
    def atol(self) -> float:
        return 1e-4 if self.contraction else 1e-5


def size_str(size: dict) -> str:
    """`batch=4096,classes=32768`; a tuple of layer widths reads `784-128-10`."""
    fmt = lambda v: "-".join(map(str, v)) if isinstance(v, tuple | list) else str(v)
    return ",".join(f"{k}={fmt(v)}" for k, v in size.items())


# ---------------------------------------------------------------------------------------------
# Elementwise: grad and Hessian-vector products.


def _elementwise(x):
    return (x.sin() * x.exp() + torch.tanh(x) * x).sum()


def grad_elementwise(device, n):
    return (torch.randn(n, device=device),), lambda ft: ft.grad(_elementwise)


def hvp_elementwise(device, n):
    x = torch.randn(n, device=device)
    return (x, torch.randn_like(x)), lambda ft: lambda x, v: ft.jvp(ft.grad(_elementwise), (x,), (v,))


# ---------------------------------------------------------------------------------------------
# Per-sample gradients: vmap(grad(loss)) over a batch, the parameters shared.


def _mlp_params(sizes, device, scale=1.0):
    """(weight, bias) per layer, torch.nn.Linear's initialisation."""
    params = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):
        layer = nn.Linear(d_in, d_out)
        params += [layer.weight.detach().to(device) * scale, layer.bias.detach().to(device)]
    return tuple(params)


def _mlp(params, x):
    *hidden, w, b = params
    for i in range(0, len(hidden), 2):
        x = torch.tanh(F.linear(x, hidden[i], hidden[i + 1]))
    return F.linear(x, w, b)


def _classifier_loss(params, x, t):
    """One example: the MLP's (or, with one layer, the linear model's) cross-entropy."""
    return F.cross_entropy(_mlp(params, x)[None], t[None])


def _per_sample_grad(default_sizes):
    def setup(device, batch, sizes=tuple(default_sizes)):
        params = _mlp_params(sizes, device)
        x = torch.randn(batch, sizes[0], device=device)
        t = torch.randint(0, sizes[-1], (batch,), device=device)
        return (params, x, t), lambda ft: ft.vmap(ft.grad(_classifier_loss), in_dims=(None, 0, 0))

    return setup


def _cross_entropy(z, t):
    return F.cross_entropy(z[None], t[None])


def psgrad_xent(device, batch, classes):
    args = (torch.randn(batch, classes, device=device), torch.randint(0, classes, (batch,), device=device))
    return args, lambda ft: ft.vmap(ft.grad(_cross_entropy))


def vmap_softmax(device, batch, n):
    return (torch.randn(batch, n, device=device),), lambda ft: ft.vmap(lambda x: torch.softmax(x, -1))


# ---------------------------------------------------------------------------------------------
# layer_norm and its gradient under vmap.


def _ln_args(device, batch, n):
    return torch.randn(batch, n, device=device), torch.randn(n, device=device), torch.randn(n, device=device)


def vmap_layer_norm(device, batch, n):
    program = lambda ft: ft.vmap(lambda x, w, b: F.layer_norm(x, x.shape, w, b), in_dims=(0, None, None))
    return _ln_args(device, batch, n), program


def _ln_weighted(x, w, b, g):
    return (F.layer_norm(x, x.shape, w, b) * g).sum()


def vmap_grad_layer_norm(device, batch, n):
    x, w, b = _ln_args(device, batch, n)
    args = (x, w, b, torch.randn_like(x))
    return args, lambda ft: ft.vmap(ft.grad(_ln_weighted), in_dims=(0, None, None, 0))


# ---------------------------------------------------------------------------------------------
# Jacobians: jacrev against jacfwd on wide (m < n) and tall (m > n) Jacobians of tanh(W x).


def _tanh_matvec(x, w):
    return torch.tanh(w @ x)


def _jacobian(transform: str):
    def setup(device, m, n):
        args = (torch.randn(n, device=device), torch.randn(m, n, device=device) / n**0.5)
        return args, lambda ft: getattr(ft, transform)(_tanh_matvec)

    return setup


# ---------------------------------------------------------------------------------------------
# Hessians of an MLP's prediction with respect to its input.


def _predict_scalar(params, x):
    return _mlp(params, x).squeeze(-1)


def _batch_loss(params, x, t):
    return F.cross_entropy(_mlp(params, x), t)


def hvp_mlp(device, batch, sizes):
    """The gradient and a Hessian-vector product of a batch MLP loss in its parameters: jvp(grad)."""
    params = _mlp_params(sizes, device)
    v = tuple(torch.randn_like(p) for p in params)
    x = torch.randn(batch, sizes[0], device=device)
    t = torch.randint(0, sizes[-1], (batch,), device=device)

    def program(ft):
        return lambda p, v, x, t: ft.jvp(lambda q: ft.grad(_batch_loss)(q, x, t), (p,), (v,))

    return (params, v, x, t), program


def batched_jacobians(device, batch, sizes):
    """Per-example Jacobians of an MLP in its input: vmap(jacrev)."""
    params = _mlp_params(sizes, device)
    x = torch.randn(batch, sizes[0], device=device)
    return (params, x), lambda ft: ft.vmap(ft.jacrev(_mlp, argnums=1), in_dims=(None, 0))


def _attention_block(params, x):
    """One self-attention block on one sequence x [seq, dim]: projections, softmax(q k^T / sqrt(d))
    v, output projection, and a squared-error loss."""
    wq, wk, wv, wo = params
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    weights = torch.softmax(q @ k.T / q.shape[-1] ** 0.5, -1)
    return ((weights @ v) @ wo.T).pow(2).mean()


def psgrad_attention(device, batch, seq, dim):
    params = tuple(torch.randn(dim, dim, device=device) / dim**0.5 for _ in range(4))
    x = torch.randn(batch, seq, dim, device=device)
    return (params, x), lambda ft: ft.vmap(ft.grad(_attention_block), in_dims=(None, 0))


def hessian_mlp(device, d_in, hidden):
    params = _mlp_params([d_in, hidden, hidden, 1], device)
    return (params, torch.randn(d_in, device=device)), lambda ft: ft.hessian(_predict_scalar, argnums=1)


def batched_hessian_mlp(device, batch, hidden, layers):
    params = _mlp_params([2] + [hidden] * layers + [3], device)
    x = torch.randn(batch, 2, device=device)
    return (params, x), lambda ft: ft.vmap(ft.jacfwd(ft.jacrev(_mlp, argnums=1), argnums=1), in_dims=(None, 0))


# ---------------------------------------------------------------------------------------------
# Model ensembling: vmap of functional_call over stacked parameters, one minibatch for all.


def ensemble_mlp(device, models, batch, sizes):
    def make():
        layers = []
        for d_in, d_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    nets = [make().to(device) for _ in range(models)]
    params, buffers = torch.func.stack_module_state(nets)
    params = {k: v.detach() for k, v in params.items()}  # no autograd graph for eager torch to record
    base = make().to("meta")

    def program(ft):
        return ft.vmap(lambda p, b, x: ft.functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))

    return (params, buffers, torch.randn(batch, sizes[0], device=device)), program


# ---------------------------------------------------------------------------------------------
# Forward only: tritonfunc.jit against eager torch (the demo's four functions, tritonfunc/demo.py).


def _elementwise_chain(x):
    """20 elementwise ops: one kernel, one read of x, one write."""
    a = torch.sin(x) * 1.5 + 0.25
    b = torch.cos(a) - x * 0.5
    c = torch.exp(-b.abs())
    d = torch.sqrt(c + 1.0) * a
    e = torch.maximum(d, -d * 0.25)
    return torch.log(e.abs() + 1e-3) * c + b


def _jit(fn, with_affine: bool = False):
    """tritonfunc.jit(fn) against fn itself (torch.func has no jit: eager torch is its provider)."""

    def setup(device, rows, cols):
        args = (torch.randn(rows, cols, device=device),)
        if with_affine:
            args += (torch.randn(cols, device=device), torch.randn(cols, device=device))
        return args, lambda ft: ft.jit(fn) if hasattr(ft, "jit") else fn

    return setup


def _layer_norm(x, w, b):
    return F.layer_norm(x, x.shape[-1:], w, b)


# ---------------------------------------------------------------------------------------------
# The table. CPU sizes are tiny on purpose (the interpreter); GPU sizes are those of the issue.

WORKLOADS = [
    Workload(
        "grad_elementwise",
        "grad of sum(sin(x) exp(x) + tanh(x) x)",
        grad_elementwise,
        cpu=[dict(n=4096)],
        gpu=[dict(n=1 << 24), dict(n=1 << 26)],
        composed=False,
    ),
    Workload(
        "hvp_elementwise",
        "jvp(grad(f)): gradient and Hessian-vector product of the same f",
        hvp_elementwise,
        cpu=[dict(n=4096)],
        gpu=[dict(n=1 << 24), dict(n=1 << 26)],
    ),
    Workload(
        "psgrad_linear",
        "per-sample gradients, linear model 784 -> 10, cross-entropy",
        _per_sample_grad([784, 10]),
        cpu=[dict(batch=4)],
        gpu=[dict(batch=4096)],
        contraction=True,
    ),
    Workload(
        "psgrad_mlp",
        "per-sample gradients, MLP 784 -> 128 -> 10 (tanh), cross-entropy",
        _per_sample_grad([784, 128, 10]),
        # the second CPU size is issue 9's proxy: a 2-layer MLP on tensor cores (M, N, K >= 16)
        cpu=[dict(batch=2), dict(batch=64, sizes=(32, 32, 16))],
        gpu=[dict(batch=4096)],
        contraction=True,
    ),
    Workload(
        "psgrad_attention",
        "per-sample gradients of a self-attention block (4 projections, softmax), squared error",
        psgrad_attention,
        cpu=[dict(batch=8, seq=16, dim=32)],
        gpu=[dict(batch=256, seq=128, dim=256)],
        contraction=True,
    ),
    Workload(
        "hvp_mlp",
        "jvp(grad(loss)): gradient and HVP of a batch MLP loss in its parameters",
        hvp_mlp,
        cpu=[dict(batch=64, sizes=(32, 32, 16))],
        gpu=[dict(batch=4096, sizes=(784, 512, 10))],
        contraction=True,
    ),
    Workload(
        "batched_jacobians",
        "vmap(jacrev(mlp)): per-example Jacobians of an MLP in its input",
        batched_jacobians,
        cpu=[dict(batch=64, sizes=(32, 32, 16))],
        gpu=[dict(batch=4096, sizes=(784, 128, 10))],
        contraction=True,
    ),
    Workload(
        "psgrad_xent",
        "vmap(grad(cross-entropy)) over the rows of the logits",
        psgrad_xent,
        cpu=[dict(batch=4, classes=32768)],
        gpu=[dict(batch=4096, classes=32768)],
    ),
    Workload(
        "vmap_softmax",
        "vmap(softmax) over rows",
        vmap_softmax,
        cpu=[dict(batch=4, n=32768)],
        gpu=[dict(batch=4096, n=32768)],
        composed=False,
    ),
    Workload(
        "vmap_layer_norm",
        "vmap(layer_norm) over rows (weight, bias shared)",
        vmap_layer_norm,
        cpu=[dict(batch=16, n=256)],
        gpu=[dict(batch=4096, n=8192)],
        composed=False,
    ),
    Workload(
        "vmap_grad_layer_norm",
        "vmap(grad(sum(layer_norm(x) * g))) over rows",
        vmap_grad_layer_norm,
        cpu=[dict(batch=16, n=256)],
        gpu=[dict(batch=4096, n=8192)],
    ),
    Workload(
        "jacrev",
        "jacrev of tanh(W x): Jacobian m x n",
        _jacobian("jacrev"),
        cpu=[dict(m=4, n=64), dict(m=64, n=4)],
        gpu=[dict(m=32, n=2048), dict(m=2048, n=32)],
        contraction=True,
    ),
    Workload(
        "jacfwd",
        "jacfwd of tanh(W x): Jacobian m x n",
        _jacobian("jacfwd"),
        cpu=[dict(m=4, n=64), dict(m=64, n=4)],
        gpu=[dict(m=32, n=2048), dict(m=2048, n=32)],
        contraction=True,
    ),
    Workload(
        "hessian_mlp",
        "hessian of an MLP d_in -> hidden -> hidden -> 1 (tanh) w.r.t. its input",
        hessian_mlp,
        cpu=[dict(d_in=4, hidden=8)],
        gpu=[dict(d_in=128, hidden=512)],
        contraction=True,
    ),
    Workload(
        "batched_hessian_mlp",
        "vmap(jacfwd(jacrev(predict))), MLP 2 -> hidden x layers -> 3 (tanh)",
        batched_hessian_mlp,
        cpu=[dict(batch=2, hidden=8, layers=2), dict(batch=4, hidden=32, layers=2)],
        gpu=[dict(batch=10000, hidden=512, layers=6)],
        contraction=True,
    ),
    Workload(
        "ensemble_mlp",
        "an ensemble of MLPs (ReLU) on one minibatch: vmap(functional_call)",
        ensemble_mlp,
        cpu=[dict(models=10, batch=2, sizes=(16, 8, 8, 4)), dict(models=4, batch=64, sizes=(32, 32, 16))],
        gpu=[dict(models=10, batch=4096, sizes=(784, 128, 128, 10))],
        composed=False,
        contraction=True,
    ),
    Workload(
        "host_overhead",
        "a cached call's host time: vmap(grad(cross-entropy)) over 8 x 16",
        psgrad_xent,
        cpu=[dict(batch=8, classes=16)],
        gpu=[dict(batch=8, classes=16)],
        tags=("host",),
    ),
    Workload(
        "jit_elementwise_chain",
        "tritonfunc.jit of a 20-op elementwise chain (the demo's)",
        _jit(_elementwise_chain),
        cpu=[dict(rows=64, cols=1000)],
        gpu=[dict(rows=16384, cols=8192)],
        composed=False,
    ),
    Workload(
        "jit_softmax",
        "tritonfunc.jit of a row softmax",
        _jit(lambda x: torch.softmax(x, -1)),
        cpu=[dict(rows=64, cols=1000)],
        gpu=[dict(rows=16384, cols=8192)],
        composed=False,
    ),
    Workload(
        "jit_layer_norm",
        "tritonfunc.jit of layer_norm with weight and bias",
        _jit(_layer_norm, with_affine=True),
        cpu=[dict(rows=64, cols=1000)],
        gpu=[dict(rows=16384, cols=8192)],
        composed=False,
    ),
    Workload(
        "jit_logsumexp",
        "tritonfunc.jit of a row logsumexp",
        _jit(lambda x: torch.logsumexp(x, -1)),
        cpu=[dict(rows=64, cols=1000)],
        gpu=[dict(rows=16384, cols=8192)],
        composed=False,
    ),
]

BY_NAME = {w.name: w for w in WORKLOADS}
