"""Random operators and factories.  torch.randn(3) or torch.arange(5) take no tensor, so they never
reach a Tracer: the tracing mode (trace.py) catches them and calls these."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import _disable_current_modes

from .. import primitives as P
from ..graph import Builder, Var
from . import aten


def _draw_seed(generator) -> torch.Tensor:
    """A fresh Philox seed from torch's generator, so torch.manual_seed makes runs repeatable."""
    with _disable_current_modes():  # an enclosing trace's random-op mode must not catch this draw
        return torch.randint(0, 2**62, (), dtype=torch.int64, generator=generator)


def _random_values(b: Builder, shape, dtype, normal: bool, generator=None, data: Var | None = None) -> Var:
    """Random values; `data` is the tensor argument the draw is for (bernoulli's p), which vmap's
    "same" randomness refuses when batched."""
    seed = b.const(_draw_seed(generator))
    inputs = [seed] if data is None else [seed, data]
    return b.emit(P.rand, inputs, shape=tuple(shape), dtype=dtype, normal=normal)


def lower_random(b: Builder, func, out, args, kwargs):
    """A seeded random op, tensors given as vars; `out` is its result on meta tensors.  Returns the
    result var(s), or None for an op without a fused lowering (it then runs as a torch call).
    For in-place fills (bernoulli_, uniform_, normal_) the result is the new value of args[0]."""
    packet = func.overloadpacket
    generator = kwargs.get("generator")
    out = out[0] if isinstance(out, tuple) else out
    if packet in (aten.rand, aten.rand_like, aten.randn, aten.randn_like):
        return _random_values(b, out.shape, out.dtype, packet in (aten.randn, aten.randn_like), generator)
    if packet is aten.bernoulli and func is not aten.bernoulli.p:
        p = b.operand(args[0], out.dtype, out.shape)
        u = _random_values(b, out.shape, out.dtype, False, generator, data=p)
        return b.convert(b.lt(u, p), dtype=out.dtype)
    if func is aten.bernoulli.p:
        u = _random_values(b, out.shape, out.dtype, False, generator)
        return b.convert(b.lt(u, b.like(u, args[1])), dtype=out.dtype)
    if packet is aten.native_dropout:
        x, p, train = args[0], args[1], args[2]
        if not train:
            return x, b.full(True, torch.bool, x.shape)
        keep = b.gt(_random_values(b, x.shape, x.dtype, False, generator), b.like(x, p))
        scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
        return b.mul(b.mul(b.convert(keep, dtype=x.dtype), x), b.like(x, scale)), keep
    if packet in (aten.bernoulli_, aten.uniform_, aten.normal_) and isinstance(args[0], Var):
        # In-place fills of a fresh tensor (how dropout and nn.init draw).
        shape, dtype = args[0].shape, args[0].dtype
        params = list(args[1:]) + [kwargs[k] for k in ("p", "from", "to", "mean", "std") if k in kwargs]
        if packet is aten.bernoulli_:
            p = b.operand(params[0] if params else 0.5, dtype, shape)
            return b.convert(b.lt(_random_values(b, shape, dtype, False, generator), p), dtype=dtype)
        lo, hi = (params + [0.0, 1.0][len(params) :])[:2]
        draw = _random_values(b, shape, dtype, packet is aten.normal_, generator)
        return b.add(b.like(draw, lo), b.mul(b.like(draw, hi if packet is aten.normal_ else hi - lo), draw))
    raise NotImplementedError(f"tritonfunc: random operator {func} is not supported")


def lower_factory(b: Builder, func, out, args, kwargs) -> Var:
    """torch.arange/zeros/ones/full/eye/empty inside a traced function: values computed in the kernel
    (iota and constants) instead of tensors built by torch and read from memory."""
    packet = func.overloadpacket
    if packet is aten.arange:
        start, step = (0, 1) if len(args) == 1 else (args[0], args[2] if len(args) > 2 else 1)
        count = b.iota(shape=out.shape, dim=0, dtype=torch.int64 if not out.dtype.is_floating_point else out.dtype)
        values = b.add(b.mul(count, b.like(count, step)), b.like(count, start))
        return b.cast(values, out.dtype)
    if packet is aten.eye:
        rows = b.iota(shape=out.shape, dim=0, dtype=torch.int64)
        return b.cast(b.eq(rows, b.iota(shape=out.shape, dim=1, dtype=torch.int64)), out.dtype)
    value = {aten.ones: 1, aten.full: args[1] if len(args) > 1 else 0, aten.scalar_tensor: args[0]}.get(packet, 0)
    return b.full(value, out.dtype, out.shape)


FACTORIES = {aten.arange, aten.zeros, aten.ones, aten.full, aten.eye, aten.empty, aten.scalar_tensor}
