"""Contractions: every matmul form is one `dot_general` (primitives.py).

torch reduces matmul, linear, einsum, tensordot, inner and the broadcasting matmul cases to mm, bmm,
mv, dot and addmm on views (expand, reshape, permute) before an op reaches a tracer; those views cost
nothing in a kernel, so each form lands here as one contraction with its operands re-indexed.
torch.outer (and ger) reach the tracer as a broadcast multiply: a contraction over no axes, which
is what `dot_general` expands into at that size anyway.
"""

from __future__ import annotations

import torch

from .. import primitives as P
from ..graph import Var
from . import aten, lowers

MM = dict(contract=((1,), (0,)), batch=((), ()))  # [M, K] x [K, N]
BMM = dict(contract=((2,), (1,)), batch=((0,), (0,)))  # [B, M, K] x [B, K, N]
DOT = dict(contract=((0,), (0,)), batch=((), ()))  # [K] x [K]
OUTER = dict(contract=((), ()), batch=((), ()))  # [M] x [N]


def one_dtype(op, *args, **kwargs) -> None:
    """torch's matmul kernels take operands of one dtype, not bool, and their meta functions (which
    gave the traced op its result) do not check: torch's own error for a mix, from one-element
    stand-ins of the operands.  Under vmap, torch.func's rules for the add* ops promote their input
    (`self`) to the matrices' dtype instead: there only the matrices must agree."""
    from ..trace import trace_stack  # noqa: PLC0415  (the tracer imports the lowerings)

    specs = [(len(a.shape), a.dtype) if isinstance(a, Var) else None for a in args]
    if op in _ADD_OPS and specs[0] and any(t.api == "vmap" for t in trace_stack()):
        specs[0] = (specs[0][0], specs[1][1])
    dtypes = {s[1] for s in specs if s}
    if len(dtypes) > 1 or torch.bool in dtypes:
        op(*[torch.zeros((1,) * s[0], dtype=s[1]) if s else a for s, a in zip(specs, args)], **kwargs)


_ADD_OPS = (aten.addmm, aten.addmv, aten.baddbmm, aten.addbmm, aten.addr)


def contract(b, x: Var, y: Var, dtype, **axes) -> Var:
    return P.dot_general(b.cast(x, dtype), b.cast(y, dtype), **axes)


def _scaled(b, value: Var, factor) -> Var:
    return value if factor == 1 else value * b.full(factor, value.dtype, value.shape)


def _plus_scaled_input(b, out, inp, x, y, axes, beta, alpha, zero_alpha_drops=False) -> Var:
    """beta * inp + alpha * (x . y), as torch's add* ops compute it: for half operands the product
    is accumulated, scaled and added in float32 and rounded once; beta == 0 ignores inp (even NaN
    in it), and alpha == 0 the product where torch's kernel skips it (`zero_alpha_drops`: addmm,
    addmv and addbmm, even with inf in an operand; baddbmm and addr compute it)."""
    wide = torch.float32 if out.dtype in (torch.float16, torch.bfloat16) else out.dtype
    terms = []
    if beta != 0:
        terms.append(_scaled(b, b.operand(inp, wide, out.shape), beta))
    if alpha != 0 or not zero_alpha_drops:
        prod = contract(b, x, y, out.dtype, **axes, **({} if wide == out.dtype else {"out_dtype": wide}))
        terms.append(b.broadcast_to(_scaled(b, prod, alpha), out.shape))
    total = terms[0] + terms[1] if len(terms) == 2 else terms[0] if terms else b.full(0, wide, out.shape)
    return b.cast(total, out.dtype)


@lowers(aten.mm)
def _mm(b, out, x, y):
    one_dtype(aten.mm, x, y)
    return contract(b, x, y, out.dtype, **MM)


@lowers(aten.bmm)
def _bmm(b, out, x, y):
    one_dtype(aten.bmm, x, y)
    return contract(b, x, y, out.dtype, **BMM)


@lowers(aten.mv)
def _mv(b, out, x, v):
    one_dtype(aten.mv, x, v)
    return contract(b, x, v, out.dtype, **MM)


@lowers(aten.dot, aten.vdot)
def _dot(b, out, x, y):
    one_dtype(aten.dot, x, y)
    return contract(b, x, y, out.dtype, **DOT)


@lowers(aten.addmm)
def _addmm(b, out, inp, x, y, *, beta=1, alpha=1):
    one_dtype(aten.addmm, inp, x, y, beta=beta, alpha=alpha)
    return _plus_scaled_input(b, out, inp, x, y, MM, beta, alpha, zero_alpha_drops=True)


