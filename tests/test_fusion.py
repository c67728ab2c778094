"""Fusion: how many kernels a program becomes, and how many bytes they move.

Launch counts and byte counts come from `tritonfunc.record_launches()`, so every test here forces
the interpreter backend (the torch backend launches no kernels).  Values are still checked against
eager torch: a schedule that saves a launch by computing the wrong thing must fail.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import check

import tritonfunc

pytestmark = pytest.mark.usefixtures("interpreter")


def make(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def launches(f, *args):
    """Runs f through tritonfunc (checking its values) and returns the launch record."""
    with tritonfunc.record_launches() as rec:
        check(f, *args)
    return rec


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def softmax(x):
    e = (x - x.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


STEPS = [lambda t: t * 1.01, lambda t: t + 0.1, lambda t: t.sin(), lambda t: t.abs(), lambda t: t - 0.2]


def chain20(x):
    for i in range(20):
        x = STEPS[i % len(STEPS)](x)
    return x


def test_chain_of_20_elementwise_ops_is_one_launch():
    """Elementwise ops never need memory between them: 20 of them are one kernel."""
    x = make(16, 32)
    rec = launches(chain20, x)
    assert rec.count == 1
    assert rec.launches[0].name.startswith("pointwise_")


def test_softmax_is_one_launch_reading_input_once():
    """amax, exp, sum and divide over rows fuse; the input is read once and the output written once."""
    x = make(16, 32)
    rec = launches(softmax, x)
    assert rec.count == 1
    assert rec.launches[0].name.startswith("rows_")
    assert rec.bytes_read == x.numel() * x.element_size()
    assert rec.bytes_written == x.numel() * x.element_size()


@pytest.mark.parametrize(
    "fn",
    [
        pytest.param(lambda x: F.layer_norm(x, (32,)), id="layer_norm"),
        pytest.param(lambda x: torch.logsumexp(x, -1), id="logsumexp"),
        pytest.param(lambda x: torch.softmax(x, -1), id="torch_softmax"),
        pytest.param(lambda x: F.log_softmax(x, -1), id="log_softmax"),
        pytest.param(lambda x: (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True), id="standardize"),
    ],
)
def test_row_normalizations_are_one_launch(fn):
    """Row-wise composites (reductions feeding elementwise ops over the same rows) are one kernel."""
    x = make(16, 32)
    rec = launches(fn, x)
    assert rec.count == 1
    assert rec.bytes_read == nbytes(x)


def test_layer_norm_with_weight_and_bias_reads_each_once():
    """The weight and bias are broadcast over rows but read once each."""
    x, w, b = make(16, 32), make(32, seed=1), make(32, seed=2)
    rec = launches(lambda x, w, b: F.layer_norm(x, (32,), w, b), x, w, b)
    assert rec.count == 1
    assert rec.bytes_read == nbytes(x, w, b)
    assert rec.bytes_written == nbytes(x)


def test_reductions_over_the_same_rows_share_a_launch():
    """x.sum(-1) and x.amax(-1) are two outputs of one row kernel that reads x once."""
    x = make(16, 32)
    rec = launches(lambda x: (x.sum(-1), x.amax(-1), x.amin(-1)), x)
    assert rec.count == 1
    assert rec.bytes_read == nbytes(x)
    assert rec.bytes_written == 3 * 16 * x.element_size()


def test_elementwise_chain_moves_inputs_once_and_outputs_once():
    """Bytes moved by a fused elementwise program: each input read once, each output written once."""
    x, y = make(16, 32), make(16, 32, seed=1)
    rec = launches(lambda x, y: ((x * y + 1).exp(), (x - y).abs().sqrt(), x.sin() * y.cos()), x, y)
    assert rec.count == 1
    assert rec.bytes_read == nbytes(x, y)
    assert rec.bytes_written == 3 * nbytes(x)


def test_broadcast_input_is_counted_once():
    """A bias [8] added to [16, 8] is read as 8 elements, not 128."""
    x, bias = make(16, 8), make(8, seed=1)
    rec = launches(lambda x, b: x + b, x, bias)
    assert rec.count == 1
    assert rec.bytes_read == nbytes(x) + 8 * bias.element_size()
    assert rec.bytes_written == nbytes(x)


def test_float64_bytes_use_the_float64_itemsize():
    """Byte counts follow the dtypes: float64 in, float32 out."""
    x = make(16, 8, dtype=torch.float64)
    rec = launches(lambda x: (x * 2).float(), x)
    assert rec.count == 1
    assert rec.bytes_read == 16 * 8 * 8
    assert rec.bytes_written == 16 * 8 * 4


@pytest.mark.parametrize(
    "fn, shape",
    [
        pytest.param(lambda x: torch.softmax(x.sum(0), -1), (3, 4, 5), id="sum0_then_softmax_last"),
        pytest.param(lambda x: softmax(x.sum(1).T), (4, 6, 5), id="sum1_then_softmax_of_transpose"),
        pytest.param(lambda x: x / x.sum(0, keepdim=True) + x / x.sum(1, keepdim=True), (4, 8), id="rows_and_columns"),
        pytest.param(lambda x: x.sum(-1).amax(), (6, 8), id="reduction_of_reduction"),
        pytest.param(lambda x: (x - x.mean(0)).pow(2).sum(-1), (4, 8), id="column_mean_then_row_sum"),
    ],
)
def test_chained_reductions_over_different_axes_materialize(fn, shape):
    """A reduction feeding a reduction over another axis is stored first, and results stay right."""
    x = make(*shape).abs() + 0.1
    rec = launches(fn, x)
    assert rec.count >= 2


@pytest.fixture
def short_row_tile(monkeypatch):
    """Makes rows longer than 256 columns loop over 64-column blocks, so the looping row kernel is
    exercised at interpreter-friendly sizes (the real limit is schedule.MAX_ROW_TILE)."""
    from tritonfunc import codegen, schedule

    monkeypatch.setattr(schedule, "MAX_ROW_TILE", 256)
    monkeypatch.setattr(codegen, "LOOP_BLOCK_C", 64)
    return 256


def test_long_rows_loop_over_column_blocks(short_row_tile):
    """Rows longer than MAX_ROW_TILE are reduced in a loop over column blocks; softmax stays correct."""
    x = make(2, short_row_tile + 300) * 4
    rec = launches(softmax, x)
    assert rec.count == 1
    assert "for c0 in range(" in rec.launches[0].source


def test_float32_rows_up_to_twice_the_tile_are_one_pass(short_row_tile):
    """float32 rows fit twice the columns of float64 ones in registers (codegen.row_tile_limit): a
    softmax over them reads the row once, where float64 rows of the same length loop."""
    x = make(2, short_row_tile + 200).float() * 4
    one_pass = launches(softmax, x)
    assert "for c0 in range(" not in one_pass.launches[0].source
    assert one_pass.bytes_read == x.numel() * 4
    assert "for c0 in range(" in launches(softmax, x.double()).launches[0].source


@pytest.mark.parametrize(
    "fn",
    [
        pytest.param(lambda x: F.layer_norm(x, (x.shape[-1],)), id="layer_norm"),
        pytest.param(lambda x: torch.logsumexp(x, -1), id="logsumexp"),
        pytest.param(lambda x: (x.sum(-1), x.amax(-1), x.var(-1)), id="several_reductions"),
        pytest.param(lambda x: x.T.sum(0), id="reduce_transposed"),
    ],
)
def test_long_row_composites_are_correct(short_row_tile, fn):
    """The looping row kernel handles per-row stores, per-element stores and chained stages."""
    check(fn, make(3, short_row_tile + 5))


def test_long_row_nan_propagates(short_row_tile):
    """The looping amax accumulates with NaN propagation, like the single-tile one."""
    x = make(2, short_row_tile + 100)
    x[1, short_row_tile + 21] = float("nan")
    check(lambda x: (x.amax(-1), softmax(x)), x)


def test_explain_shows_graph_kernel_count_and_source():
    """explain() is the user's view of a compilation: the graph, how many kernels, their source."""
    text = tritonfunc.explain(softmax)(make(16, 32))
    assert "# graph" in text
    assert "reduce_max" in text and "reduce_sum" in text and "exp" in text
    assert "# 1 step(s): 1 kernel(s), 0 torch call(s)" in text
    assert "@triton.jit" in text
    assert "f32[16,32]" in text


