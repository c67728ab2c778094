"""Random operators and factories.  torch.randn(3) or torch.arange(5) take no tensor, so they never
reach a Tracer: the tracing mode (trace.py) catches them and calls these.

Elementwise distributions are drawn in the kernel with Triton's Philox generator (the `rand`
primitive: uniform or normal values from a seed and each element's offset) and transformed there:
uniform, normal, bernoulli, exponential, geometric, log-normal, Cauchy, and the dropout masks.  The
seed is a graph input drawn from torch's generator (or the one passed) each time the graph runs,
so torch.manual_seed makes results repeatable, but the streams are not torch's own: values differ
from torch's, distributions do not.  Draws that are not elementwise (randint and random_, whose
integer ranges need exact uniformity; randperm, multinomial, poisson, binomial, gamma, ...) run
as torch calls between kernels, with a generator seeded from such a seed input, so they are
repeatable and differentiate and batch as torch.func does.  As in torch, sampled values carry no
derivative with respect to distribution parameters (normal's mean and std, bernoulli's p).
"""

from __future__ import annotations

import contextlib
import math
import threading

import torch

from .. import fallback
from .. import primitives as P
from ..graph import Builder, Seed, Var
from . import aten

# ---------------------------------------------------------------------------------------------
# Dropout: its noise is a fresh draw.  F.dropout fills an empty tensor in place (bernoulli_), which
# torch.func's vmap treats as a draw of its own (dropout has batching rules), not as an in-place
# fill of an unbatched tensor; trace.py marks the dropout functions' extent with this scope.

_scope = threading.local()


@contextlib.contextmanager
def dropout_scope():
    depth = getattr(_scope, "depth", 0)
    _scope.depth = depth + 1
    try:
        yield
    finally:
        _scope.depth = depth


def in_dropout() -> bool:
    return getattr(_scope, "depth", 0) > 0


# ---------------------------------------------------------------------------------------------
# Draws.


def _draw(b: Builder, shape, dtype: torch.dtype, normal: bool, generator=None) -> Var:
    """Uniform [0, 1) or standard normal values, computed in float32 (float64 for float64)."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    return b.emit(P.rand, [b.seed(Seed(generator))], shape=tuple(shape), dtype=work, normal=normal)


def _bind(func, args, kwargs) -> dict:
    """The op's arguments by schema name, defaults filled in."""
    arguments = func._schema.arguments
    bound = {a.name: v for a, v in zip(arguments, args)}
    bound.update(kwargs)
    for a in arguments:
        if a.name not in bound and a.has_default_value():
            bound[a.name] = a.default_value
    return bound


def _operand(b: Builder, x, like: Var) -> Var:
    return b.operand(x, like.dtype, like.shape)


def _uniform(b, shape, dtype, bound, generator):
    u = _draw(b, shape, dtype, False, generator)
    lo, hi = bound.get("from", 0.0), bound.get("to", 1.0)
    return u * (hi - lo) + lo


def _normal(b, shape, dtype, bound, generator):
    z = _draw(b, shape, dtype, True, generator)
    return z * _operand(b, bound.get("std", 1.0), z) + _operand(b, bound.get("mean", 0.0), z)


def _bernoulli(b, shape, dtype, bound, generator):
    u = _draw(b, shape, dtype, False, generator)
    p = bound.get("p", 0.5)
    if p is None or "p" not in bound:  # bernoulli(self): self holds the probabilities
        p = bound["self"]
    return b.lt(u, _operand(b, p, u))


def _exponential(b, shape, dtype, bound, generator):
    u = _draw(b, shape, dtype, False, generator)  # -log(1 - u) / lambda, 1 - u in (0, 1]
    return -P.log1p(-u) / bound.get("lambd", 1.0)


def _geometric(b, shape, dtype, bound, generator):
    u = _draw(b, shape, dtype, False, generator)  # the number of trials up to the first success
    return P.floor(P.log1p(-u) / math.log1p(-bound["p"])) + 1


def _log_normal(b, shape, dtype, bound, generator):
    return P.exp(_normal(b, shape, dtype, bound, generator))


def _cauchy(b, shape, dtype, bound, generator):
    u = _draw(b, shape, dtype, False, generator)
    return P.tan((u - 0.5) * math.pi) * bound.get("sigma", 1.0) + bound.get("median", 0.0)


