"""The ahead-of-time sm_90 (H100) compile check, which runs without a GPU.

Triton's interpreter accepts kernels that a GPU compile rejects (TRITON_NOTES.md); the suite relies
on `tritonfunc.aot.compile_sm90` to catch those.  These tests show that it does, on hand-written
kernels with known GPU-only errors, and that it accepts a valid kernel and the generated ones.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

import tritonfunc
from tritonfunc import aot, runtime

SIGNATURE = (("x_ptr", "*fp32"), ("out_ptr", "*fp32"))

KERNEL = """
import triton
import triton.language as tl


@triton.jit
def {name}(x_ptr, out_ptr):
    o = tl.arange(0, {block})
    x = tl.load(x_ptr + o)
    tl.store(out_ptr + o, {value})
"""


def write_kernel(tmp_path, name, block=4, value="x * x"):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(KERNEL.format(name=name, block=block, value=value)))
    return str(path)


@pytest.mark.parametrize(
    "name, block, value, message",
    [
        pytest.param("square_with_pow", 4, "x ** 2", r"\*\*", id="pow_operator"),
        pytest.param("arange_of_three", 3, "x", "power of 2", id="non_power_of_2_arange"),
    ],
)
def test_gpu_only_error_is_caught(tmp_path, name, block, value, message):
    """Errors the interpreter would accept raise RuntimeError naming sm_90 and the compiler's reason."""
    path = write_kernel(tmp_path, name, block, value)
    with pytest.raises(RuntimeError, match="sm_90") as info:
        aot.compile_sm90(path, name, SIGNATURE)
    assert name in str(info.value)
    assert info.match(message)


def test_valid_kernel_compiles_and_reports_metadata(tmp_path):
    """A valid kernel compiles for sm_90 and returns its metadata."""
    path = write_kernel(tmp_path, "square_ok")
    meta = aot.compile_sm90(path, "square_ok", SIGNATURE)
    assert isinstance(meta, dict)
    assert "num_warps" in meta
    assert isinstance(meta["num_warps"], int) and meta["num_warps"] >= 1


def test_worker_survives_a_failed_compile(tmp_path):
    """After a kernel fails to compile, the next valid one still compiles (the worker keeps serving)."""
    bad = write_kernel(tmp_path, "bad_then_good", 4, "x ** 3")
    with pytest.raises(RuntimeError):
        aot.compile_sm90(bad, "bad_then_good", SIGNATURE)
    good = write_kernel(tmp_path, "good_after_bad")
    assert "num_warps" in aot.compile_sm90(good, "good_after_bad", SIGNATURE)


def test_generated_kernels_compile_for_sm90(interpreter):
    """Kernels that tritonfunc.jit generated (pointwise and rows, fp32 and fp64) compile for sm_90."""

    def f(x, y):
        return torch.softmax(x, -1) * y.sum(-1, keepdim=True), (x.double() * 3).tanh()

    with tritonfunc.record_launches() as rec:
        tritonfunc.jit(f)(torch.randn(8, 16), torch.randn(8, 16))
    names = {launch.name for launch in rec.launches}
    sources = {launch.source for launch in rec.launches}
    kernels = [ks for ks in runtime.GENERATED.values() if ks.source in sources]
    assert {ks.name for ks in kernels} == names and kernels
    for ks in kernels:
        meta = runtime.compile_for_sm90(ks)
        assert "num_warps" in meta


def test_a_32k_column_float32_softmax_fits_the_registers(interpreter):
    """The one-pass row kernel of 32768 float32 columns (codegen.row_tile_limit) compiles for the
    H100 within its registers: ptxas reports at most a few dozen bytes spilled."""
    from tritonfunc.trace import trace

    x = torch.empty(64, 32768, device="meta")
    graph = trace(lambda x: torch.softmax(x, -1), (x,), {}, device="cuda").graph
    (step,) = runtime.program_for(graph, [x], "sm90").kernel_steps
    assert "for c0 in range(" not in step.source.source
    meta = runtime.compile_for_sm90(step.source, usage=True)
    assert meta["registers"] is not None and meta["registers"] <= 128
    assert meta["spills"] is not None and meta["spills"] <= 64