@lowers(aten.addmv)
def _addmv(b, out, inp, x, v, *, beta=1, alpha=1):
    one_dtype(aten.addmv, inp, x, v, beta=beta, alpha=alpha)
    return _plus_scaled_input(b, out, inp, x, v, MM, beta, alpha, zero_alpha_drops=True)


@lowers(aten.baddbmm)
def _baddbmm(b, out, inp, x, y, *, beta=1, alpha=1):
    one_dtype(aten.baddbmm, inp, x, y, beta=beta, alpha=alpha)
    return _plus_scaled_input(b, out, inp, x, y, BMM, beta, alpha)


@lowers(aten.addbmm)
def _addbmm(b, out, inp, x, y, *, beta=1, alpha=1):
    """The sum of a batch of products: the batch axis is contracted too (one GEMM with K = B * K)."""
    one_dtype(aten.addbmm, inp, x, y, beta=beta, alpha=alpha)
    summed = dict(contract=((0, 2), (0, 1)), batch=((), ()))
    return _plus_scaled_input(b, out, inp, x, y, summed, beta, alpha, zero_alpha_drops=True)


@lowers(aten.addr)
def _addr(b, out, inp, u, v, *, beta=1, alpha=1):
    one_dtype(aten.addr, inp, u, v, beta=beta, alpha=alpha)
    return _plus_scaled_input(b, out, inp, u, v, OUTER, beta, alpha)


def contract_many(b, terms: list[tuple[Var, tuple]], out_letters: tuple) -> Var:
    """An einsum over vars: each term is (var, one letter per axis); the result has `out_letters`.
    Terms are contracted left to right, one dot_general per pair: letters both share and that are
    needed later are batch axes, those no one needs later are contracted, and a letter only one
    operand has and no one needs is summed out first."""
    sizes: dict = {}
    for v, letters in terms:
        for letter, n in zip(letters, v.shape):
            sizes[letter] = max(sizes.get(letter, 1), n)
    terms = [(_spread(v, ls, sizes), ls) for v, ls in terms]

    def sum_private(v, letters, needed):
        axes = tuple(i for i, letter in enumerate(letters) if letter not in needed)
        if not axes:
            return v, letters
        return b.reduce_sum(v, axes=axes), tuple(x for i, x in enumerate(letters) if i not in axes)

    var, letters = terms[0]
    for k, (other, other_letters) in enumerate(terms[1:], start=1):
        later = set(out_letters).union(*(set(ls) for _, ls in terms[k + 1 :]))
        var, letters = sum_private(var, letters, set(other_letters) | later)
        other, other_letters = sum_private(other, other_letters, set(letters) | later)
        shared = [x for x in letters if x in other_letters]
        batch = [x for x in shared if x in later]
        summed = [x for x in shared if x not in later]
        var = P.dot_general(
            var,
            other,
            contract=(tuple(letters.index(x) for x in summed), tuple(other_letters.index(x) for x in summed)),
            batch=(tuple(letters.index(x) for x in batch), tuple(other_letters.index(x) for x in batch)),
        )
        letters = (
            tuple(batch)
            + tuple(x for x in letters if x not in shared)
            + tuple(x for x in other_letters if x not in shared)
        )
    var, letters = sum_private(var, letters, set(out_letters))
    present = [x for x in out_letters if x in letters]
    return b.transpose(var, [letters.index(x) for x in present])


def _spread(v: Var, letters, sizes) -> Var:
    """v broadcast along its size-1 axes to the size the other terms give its letter."""
    shape = tuple(sizes[x] for x in letters)
    if shape == v.shape:
        return v
    return P.broadcast_in_dim(v, shape=shape, dims=tuple(range(len(shape))))


@lowers(aten._trilinear)
def _trilinear(b, out, i1, i2, i3, expand1, expand2, expand3, sumdim, unroll_dim=1):
    """The product of three tensors unsqueezed at their `expand` axes, summed over `sumdim`: F.bilinear
    lowers to it.  Each axis position is a letter; an operand lacks the letters it was expanded at."""
    rank = len(i1.shape) + len(expand1)
    terms = [
        (b.cast(v, out.dtype), tuple(d for d in range(rank) if d not in expand))
        for v, expand in ((i1, expand1), (i2, expand2), (i3, expand3))
    ]
    kept = tuple(d for d in range(rank) if d not in sumdim)
    return b.reshape(contract_many(b, terms, kept), out.shape)
