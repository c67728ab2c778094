"""The perf suite on the CPU: every workload at its tiny size through the interpreter, the plan at
GPU sizes, and how a provider that raises or disagrees is recorded. Speed is never asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PERF = Path(__file__).resolve().parent.parent / "perf"
sys.path.insert(0, str(PERF))
import suite  # noqa: E402
from workloads import WORKLOADS, Workload, size_str  # noqa: E402

ROW_FIELDS = {"workload", "provider", "size", "dtype", "device", "commit", "versions", "metric", "value"}
STATUSES = {"ok", "fails", "wrong", "skipped"}


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One run of the whole suite as perf/README.md runs it, without torch.compile (compiling every
    composition takes minutes on this CPU; the tests below check that provider with fakes)."""
    out = tmp_path_factory.mktemp("results") / "run.jsonl"
    # Without the sm_90 compile of every kernel (tests/conftest.py): the suite's tiny kernels are not
    # those a GPU would run, and compiling them would triple the test's time.
    env = {k: v for k, v in os.environ.items() if k != "TRITONFUNC_CHECK_SM90"} | {"TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(PERF / "suite.py"), "--out", str(out), "--no-compile"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return rows, proc.stdout


def _values(rows, workload, metric, provider="tritonfunc"):
    return {
        r["size"]: r["value"]
        for r in rows
        if (r["workload"], r["provider"], r["metric"]) == (workload, provider, metric)
    }


def test_every_workload_runs_and_agrees_with_torch_func(cpu_run):
    rows, stdout = cpu_run
    assert rows and all(ROW_FIELDS <= r.keys() for r in rows)
    assert {r["run"] for r in rows} == {rows[0]["run"]} and rows[0]["device"] == "cpu"
    statuses = [r for r in rows if r["metric"].endswith("status")]
    assert {r["value"] for r in statuses} <= STATUSES
    assert not [r for r in statuses if r["value"] == "wrong"], "a provider disagrees with torch.func"
    for w in WORKLOADS:
        assert w.name in stdout
        for size in map(size_str, w.cpu):
            assert _values(rows, w.name, "status").get(size) == "ok", (w.name, size)
            assert _values(rows, w.name, "launches")[size] >= 1
            assert _values(rows, w.name, "host_ms")[size] > 0
            assert _values(rows, w.name, "aten_ops", "torch.func")[size] >= 1
        for size in map(size_str, w.gpu):
            assert _values(rows, w.name, "plan_status").get(size) == "ok", (w.name, size)
            assert _values(rows, w.name, "plan_launches")[size] >= 1
            assert _values(rows, w.name, "ideal_bytes", "roofline")[size] > 0


def test_contraction_workloads_report_their_tensor_core_launches(cpu_run):
    """Issue 9's CPU proxies: every launch of the MLP per-sample gradients and of the batch-loss HVP
    runs tl.dot, and the plans at GPU sizes count theirs from the explained sources."""
    rows, stdout = cpu_run
    proxy = "batch=64,sizes=32-32-16"
    for name in ("psgrad_mlp", "hvp_mlp", "batched_jacobians"):
        assert _values(rows, name, "dot_launches")[proxy] == _values(rows, name, "launches")[proxy] >= 1
    assert _values(rows, "psgrad_mlp", "launches")[proxy] <= 3
    plan = _values(rows, "psgrad_mlp", "plan_dot_launches")["batch=4096"]
    assert 1 <= plan <= _values(rows, "psgrad_mlp", "plan_launches")["batch=4096"]
    assert _values(rows, "grad_elementwise", "dot_launches")["n=4096"] == 0
    assert "tl.dot" in stdout


def test_gpu_size_plans_of_the_hvp_and_the_relu_ensemble(cpu_run):
    """Plans, not speed: the HVP of a 784-512-10 MLP recomputes the hidden layer's gradient through
    the 10 logits inside its weight gradient's kernel (4 launches at 5.18x the ideal bytes; 5 at
    6.91x before), and each layer of a ReLU ensemble stores its activation alone (5.37x; 6.46x)."""
    rows, _ = cpu_run
    hvp = "batch=4096,sizes=784-512-10"
    assert _values(rows, "hvp_mlp", "plan_launches")[hvp] == 4
    assert _values(rows, "hvp_mlp", "plan_bytes_over_ideal")[hvp] < 5.2
    ensemble = "models=10,batch=4096,sizes=784-128-128-10"
    assert _values(rows, "ensemble_mlp", "plan_bytes_over_ideal")[ensemble] < 5.4


def test_plan_at_gpu_size_counts_bytes_from_explain(cpu_run):
    """vmap(grad(cross-entropy)) over 4096 x 32768: every logit must be read and every gradient
    written, so the planned bytes are at least the ideal, and bytes / ideal is their quotient."""
    rows, stdout = cpu_run
    size = "batch=4096,classes=32768"
    planned = _values(rows, "psgrad_xent", "plan_bytes")[size]
    ideal = _values(rows, "psgrad_xent", "ideal_bytes", "roofline")[size]
    assert ideal == 2 * 4096 * 32768 * 4 + 4096 * 8
    assert planned >= ideal
    assert _values(rows, "psgrad_xent", "plan_bytes_over_ideal")[size] == pytest.approx(planned / ideal)
    assert "plan at GPU sizes" in stdout


def _fake(program_for_tritonfunc):
    """A workload whose torch.func side is sin(x).sum() and whose tritonfunc side is given."""

    def setup(device, n):
        def program(ft):
            return program_for_tritonfunc if ft.__name__ == "tritonfunc" else lambda x: x.sin().sum()

        return (torch.randn(n, device=device),), program

    return Workload("fake", "a fake workload", setup, cpu=[dict(n=8)], gpu=[])


def _status(rows, provider):
    return [(r["value"], r.get("note", "")) for r in rows if r["provider"] == provider and r["metric"] == "status"]


def _record(workload, compile_backend="eager"):
    rec = suite.Recorder(None, "test", suite.environment())
    suite.run_cpu(workload, dict(n=8), rec, ("tritonfunc", "torch.compile"), compile_backend)
    return rec.rows


def test_a_provider_that_raises_is_recorded_as_fails():
    def broken(x):
        raise RuntimeError("no lowering for aten.frobnicate")

    rows = _record(_fake(broken), compile_backend=lambda gm, inputs: 1 / 0)
    assert _status(rows, "tritonfunc") == [("fails", "RuntimeError: no lowering for aten.frobnicate")]
    [(status, note)] = _status(rows, "torch.compile")
    assert status == "fails" and "ZeroDivisionError" in note
    assert not [r for r in rows if r["provider"] == "tritonfunc" and r["metric"] == "launches"]


def test_a_provider_that_disagrees_is_recorded_as_wrong_and_not_measured():
    def off_by_one(gm, inputs):
        return lambda *args: [out + 1 for out in gm(*args)]

    rows = _record(_fake(lambda x: x.sin().sum() + 1), compile_backend=off_by_one)
    assert [s for s, _ in _status(rows, "tritonfunc")] == ["wrong"]
    assert [s for s, _ in _status(rows, "torch.compile")] == ["wrong"]
    assert not [r for r in rows if r["provider"] == "tritonfunc" and r["metric"] in ("launches", "host_ms")]


def test_compare_tolerates_rounding_but_not_errors():
    ref = torch.tensor([1000.0, 1.0, float("nan")])
    assert suite.compare(ref + 1e-3, ref, rtol=1e-4, atol=1e-5)[0]  # within atol * max|ref|
    assert not suite.compare(ref + 0.1, ref, rtol=1e-4, atol=1e-5)[0]
    assert not suite.compare(ref[:2], ref, rtol=1e-4, atol=1e-5)[0]  # shapes differ


def test_the_gpu_path_records_times_roofline_and_targets(monkeypatch):
    """run_gpu's bookkeeping, on CPU tensors with a stand-in for do_bench (this CI has no GPU):
    each provider checked then timed, the roofline from bytes and flops, the targets' report."""
    from workloads import BY_NAME

    times = iter([8.0, 1.0, 2.0])  # ms, in the order the providers are timed: torch.func, tritonfunc, torch.compile
    monkeypatch.setattr(suite, "_bench_ms", lambda fn, args: next(times))
    env = suite.environment() | {"device": "a GPU", "backend": "triton"}
    rec = suite.Recorder(None, "gpu-test", env)
    w = BY_NAME["psgrad_xent"]
    suite.run_gpu(w, dict(batch=4, classes=64), rec, suite.PROVIDERS, "eager", 1e12, 1e14, device="cpu")

    value = {(r["provider"], r["metric"]): r for r in rec.rows}
    assert next(times, None) is None, "not every provider was timed"
    assert value[("torch.func", "ms")]["value"] == 8.0
    assert value[("tritonfunc", "status")]["value"] == "ok"
    assert value[("tritonfunc", "ms")]["value"] == 1.0 and value[("torch.compile", "ms")]["value"] == 2.0
    ideal = value[("roofline", "ideal_bytes")]["value"]
    assert ideal == 2 * 4 * 64 * 4 + 4 * 8
    assert value[("roofline", "ms")]["value"] == pytest.approx(1e3 * ideal / 1e12)
    assert value[("roofline", "ms")]["note"] == "memory"
    text = "\n".join(suite.report(rec.rows))
    assert "vs compile 2.00x met" in text and "vs torch.func 8.00x met" in text and "missed" in text
