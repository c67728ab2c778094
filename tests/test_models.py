"""Real model patterns at small sizes against torch.func: per-sample gradients (vmap of grad over
functional_call) of a small CNN and of a one-block transformer language model, an ensemble of models
with buffers (stack_module_state and vmap of functional_call), and torch.nn.functional's common losses
and activations under grad and vmap(grad).  float64 throughout; ops not yet fused run as torch calls
(their NotFusedWarning is expected here)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.func
import torch.nn as nn
import torch.nn.functional as F
from autodiff_helpers import assert_same, make

import tritonfunc
from tritonfunc.fallback import NotFusedWarning

pytestmark = pytest.mark.filterwarnings(f"ignore::{NotFusedWarning.__module__}.{NotFusedWarning.__name__}")


def per_sample_grads(T, model, params, buffers, loss_fn, *batch):
    """vmap over the batch of grad of one example's loss, the model run by functional_call."""

    def loss(p, *example):
        inputs, target = [e.unsqueeze(0) for e in example[:-1]], example[-1].unsqueeze(0)
        return loss_fn(T.functional_call(model, (p, buffers), tuple(inputs)), target)

    return T.vmap(T.grad(loss), in_dims=(None, *[0] * len(batch)))(params, *batch)


def check_per_sample_grads(model, loss_fn, *batch):
    model = model.double().eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    got = per_sample_grads(tritonfunc, model, params, buffers, loss_fn, *batch)
    want = per_sample_grads(torch.func, model, params, buffers, loss_fn, *batch)
    assert_same(got, want, "per-sample gradients")


# -- a small CNN -------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv1(x))), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def test_cnn_per_sample_gradients():
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # running statistics of a trained model
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x, y = make(4, 1, 8, 8), torch.tensor([0, 2, 1, 2])
    check_per_sample_grads(model, F.cross_entropy, x, y)


# -- a one-block transformer language model ---------------------------------------------------------


