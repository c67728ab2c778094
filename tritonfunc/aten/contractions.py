"""Contractions: matmul forms, as a broadcast multiply and a reduction (memory-bound, but it fuses)."""

from __future__ import annotations

from .. import primitives as P
from ..graph import Var
from . import aten, lowers


def _matmul_vars(b, a: Var, c: Var, dtype) -> Var:
    """[..., M, K] @ [..., K, N] with equal batch dims -> [..., M, N]."""
    *batch, m, k = a.shape
    n = c.shape[-1]
    nb = len(batch)
    full_shape = (*batch, m, k, n)
    a3 = b.emit(P.broadcast_in_dim, [b.cast(a, dtype)], shape=full_shape, dims=(*range(nb), nb, nb + 1))
    c3 = b.emit(P.broadcast_in_dim, [b.cast(c, dtype)], shape=full_shape, dims=(*range(nb), nb + 1, nb + 2))
    return b.reduce(P.reduce_sum, b.emit(P.mul, [a3, c3]), (nb + 1,))


@lowers(aten.mm, aten.bmm)
def _mm(b, out, a, c):
    return _matmul_vars(b, a, c, out.dtype)


@lowers(aten.mv)
def _mv(b, out, a, v):
    return b.reshape(_matmul_vars(b, a, b.reshape(v, (v.shape[0], 1)), out.dtype), out.shape)


@lowers(aten.dot)
def _dot(b, out, a, c):
    return b.reduce(P.reduce_sum, b.emit(P.mul, [b.cast(a, out.dtype), b.cast(c, out.dtype)]), (0,))


@lowers(aten.addmm)
def _addmm(b, out, bias, a, c, *, beta=1, alpha=1):
    prod = _matmul_vars(b, a, c, out.dtype)
    if alpha != 1:
        prod = b.emit(P.mul, [prod, b.full(alpha, out.dtype, out.shape)])
    bias = b.operand(bias, out.dtype, out.shape)
    if beta != 1:
        bias = b.emit(P.mul, [bias, b.full(beta, out.dtype, out.shape)])
    return b.emit(P.add, [bias, prod]) if beta != 0 else prod