def test_explain_counts_several_kernels():
    """A program that materializes an intermediate reports more than one kernel."""
    text = tritonfunc.explain(lambda x: torch.softmax(x.sum(0), -1))(make(3, 4, 5))
    assert "1 kernel(s)" not in text
    assert text.count(": kernel ") >= 2


def test_explain_does_not_launch():
    """explain() compiles to text only."""
    with tritonfunc.record_launches() as rec:
        tritonfunc.explain(softmax)(make(16, 32))
    assert rec.count == 0


def test_record_launches_keeps_the_source():
    """Each launch record carries the kernel's source, which defines the recorded kernel name."""
    x = make(16, 32)
    rec = launches(softmax, x)
    (launch,) = rec.launches
    assert "@triton.jit" in launch.source
    assert f"def {launch.name}(" in launch.source
    assert launch.grid and all(isinstance(g, int) and g >= 1 for g in launch.grid)


def test_record_launches_nests_and_stops_at_exit():
    """Nested recorders both see inner launches; nothing is recorded after the block ends."""
    f = tritonfunc.jit(lambda x: x * 3)
    x = make(4, 8)
    with tritonfunc.record_launches() as outer:
        f(x)
        with tritonfunc.record_launches() as inner:
            f(x)
    f(x)
    assert inner.count == 1
    assert outer.count == 2
    assert outer.bytes_read == 2 * inner.bytes_read