class Block(nn.Module):
    """Pre-norm attention and MLP; attention by hand or through F.scaled_dot_product_attention, layer
    or RMS norm, a GELU or a SwiGLU MLP, the output head tied to the embedding."""

    def __init__(self, vocab=11, dim=8, heads=2, sdpa=False, rms=False, swiglu=False):
        super().__init__()
        self.heads, self.sdpa, self.swiglu = heads, sdpa, swiglu
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(6, dim) * 0.1)
        self.norm1 = nn.RMSNorm(dim) if rms else nn.LayerNorm(dim)
        self.norm2 = nn.RMSNorm(dim) if rms else nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.gate = nn.Linear(dim, 2 * dim, bias=False) if swiglu else None
        self.down = nn.Linear(2 * dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def attention(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
            causal = torch.ones(t, t, dtype=torch.bool).tril()
            out = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        x = x + self.attention(self.norm1(x))
        h = self.norm2(x)
        h = F.silu(self.gate(h)) * self.up(h) if self.swiglu else F.gelu(self.up(h))
        x = x + self.down(h)
        return self.head(self.norm_out(x))


def lm_loss(logits, tokens):
    """Next-token cross-entropy."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="attention_by_hand-layer_norm-gelu"),
        pytest.param({"sdpa": True, "rms": True, "swiglu": True}, id="sdpa-rms_norm-swiglu"),
    ],
)
def test_transformer_lm_per_sample_gradients(options):
    torch.manual_seed(1)
    model = Block(**options)
    tokens = torch.randint(0, 11, (4, 5))

    def loss(logits, target):
        return lm_loss(logits, target)

    # the example's tokens are both the input and the target
    check_per_sample_grads(model, loss, tokens, tokens)


def test_transformer_lm_gradient_of_the_batch_loss():
    torch.manual_seed(2)
    model = Block(sdpa=True).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    tokens = torch.randint(0, 11, (3, 6))
    f = lambda T: T.grad(lambda p: lm_loss(T.functional_call(model, p, (tokens,)), tokens))(params)  # noqa: E731
    got = f(tritonfunc)
    assert_same(got, f(torch.func), "grad")
    assert "head.weight" not in got  # tied to embed.weight: one parameter, one gradient


# -- an ensemble of models with buffers --------------------------------------------------------------


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.bn = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def test_ensemble_of_models_with_buffers():
    torch.manual_seed(3)
    models = [BNNet().double().eval() for _ in range(3)]
    for m in models:
        with torch.no_grad():
            m.bn.running_mean.uniform_(-1, 1)
            m.bn.running_var.uniform_(0.5, 2)
    params, buffers = tritonfunc.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = make(4, 5)

    def run(T):
        forward = lambda p, b, x: T.functional_call(base, (p, b), (x,))  # noqa: E731
        outputs = T.vmap(forward, in_dims=(0, 0, None))(params, buffers, x)
        grads = T.vmap(T.grad(lambda p, b, x: forward(p, b, x).square().mean()), in_dims=(0, 0, None))(
            params, buffers, x
        )
        return outputs, grads

    assert_same(run(tritonfunc), run(torch.func), "ensemble")


# -- losses and activations --------------------------------------------------------------------------

N, C = 4, 3
LOGITS = make(N, C, seed=1)
CLASSES = torch.tensor([0, 2, 1, 2])
REAL_TARGET = make(N, C, seed=2)
PROBS = make(N, C, low=0.05, high=0.95, seed=3)
SIGNS = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
CLASS_WEIGHTS = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)

LOSSES = [
    ("mse", lambda x: F.mse_loss(x, REAL_TARGET)),
    ("l1", lambda x: F.l1_loss(x, REAL_TARGET)),
    ("smooth_l1", lambda x: F.smooth_l1_loss(x, REAL_TARGET, beta=0.5)),
    ("huber", lambda x: F.huber_loss(x, REAL_TARGET, delta=0.7)),
    ("cross_entropy", lambda x: F.cross_entropy(x, CLASSES)),
    ("cross_entropy_label_smoothing", lambda x: F.cross_entropy(x, CLASSES, label_smoothing=0.2)),
    ("cross_entropy_weights", lambda x: F.cross_entropy(x, CLASSES, weight=CLASS_WEIGHTS)),
    ("cross_entropy_ignore_index", lambda x: F.cross_entropy(x, CLASSES, ignore_index=2)),
    ("cross_entropy_probabilities", lambda x: F.cross_entropy(x, PROBS.softmax(-1))),
    ("nll", lambda x: F.nll_loss(F.log_softmax(x, -1), CLASSES, reduction="sum")),
    ("bce", lambda x: F.binary_cross_entropy(torch.sigmoid(x), PROBS)),
    ("bce_with_logits_pos_weight", lambda x: F.binary_cross_entropy_with_logits(x, PROBS, pos_weight=CLASS_WEIGHTS)),
    ("kl_div", lambda x: F.kl_div(F.log_softmax(x, -1), PROBS, reduction="batchmean")),
    ("kl_div_log_target", lambda x: F.kl_div(F.log_softmax(x, -1), PROBS.log(), reduction="sum", log_target=True)),
    ("margin_ranking", lambda x: F.margin_ranking_loss(x[:, 0], x[:, 1], SIGNS, margin=0.1)),
    ("hinge_embedding", lambda x: F.hinge_embedding_loss(x[:, 0], SIGNS, margin=0.5)),
    ("soft_margin", lambda x: F.soft_margin_loss(x[:, 0], SIGNS)),
    ("poisson_nll", lambda x: F.poisson_nll_loss(x, PROBS * 3)),
    ("poisson_nll_full", lambda x: F.poisson_nll_loss(x.exp(), PROBS * 3, log_input=False, full=True)),
    ("gaussian_nll", lambda x: F.gaussian_nll_loss(x, REAL_TARGET, PROBS)),
]


def check_grad_and_per_sample_grad(f, x):
    """grad of f at x, and vmap of grad over rows of x (each row a batch of one)."""
    assert_same(tritonfunc.grad(f)(x), torch.func.grad(f)(x), "grad")
    row = lambda r: f(r.unsqueeze(0).expand(x.shape))  # noqa: E731  (keeps the targets' shapes)
    assert_same(tritonfunc.vmap(tritonfunc.grad(row))(x), torch.func.vmap(torch.func.grad(row))(x), "vmap(grad)")


@pytest.mark.parametrize("loss", [pytest.param(f, id=n) for n, f in LOSSES])
def test_losses(loss):
    check_grad_and_per_sample_grad(loss, LOGITS)


ACTIVATIONS = [
    ("relu", F.relu),
    ("gelu", F.gelu),
    ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")),
    ("silu", F.silu),
    ("mish", F.mish),
    ("softplus", lambda x: F.softplus(x, beta=2.0, threshold=1.5)),
    ("elu", lambda x: F.elu(x, alpha=0.7)),
    ("leaky_relu", lambda x: F.leaky_relu(x, 0.1)),
    ("hardswish", F.hardswish),
    ("tanh", torch.tanh),
    ("sigmoid", torch.sigmoid),
    ("log_softmax", lambda x: F.log_softmax(x, -1)),
]
ACTIVATION_INPUT = make(4, 6, low=-4.0, high=4.0, seed=4)
OUT_WEIGHTS = make(4, 6, seed=5)


@pytest.mark.parametrize("act", [pytest.param(f, id=n) for n, f in ACTIVATIONS])
def test_activations(act):
    check_grad_and_per_sample_grad(lambda x: (act(x) * OUT_WEIGHTS).sum(), ACTIVATION_INPUT)
