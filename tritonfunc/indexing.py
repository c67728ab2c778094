"""Symbolic integer index expressions for generated kernels.

A kernel computes every value at an index tuple derived from its iteration variables (`o` for a
pointwise kernel, `r`/`c` for a row-reduction kernel).  View primitives (broadcast, transpose,
slice, reshape) only rewrite index tuples, so they cost no memory traffic.  An index component is
an affine sum of terms `((base // div) % mod) * coef`; the simplifier merges the terms that
unravel-then-ravel produces, so a contiguous round trip collapses back to `o`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    base: str  # an iteration variable, or a parenthesised opaque expression
    extent: int | None  # base takes values in [0, extent) on the lanes that matter
    deps: frozenset[str]  # iteration variables the base depends on
    div: int = 1
    mod: int | None = None
    coef: int = 1

    def bound(self) -> int | None:
        """Exclusive upper bound of (base // div) % mod."""
        q = None if self.extent is None else -(-self.extent // self.div)
        if self.mod is None:
            return q
        return self.mod if q is None else min(q, self.mod)

    def render(self) -> str:
        s = self.base
        if self.div != 1:
            s = f"({s} // {self.div})"
        if self.mod is not None:
            s = f"({s} % {self.mod})"
        if self.coef != 1:
            s = f"{s} * {self.coef}"
        return s


def _make_term(base, extent, deps, div=1, mod=None, coef=1) -> Term | None:
    """Builds a term, dropping a mod that can never wrap and a term that is always zero."""
    if coef == 0 or mod == 1:
        return None
    if extent is not None:
        if div >= extent:
            return None
        if mod is not None and div * mod >= extent:
            mod = None
    return Term(base, extent, deps, div, mod, coef)


@dataclass(frozen=True)
class Idx:
    const: int = 0
    terms: tuple[Term, ...] = ()

    @staticmethod
    def var(name: str, extent: int) -> Idx:
        t = _make_term(name, extent, frozenset([name]))
        return Idx(0, (t,) if t else ())

    @staticmethod
    def of(value: int) -> Idx:
        return Idx(int(value), ())

    @property
    def deps(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for t in self.terms:
            out |= t.deps
        return out

    def is_const(self) -> bool:
        return not self.terms

    def bound(self) -> int | None:
        """Exclusive upper bound of the expression (all coefs are non-negative here)."""
        hi = self.const
        for t in self.terms:
            b = t.bound()
            if b is None:
                return None
            hi += (b - 1) * t.coef
        return hi + 1

    def __add__(self, other: Idx | int) -> Idx:
        if isinstance(other, int):
            return Idx(self.const + other, self.terms)
        return Idx(self.const + other.const, self.terms + other.terms)._merged()

    def __mul__(self, k: int) -> Idx:
        if k == 0:
            return Idx.of(0)
        terms = tuple(Term(t.base, t.extent, t.deps, t.div, t.mod, t.coef * k) for t in self.terms)
        return Idx(self.const * k, terms)

    def _split(self, n: int) -> tuple[Idx, Idx] | None:
        """(multiple, rest) with self = multiple + rest, multiple divisible by n and 0 <= rest < n."""
        whole = tuple(t for t in self.terms if t.coef % n == 0)
        rest = Idx(self.const, tuple(t for t in self.terms if t.coef % n != 0))
        bound = rest.bound()
        if whole and rest.const >= 0 and bound is not None and bound <= n:
            return Idx(0, whole), rest
        return None

    def _factor(self, n: int) -> tuple[int, Idx, Idx] | None:
        """(c, y, rest) with self = c*y + rest, c > 1 dividing n, and 0 <= rest < c: the largest c."""
        for c in sorted({t.coef for t in self.terms if t.coef > 1 and n % t.coef == 0}, reverse=True):
            split = self._split(c)
            if split is not None:
                whole, rest = split
                y = Idx(0, tuple(Term(t.base, t.extent, t.deps, t.div, t.mod, t.coef // c) for t in whole.terms))
                return c, y, rest
        return None

    def __floordiv__(self, n: int) -> Idx:
        if n == 1:
            return self
        split = self._split(n)
        if split is not None:  # (n*k*X + rest) // n == k*X when rest < n
            whole, _ = split
            return Idx(0, tuple(Term(t.base, t.extent, t.deps, t.div, t.mod, t.coef // n) for t in whole.terms))
        whole = tuple(t for t in self.terms if t.coef % n == 0)
        if whole and len(whole) < len(self.terms) and self.const >= 0:  # (n*K + rest) // n == K + rest // n
            rest = Idx(self.const, tuple(t for t in self.terms if t.coef % n != 0))
            return Idx(0, tuple(Term(t.base, t.extent, t.deps, t.div, t.mod, t.coef // n) for t in whole)) + rest // n
        factor = self._factor(n)
        if factor is not None:  # (c*y + rest) // n == y // (n / c) when c divides n and rest < c
            c, y, _ = factor
            return y // (n // c)
        if self.const == 0 and len(self.terms) == 1:
            t = self.terms[0]
            if t.coef == 1 and (t.mod is None or t.mod % n == 0):
                new = _make_term(t.base, t.extent, t.deps, t.div * n, None if t.mod is None else t.mod // n)
                return Idx(0, (new,) if new else ())
        return self._opaque()._floordiv_simple(n)

    def __mod__(self, n: int) -> Idx:
        b = self.bound()
        if b is not None and b <= n and self.const >= 0:
            return self
        split = self._split(n)
        if split is not None:  # (n*k*X + rest) % n == rest when rest < n
            return split[1]
        whole = tuple(t for t in self.terms if t.coef % n == 0)
        if whole and len(whole) < len(self.terms):  # (n*K + rest) % n == rest % n
            return Idx(self.const, tuple(t for t in self.terms if t.coef % n != 0)) % n
        factor = self._factor(n)
        if factor is not None:  # (c*y + rest) % n == c * (y % (n / c)) + rest when c divides n and rest < c
            c, y, rest = factor
            return (y % (n // c)) * c + rest
        if self.const == 0 and len(self.terms) == 1:
            t = self.terms[0]
            if t.coef == 1 and (t.mod is None or t.mod % n == 0):
                new = _make_term(t.base, t.extent, t.deps, t.div, n)
                return Idx(0, (new,) if new else ())
        return self._opaque()._mod_simple(n)

    def _opaque(self) -> Idx:
        """Wraps a compound expression as a single base, so division applies to the whole sum."""
        return Idx(0, (Term(f"({self.render()})", self.bound(), self.deps),))

    def _floordiv_simple(self, n: int) -> Idx:
        t = self.terms[0]
        new = _make_term(t.base, t.extent, t.deps, n)
        return Idx(0, (new,) if new else ())

    def _mod_simple(self, n: int) -> Idx:
        t = self.terms[0]
        new = _make_term(t.base, t.extent, t.deps, 1, n)
        return Idx(0, (new,) if new else ())

    def _merged(self) -> Idx:
        """Merges ((b//d)%m)*k + ((b//(d*m))%m2)*(k*m) into ((b//d)%(m*m2))*k, to a fixed point."""
        terms = [t for t in self.terms if t is not None]
        changed = True
        while changed:
            changed = False
            for i, a in enumerate(terms):
                for j, b in enumerate(terms):
                    if i == j or a.base != b.base or a.mod is None:
                        continue
                    if b.div == a.div * a.mod and b.coef == a.coef * a.mod:
                        mod = None if b.mod is None else a.mod * b.mod
                        new = _make_term(a.base, a.extent, a.deps, a.div, mod, a.coef)
                        terms = [t for k, t in enumerate(terms) if k not in (i, j)]
                        if new is not None:
                            terms.append(new)
                        changed = True
                        break
                if changed:
                    break
        terms.sort(key=lambda t: (t.base, t.div))
        return Idx(self.const, tuple(terms))

    def render(self) -> str:
        parts = [t.render() for t in self.terms]
        if self.const or not parts:
            parts.append(str(self.const))
        return " + ".join(parts)


Index = tuple[Idx, ...]


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def ravel(index: Index, strides: tuple[int, ...]) -> Idx:
    flat = Idx.of(0)
    for i, s in zip(index, strides):
        flat = flat + i * s
    return flat


def unravel(flat: Idx, shape: tuple[int, ...]) -> Index:
    out = []
    for size, stride in zip(shape, contiguous_strides(shape)):
        out.append(Idx.of(0) if size <= 1 else (flat // stride) % size)  # an empty axis is never indexed
    return tuple(out)


def reshape_index(index: Index, out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> Index:
    """Maps an index into `out_shape` to the index into `in_shape` with the same row-major offset."""
    return unravel(ravel(index, contiguous_strides(out_shape)), in_shape)


def opaque(text: str, extent: int | None, deps: frozenset[str]) -> Idx:
    """An index given as source text, treated as an atom by the simplifier."""
    return Idx(0, (Term(f"({text})", extent, deps),))


def clamp(index: Idx, lo: int, hi: int) -> Idx:
    """min(max(index, lo), hi): where a fused select reads an operand at positions it discards
    (concatenate, pad), the read must still stay in bounds."""
    if hi <= lo:  # one position (a stacked piece of size 1): no variable left
        return Idx.of(lo)
    return opaque(f"tl.minimum(tl.maximum({index.render()}, {lo}), {hi})", hi + 1, index.deps)


def clamp_above(index: Idx, hi: int) -> Idx:
    return opaque(f"tl.minimum({index.render()}, {hi})", hi + 1, index.deps)


def reverse(index: Idx, n: int) -> Idx:
    """n - 1 - index: reading an axis of n elements backwards (flip)."""
    if index.is_const():
        return Idx.of(n - 1 - index.const)
    return opaque(f"{n - 1} - ({index.render()})", n, index.deps)
