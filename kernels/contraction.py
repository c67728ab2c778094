"""The contraction template: one tl.dot GEMM kernel, into which codegen writes a fused prologue and
epilogue.

In the spirit of Triton's matmul tutorial, a program computes one BM x BN tile of the output:

    pid = tl.program_id(0)                          # the tile, in grouped order (below)
    b = tl.program_id(1)                            # the batch (vmap's batch lands here)
    m = pid_m * BM + tl.arange(0, BM)[:, None]      # the tile's rows    [BM, 1]
    n = pid_n * BN + tl.arange(0, BN)[None, :]      # the tile's columns [1, BN]
    acc = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, K, BK):
        ka = k0 + tl.arange(0, BK)[None, :]         # k along a row of A     [1, BK]
        kb = k0 + tl.arange(0, BK)[:, None]         # k down a column of B   [BK, 1]
        a = <A at (b, m, ka)>                       # the prologue: A's producers, fused
        b_ = <B at (b, kb, n)>
        acc = tl.dot(a, b_, acc)
    <the epilogue at (b, m, n)>                     # bias, activation, residual, a row softmax, ...
    tl.store(...)

Codegen (codegen.py) writes the prologue and epilogue expressions from the graph; this module holds
what is the same in every contraction kernel: the tile table, the grouped program order, the k
loop and the tl.dot call for each dtype, and the outer loop of an epilogue that writes an outer
product.  Sizes and strides are literals of each generated kernel (every generated kernel is
specialised to its shapes: tritonfunc's index expressions are symbolic with constant strides), block
sizes come from the table below.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Tiles:
    bm: int  # rows of the output tile
    bn: int  # columns of the output tile
    bk: int  # the k step
    group_m: int  # tiles of rows sharing their column tiles, in program order (L2 reuse of B)
    warps: int
    stages: int  # software pipelining of the k loop's loads (sm_90)


# sm_90 (H100) configurations, per dtype, after the ones Triton's matmul tutorial tunes for it: large
# tiles for the tensor cores, 3 pipelined stages.  Not yet measured on a lent GPU: when one is lent,
# time the alternatives (perf/suite.py's ensemble and per-sample gradient workloads) and update.
# fp32 runs as tf32 only when torch would (torch.backends.cuda.matmul.allow_tf32), else as IEEE fp32
# FMAs (no tensor cores); fp64 tl.dot is IEEE on the DMMA units.
SM90 = {
    torch.float16: Tiles(128, 128, 64, 8, 8, 3),
    torch.bfloat16: Tiles(128, 128, 64, 8, 8, 3),
    torch.float32: Tiles(128, 128, 32, 8, 8, 3),
    torch.float64: Tiles(64, 64, 16, 8, 4, 3),
}
# Under the interpreter a program costs ~1 ms plus ~30 us per op, whatever its tile: 32 x 32 tiles
# keep the test sizes at a few programs each while still running several tiles, k steps and masks.
INTERPRETER = Tiles(32, 32, 32, 4, 4, 1)

MIN_TILE = 16  # tl.dot's smallest M, N and K on sm_90 (triton 3.6): smaller sizes are masked tiles
# A tile of the outer loop of an outer-product epilogue holds BM * BN * BE values; BE contiguous
# elements per row (8 fp32: one 32-byte sector) keep its stores whole sectors.
OUTER_TILE = 16384
MIN_OUTER_BLOCK = 8


def pow2(n: int) -> int:
    return 1 << max(0, (max(n, 1) - 1).bit_length())


def choose_tiles(m: int, n: int, k: int, dtype: torch.dtype, target: str, whole_rows: bool, outer: bool) -> Tiles:
    """The tile of one contraction kernel: the target's configuration, shrunk to the problem (never
    below tl.dot's 16), BN covering all N when the epilogue reduces along rows (`whole_rows`), and
    BM * BN small enough for an outer-product epilogue's 3-d tiles (`outer`)."""
    base = INTERPRETER if target == "interpreter" else SM90[dtype]
    bn = max(MIN_TILE, pow2(n)) if whole_rows else max(MIN_TILE, min(base.bn, pow2(n)))
    bm = max(MIN_TILE, min(base.bm, pow2(m)))
    if whole_rows:  # the row is one tile: keep the accumulator within about base.bm * base.bn values
        bm = max(MIN_TILE, min(bm, (base.bm * base.bn) // bn))
    if outer:
        while bm * bn * MIN_OUTER_BLOCK > OUTER_TILE and bm > MIN_TILE:
            bm //= 2
        while bm * bn * MIN_OUTER_BLOCK > OUTER_TILE and bn > MIN_TILE and not whole_rows:
            bn //= 2
    bk = max(MIN_TILE, min(base.bk, pow2(k)))
    warps = base.warps if bm * bn >= 128 * 64 else 4
    return replace(base, bm=bm, bn=bn, bk=bk, warps=warps)


def outer_block(tiles: Tiles, extent: int) -> int:
    """BE: the block of an outer-product epilogue's loop."""
    return max(1, min(pow2(extent), max(MIN_OUTER_BLOCK, OUTER_TILE // (tiles.bm * tiles.bn))))


def program_order(tiles_m: int, tiles_n: int, group_m: int, batch_on_axis0: bool) -> list[str]:
    """The lines mapping the program id to (pid_m, pid_n) and the batch b.

    Grouped order, as in the tutorial: consecutive programs walk `group_m` tiles of rows for each tile
    of columns, so the columns of B they load stay in L2 while they are reused."""
    lines = ["pid = tl.program_id(0)"]
    if batch_on_axis0:  # more batches than grid axis 1 allows
        lines += [f"b = pid // {tiles_m * tiles_n}", f"pid = pid % {tiles_m * tiles_n}"]
    else:
        lines += ["b = tl.program_id(1)"]
    if tiles_n == 1:
        return lines + ["pid_m = pid", "pid_n = 0"]
    if tiles_m == 1:
        return lines + ["pid_m = 0", "pid_n = pid"]
    return lines + [
        f"group = pid // {group_m * tiles_n}",
        f"first_m = group * {group_m}",
        f"group_m = tl.minimum({tiles_m} - first_m, {group_m})",
        "pid_m = first_m + (pid % group_m)",
        f"pid_n = (pid % {group_m * tiles_n}) // group_m",
    ]


def dot_call(a: str, b: str, acc: str, dtype: torch.dtype, tf32: bool) -> str:
    """acc + a @ b, accumulated in fp32 (fp64 for fp64).  Operands arrive in the kernel's compute type
    (fp32 for half precision, already rounded to it) and are narrowed for the tensor cores here."""
    if dtype == torch.float64:
        return f'tl.dot({a}, {b}, {acc}, input_precision="ieee", out_dtype=tl.float64)'
    if dtype == torch.float32:
        precision = "tf32" if tf32 else "ieee"
        return f'tl.dot({a}, {b}, {acc}, input_precision="{precision}", out_dtype=tl.float32)'
    if dtype == torch.float16:
        return f"tl.dot({a}.to(tl.float16), {b}.to(tl.float16), {acc}, out_dtype=tl.float32)"
    if dtype == torch.bfloat16:
        return f"_dot_bf16({a}, {b}, {acc})"
    raise NotImplementedError(f"tritonfunc: no tl.dot for {dtype}")


# Helpers a contraction kernel's module gets when it calls them.
HELPERS = {
    "_dot_bf16": """
# The interpreter computes bf16 on the bit patterns (TRITON_NOTES.md): there the operands, exact
# bf16 values held in fp32, are multiplied in fp32, which gives the same products; compiled, they
# go to the tensor cores as bf16.  The flag is read when this module is imported.
_INTERPRETED = tl.constexpr(__import__("os").environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def _dot_bf16(a, b, acc):
    if _INTERPRETED:
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float32)
    else:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc, out_dtype=tl.float32)
""",
}


def matmul_allows_tf32() -> bool:
    """Whether torch's own float32 matmuls may use TF32 on CUDA (torch's default: no).  torch's
    matmul `fp32_precision` answers for every way of setting it (itself, the global setting it
    defers to, the legacy allow_tf32 flag, set_float32_matmul_precision); reading the legacy flag
    instead raises once the newer settings were used.  Torch releases without it have the flag."""
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if precision is None:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    return precision == "tf32"