SAMPLERS = {
    aten.rand: lambda b, shape, dtype, bound, gen: _draw(b, shape, dtype, False, gen),
    aten.rand_like: lambda b, shape, dtype, bound, gen: _draw(b, shape, dtype, False, gen),
    aten.randn: lambda b, shape, dtype, bound, gen: _draw(b, shape, dtype, True, gen),
    aten.randn_like: lambda b, shape, dtype, bound, gen: _draw(b, shape, dtype, True, gen),
    aten.uniform: _uniform,
    aten.uniform_: _uniform,
    aten.normal: _normal,
    aten.normal_: _normal,
    aten.normal_functional: _normal,
    aten.bernoulli: _bernoulli,
    aten.bernoulli_: _bernoulli,
    aten.exponential: _exponential,
    aten.exponential_: _exponential,
    aten.geometric: _geometric,
    aten.geometric_: _geometric,
    aten.log_normal: _log_normal,
    aten.log_normal_: _log_normal,
    aten.cauchy: _cauchy,
    aten.cauchy_: _cauchy,
}


def _g(x: float) -> str:
    """A double as torch's C++ messages print it (-1, 0.5, 1e-07)."""
    return f"{x:g}"


def check_params(func, args, kwargs) -> None:
    """torch's own argument errors for the elementwise draws, in its words (checked before the
    op's meta function runs, whose messages print numbers differently)."""
    packet, bound = func.overloadpacket, _bind(func, args, kwargs)
    name = packet.__name__.rstrip("_")
    std, p = bound.get("std"), bound.get("p")
    if name in ("normal", "normal_functional") and isinstance(std, (int, float)) and std < 0:
        raise RuntimeError(f"normal expects std >= 0.0, but found std {_g(std)}")
    if name == "uniform" and bound.get("from", 0.0) > bound.get("to", 1.0):
        raise RuntimeError(
            f"uniform_ expects to return a [from, to) range, but found from={_g(bound['from'])} > to={_g(bound['to'])}"
        )
    if name == "bernoulli" and isinstance(p, (int, float)) and not 0 <= p <= 1:
        raise RuntimeError(f"bernoulli_ expects p to be in [0, 1], but got p={_g(p)}")
    if name == "exponential" and not bound.get("lambd", 1.0) > 0:
        raise RuntimeError(f"exponential_ expects lambda > 0.0, but found lambda={_g(bound['lambd'])}")
    if name == "geometric" and not 0 < p < 1:
        raise RuntimeError(f"geometric_ expects p to be in (0, 1), but got p={_g(p)}")
    if name == "log_normal" and not bound.get("std", 1.0) > 0:
        raise RuntimeError(f"log_normal_ expects std > 0.0, but found std={_g(bound['std'])}")
    if name == "cauchy" and not bound.get("sigma", 1.0) > 0:
        raise RuntimeError(f"cauchy_ expects sigma > 0.0, but found sigma={_g(bound['sigma'])}")


def lower_random(b: Builder, func, out, args, kwargs):
    """A seeded random op, tensors given as vars; `out` is its result on meta tensors.

    Returns (result, written): the result var(s) (for an in-place fill, the new value of args[0])
    and, for a torch call that writes other arguments (rrelu's noise), their new values by the
    position of that argument among the op's tensor arguments.
    """
    generator = kwargs.get("generator")
    kwargs = {k: v for k, v in kwargs.items() if k != "generator"}
    sampler = SAMPLERS.get(func.overloadpacket)
    if packet_is(func, aten.native_dropout):
        return _native_dropout(b, args[0], args[1], args[2], generator), {}
    if sampler is None:  # not elementwise: torch draws it, from a seed input
        out_value, written = fallback.emit_aten_call(func, args, kwargs, out, seed=b.seed(Seed(generator)))
        if func._schema.arguments[0].alias_info is not None and func._schema.arguments[0].alias_info.is_write:
            return written.pop(0), written  # an in-place fill: the new value of self
        return out_value, written
    meta = out[0] if isinstance(out, tuple) else out
    bound = _bind(func, args, kwargs)
    values = sampler(b, meta.shape, meta.dtype, bound, generator)
    values = b.cast(values, meta.dtype)
    if values.dtype.is_floating_point:  # torch: no derivative with respect to the parameters
        values = P.stop_gradient(values)
    return values, {}


def packet_is(func, packet) -> bool:
    return func.overloadpacket is packet


def _native_dropout(b: Builder, x: Var, p: float, train, generator) -> tuple[Var, Var]:
    if not train:
        return x, b.full(True, torch.bool, x.shape)
    u = _draw(b, x.shape, x.dtype, False, generator)
    keep = b.gt(u, b.like(u, p))
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
    return b.convert(keep, dtype=x.dtype) * x * b.like(x, scale), keep


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