def test_generated_source_is_deterministic():
    """explain twice gives identical text (Triton's compile cache keys on the source)."""
    x = make(16, 32)
    assert tritonfunc.explain(softmax)(x) == tritonfunc.explain(softmax)(x)
    g = lambda x, y: (F.layer_norm(x, (32,)) * y, (x - y).abs().sum(0))  # noqa: E731
    y = make(16, 32, seed=1)
    assert tritonfunc.explain(g)(x, y) == tritonfunc.explain(g)(x, y)


def test_source_does_not_depend_on_input_values():
    """Same shapes and strides, different values: same kernels."""
    a = tritonfunc.explain(softmax)(make(16, 32, seed=1))
    b = tritonfunc.explain(softmax)(make(16, 32, seed=2))
    assert a == b


@pytest.mark.parametrize(
    "fn",
    [
        pytest.param(lambda x: x.exp() + 1, id="elementwise"),
        pytest.param(softmax, id="softmax"),
        pytest.param(lambda x: (x.sum(-1), x.amax(-1, keepdim=True)), id="row_reductions"),
        pytest.param(lambda x: F.layer_norm(x, (4,)), id="layer_norm"),
    ],
)
def test_zero_size_input_gives_empty_result_without_launching(fn):
    """A (0, 4) input: correct empty outputs, and no kernel launches at all."""
    x = torch.randn(0, 4)
    rec = launches(fn, x)
    assert rec.count == 0
    assert rec.bytes_read == rec.bytes_written == 0


def test_many_rows_use_several_programs():
    """A row kernel over more rows than one tile holds launches a grid of several programs."""
    x = make(64, 128)
    rec = launches(softmax, x)
    assert rec.count == 1
    assert rec.launches[0].grid[0] > 1


def test_long_full_reduction_is_split_across_many_programs(interpreter):
    """A sum of 2**16 elements into one value would run as a single program (one GPU SM): it is
    split into partial sums over column blocks, then a small sum of the partials."""
    x = torch.randn(1 << 16, dtype=torch.float64)
    with tritonfunc.record_launches() as rec:
        got = tritonfunc.jit(lambda x: (x.sin() * 2).sum())(x)
    torch.testing.assert_close(got, (x.sin() * 2).sum())
    assert rec.count == 2
    assert rec.launches[0].grid[0] >= 8 and rec.launches[1].grid == (1,)
