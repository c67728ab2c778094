"""The perf suite: each workload of perf/workloads.py through tritonfunc, torch.func eager,
torch.compile of the same composition, and the roofline, side by side in one run.

    python perf/suite.py                      # all workloads; JSON rows to perf/results/<run>.jsonl
    python perf/suite.py --only psgrad_xent,jacrev --out /tmp/r.jsonl --no-compile

Every provider's result is checked against torch.func before anything of it is measured; one that
raises is recorded as "fails", one that disagrees as "wrong", and the run goes on.

On a CUDA GPU (sizes `Workload.gpu`): median times from triton.testing.do_bench, cold (first-call,
compile included) times apart, the roofline time max(ideal bytes / copy bandwidth, flops / peak), and
host time per cached call (the `host_overhead` workload). Each workload runs in its own process
(a crashed kernel cannot poison the next), within --budget-s.
On the CPU (no GPU): kernels run through Triton's interpreter at the tiny `Workload.cpu` sizes:
launches, bytes against the ideal, host time outside the kernels; and at the GPU sizes, without
running anything, the plan: the launches and bytes that tritonfunc.explain reports for meta tensors,
and the ATen ops and bytes of torch.func eager (counted on meta tensors).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before tritonfunc decorates any kernel

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch.func  # noqa: E402
import triton  # noqa: E402
from torch.utils import _pytree as pytree  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import tritonfunc  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workloads import BY_NAME, WORKLOADS, Workload, size_str  # noqa: E402

PROVIDERS = ("tritonfunc", "torch.func", "torch.compile")
RESULTS = HERE / "results"

# The targets, reported (never asserted): on an H100, memory-bound workloads at >= 80% of
# the roofline, >= 1.0x torch.compile, >= 5x torch.func eager on composed transforms.
TARGET_ROOFLINE, TARGET_COMPILE, TARGET_EAGER = 0.8, 1.0, 5.0


# ---------------------------------------------------------------------------------------------
# Rows: one JSON object per measurement, appended to a JSONL file as soon as it is known.


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def environment() -> dict:
    gpu = torch.cuda.is_available()
    return {
        "commit": _git("rev-parse", "--short=12", "HEAD") or "unknown",
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "backend": "triton" if gpu else "interpreter",
        "versions": {
            "tritonfunc": tritonfunc.__version__,
            "torch": torch.__version__,
            "triton": triton.__version__,
            "python": platform.python_version(),
        },
    }


class Recorder:
    """Appends rows (workload, provider, size, dtype, device, commit, versions, metric, value) to a file."""

    def __init__(self, path: Path | None, run: str, env: dict):
        self.path, self.run, self.env = path, run, env
        self.rows: list[dict] = []

    def add(self, w: Workload, provider: str, size: dict | str, metric: str, value, note: str | None = None) -> None:
        row = {
            "run": self.run,
            "workload": w.name,
            "provider": provider,
            "size": size if isinstance(size, str) else size_str(size),
            "dtype": "float32",
            "device": self.env["device"],
            "backend": self.env["backend"],
            "commit": self.env["commit"],
            "dirty": self.env["dirty"],
            "versions": self.env["versions"],
            "metric": metric,
            "value": value,
        }
        if note:
            row["note"] = note
        self.rows.append(row)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------
# Checking a provider against torch.func.


def _leaves(tree) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def compare(out, ref, rtol: float, atol: float) -> tuple[bool, float, str]:
    """(agrees, max abs error, why not): |out - ref| <= atol * max(1, max|ref|) + rtol * |ref|, NaNs alike."""
    outs, refs = _leaves(out), _leaves(ref)
    if [tuple(o.shape) for o in outs] != [tuple(r.shape) for r in refs]:
        return False, float("nan"), f"shapes {[tuple(o.shape) for o in outs]} vs {[tuple(r.shape) for r in refs]}"
    worst, ok = 0.0, True
    for o, r in zip(outs, refs):
        o, r = o.detach().double(), r.detach().double()
        if o.numel() == 0:
            continue
        scale = max(1.0, r.abs().nan_to_num(0, 0, 0).max().item())
        diff = (o - r).abs()
        both_nan = o.isnan() & r.isnan()
        ok &= bool(((diff <= atol * scale + rtol * r.abs()) | both_nan).all())
        worst = max(worst, diff[~both_nan].nan_to_num(float("inf")).max().item() if (~both_nan).any() else 0.0)
    return ok, worst, "" if ok else f"max abs error {worst:.3g} over tolerance"


def _short(e: BaseException) -> str:
    """The exception's type and first two lines (torch.compile puts the cause on the second)."""
    text = " ".join(line.strip() for line in str(e).strip().splitlines()[:2] if line.strip())
    return f"{type(e).__name__}: {text[:300]}"


class CountAtenOps(TorchDispatchMode):
    """The ATen ops eager torch runs (views apart) and the bytes they read and write."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.ops += 1
            self.bytes += sum(t.nbytes for t in _leaves((args, kwargs, out)))
        return out


@contextlib.contextmanager
def interpreter_time():
    """Seconds spent inside Triton interpreter launches: a call's host time is the rest."""
    from triton.runtime.interpreter import InterpretedFunction

    spent = [0.0]
    original = InterpretedFunction.run

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    InterpretedFunction.run = timed
    try:
        yield spent
    finally:
        InterpretedFunction.run = original


def ideal_bytes(args, ref) -> int:
    """The fewest bytes a run can move: every input read once, every output written once."""
    return sum(t.nbytes for t in _leaves(args)) + sum(t.nbytes for t in _leaves(ref))


def contraction_flops(fn, args) -> int:
    """The flops of the contractions torch.func runs for this composition (FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# The CPU run: tiny sizes through the interpreter, and the plan at GPU sizes.


def _median_wall(fn, args, warmup: int = 1, repeat: int = 3) -> tuple[float, float]:
    """Median seconds per warm call, and of those the median outside interpreter launches.
    The first calls of eager torch.func take tens of ms longer on this CPU: they are warm-up."""
    for _ in range(warmup):
        fn(*args)
    walls, hosts = [], []
    gc.collect()
    gc.disable()  # as timeit does: a collection of the interpreter's garbage is not this call's time
    try:
        for _ in range(repeat):
            with interpreter_time() as spent:
                start = time.perf_counter()
                fn(*args)
                wall = time.perf_counter() - start
            walls.append(wall)
            hosts.append(wall - spent[0])
    finally:
        gc.enable()
    return statistics.median(walls), statistics.median(hosts)


def run_cpu(w: Workload, size: dict, rec: Recorder, providers: tuple[str, ...], compile_backend: str) -> None:
    torch.manual_seed(0)
    args, program = w.setup("cpu", **size)
    ref_fn = program(torch.func)
    with CountAtenOps() as ops:
        ref = ref_fn(*args)
    ideal = ideal_bytes(args, ref)
    rec.add(w, "roofline", size, "ideal_bytes", ideal)
    rec.add(w, "torch.func", size, "aten_ops", ops.ops)
    rec.add(w, "torch.func", size, "bytes", ops.bytes)
    rec.add(w, "torch.func", size, "bytes_over_ideal", ops.bytes / ideal)
    rec.add(w, "torch.func", size, "host_ms", 1e3 * _median_wall(ref_fn, args)[0])

    if "tritonfunc" in providers:
        tf_fn = program(tritonfunc)
        try:
            start = time.perf_counter()
            with tritonfunc.record_launches() as launches:
                out = tf_fn(*args)
            cold = time.perf_counter() - start
            ok, err, why = compare(out, ref, w.rtol, w.atol)
        except Exception as e:  # a crash is a row of the table, not the end of the run
            rec.add(w, "tritonfunc", size, "status", "fails", _short(e))
        else:
            rec.add(w, "tritonfunc", size, "status", "ok" if ok else "wrong", why or None)
            rec.add(w, "tritonfunc", size, "max_abs_err", err)
            if ok:
                moved = launches.bytes_read + launches.bytes_written
                rec.add(w, "tritonfunc", size, "launches", launches.count)
                rec.add(w, "tritonfunc", size, "dot_launches", dot_launches(launches.launches))
                rec.add(w, "tritonfunc", size, "bytes", moved)
                rec.add(w, "tritonfunc", size, "bytes_over_ideal", moved / ideal)
                rec.add(w, "tritonfunc", size, "cold_s", cold)
                wall, host = _median_wall(tf_fn, args)
                rec.add(w, "tritonfunc", size, "interp_ms", 1e3 * (wall - host))
                rec.add(w, "tritonfunc", size, "host_ms", 1e3 * host)

    if "torch.compile" in providers:
        _check_compile(w, size, rec, ref_fn, args, ref, compile_backend)


def _check_compile(w, size, rec, ref_fn, args, ref, backend):
    """torch.compile over the torch.func composition: status and cold time; returns it if it agrees."""
    torch._dynamo.reset()
    try:
        compiled = torch.compile(ref_fn, backend=backend)
        start = time.perf_counter()
        out = compiled(*args)
        _sync()
        cold = time.perf_counter() - start
        ok, err, why = compare(out, ref, w.rtol, w.atol)
    except Exception as e:  # torch.compile failing on a composition is a result, not the end of the run
        rec.add(w, "torch.compile", size, "status", "fails", _short(e))
        return None
    note = why or (None if backend == "inductor" else f"backend={backend}")
    rec.add(w, "torch.compile", size, "status", "ok" if ok else "wrong", note)
    rec.add(w, "torch.compile", size, "max_abs_err", err)
    rec.add(w, "torch.compile", size, "cold_s", cold)
    return compiled if ok else None


_EXPLAIN_BYTES = re.compile(r"bytes read=(\d+) written=(\d+)")


def dot_launches(launches) -> int:
    """The launches whose kernel runs on tensor cores (tl.dot): contractions as template kernels."""
    return sum(1 for launch in launches if launch.kind == "kernel" and "tl.dot(" in launch.source)


def plan(w: Workload, size: dict, rec: Recorder) -> None:
    """At a GPU size, on meta tensors: what tritonfunc would launch and move, and what torch.func would run."""
    torch.manual_seed(0)
    args, program = w.setup("meta", **size)
    ref_fn = program(torch.func)
    with CountAtenOps() as ops:
        ref = ref_fn(*args)
    ideal = ideal_bytes(args, ref)
    rec.add(w, "roofline", size, "ideal_bytes", ideal)
    if w.contraction:
        rec.add(w, "roofline", size, "flops", contraction_flops(ref_fn, args))
    rec.add(w, "torch.func", size, "plan_aten_ops", ops.ops)
    rec.add(w, "torch.func", size, "plan_bytes_over_ideal", ops.bytes / ideal)
    try:
        text = tritonfunc.explain(program(tritonfunc))(*args)
        kernels = [int(r) + int(wr) for r, wr in _EXPLAIN_BYTES.findall(text)]
        if not kernels:
            raise RuntimeError("tritonfunc.explain reported no kernel with 'bytes read=... written=...'")
    except Exception as e:  # a composition tritonfunc cannot plan is a row of the table
        rec.add(w, "tritonfunc", size, "plan_status", "fails", _short(e))
        return
    rec.add(w, "tritonfunc", size, "plan_status", "ok")
    rec.add(w, "tritonfunc", size, "plan_launches", len(kernels))
    steps = re.split(r"\n## step \d+: ", text)[1:]
    rec.add(w, "tritonfunc", size, "plan_dot_launches", sum(1 for step in steps if "tl.dot(" in step))
    rec.add(w, "tritonfunc", size, "plan_bytes", sum(kernels))
    rec.add(w, "tritonfunc", size, "plan_bytes_over_ideal", sum(kernels) / ideal)


# ---------------------------------------------------------------------------------------------
# The GPU run.


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _bench_ms(fn, args) -> float:
    return triton.testing.do_bench(lambda: fn(*args), return_mode="median")


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write): the roofline's bandwidth."""
    src = torch.empty(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.nbytes / (_bench_ms(lambda: dst.copy_(src), ()) * 1e-3)


def peak_flops() -> float:
    """Flops per second of a large float32 matmul under the current precision settings."""
    a = torch.randn(8192, 8192, device="cuda")
    return 2 * 8192**3 / (_bench_ms(torch.mm, (a, a)) * 1e-3)


def _host_us(fn, args, calls: int = 200) -> float:
    """Host time per cached call: tiny inputs, so the device finishes long before the host."""
    fn(*args)
    _sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    _sync()
    return 1e6 * (time.perf_counter() - start) / calls


def run_gpu(w, size, rec, providers, compile_backend, bandwidth: float, peak: float, device: str = "cuda") -> None:
    torch.manual_seed(0)
    args, program = w.setup(device, **size)
    ref_fn = program(torch.func)
    start = time.perf_counter()
    ref = ref_fn(*args)
    _sync()
    rec.add(w, "torch.func", size, "cold_s", time.perf_counter() - start)
    with CountAtenOps() as ops:
        ref_fn(*args)
    ideal = ideal_bytes(args, ref)
    flops = contraction_flops(ref_fn, args) if w.contraction else 0
    roofline_ms = 1e3 * max(ideal / bandwidth, flops / peak)
    rec.add(w, "roofline", size, "ideal_bytes", ideal)
    rec.add(w, "roofline", size, "flops", flops)
    rec.add(w, "roofline", size, "ms", roofline_ms, "memory" if ideal / bandwidth >= flops / peak else "compute")
    rec.add(w, "torch.func", size, "aten_ops", ops.ops)
    rec.add(w, "torch.func", size, "bytes_over_ideal", ops.bytes / ideal)
    host = "host" in w.tags

    def measure(provider, fn):
        """Times a provider that agreed with torch.func, at once: a later provider that hangs
        (a long torch.compile) cannot take these numbers with it."""
        try:
            if host:
                rec.add(w, provider, size, "host_us", _host_us(fn, args))
            rec.add(w, provider, size, "ms", _bench_ms(fn, args))
        except Exception as e:  # e.g. out of memory while timing
            rec.add(w, provider, size, "status", "fails", "while timing: " + _short(e))

    measure("torch.func", ref_fn)
    if "tritonfunc" in providers:
        tf_fn = program(tritonfunc)
        try:
            start = time.perf_counter()
            with tritonfunc.record_launches() as launches:
                out = tf_fn(*args)
            _sync()
            cold = time.perf_counter() - start
            ok, err, why = compare(out, ref, w.rtol, w.atol)
        except Exception as e:
            rec.add(w, "tritonfunc", size, "status", "fails", _short(e))
        else:
            rec.add(w, "tritonfunc", size, "status", "ok" if ok else "wrong", why or None)
            rec.add(w, "tritonfunc", size, "max_abs_err", err)
            rec.add(w, "tritonfunc", size, "cold_s", cold)
            if ok:
                moved = launches.bytes_read + launches.bytes_written
                rec.add(w, "tritonfunc", size, "launches", launches.count)
                rec.add(w, "tritonfunc", size, "dot_launches", dot_launches(launches.launches))
                rec.add(w, "tritonfunc", size, "bytes_over_ideal", moved / ideal)
                measure("tritonfunc", tf_fn)
    if "torch.compile" in providers:
        compiled = _check_compile(w, size, rec, ref_fn, args, ref, compile_backend)
        if compiled is not None:
            measure("torch.compile", compiled)


# ---------------------------------------------------------------------------------------------
# Driver.


def _selected(only: str | None) -> list[Workload]:
    if not only:
        return list(WORKLOADS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; known: {', '.join(BY_NAME)}")
    return [BY_NAME[n] for n in names]


def run_in_process(opts, rec: Recorder, workloads: list[Workload], deadline: float) -> None:
    gpu = torch.cuda.is_available()
    if not gpu:
        torch.set_num_threads(1)  # host times of one thread; the interpreter runs on one anyway
    providers = tuple(p for p in PROVIDERS if not (p == "torch.compile" and opts.no_compile))
    for w in workloads:
        for size in w.gpu if gpu else w.cpu:
            if time.monotonic() > deadline:
                rec.add(w, "tritonfunc", size, "status", "skipped", "time budget spent")
                continue
            try:
                if gpu:
                    run_gpu(w, size, rec, providers, opts.compile_backend, opts.bandwidth, opts.peak)
                else:
                    run_cpu(w, size, rec, providers, opts.compile_backend)
            except Exception as e:  # the reference itself failed: record it, go on
                rec.add(w, "torch.func", size, "status", "fails", _short(e))
        if not gpu and not opts.no_plan:
            for size in w.gpu:
                try:
                    plan(w, size, rec)
                except Exception as e:
                    rec.add(w, "torch.func", size, "plan_status", "fails", _short(e))


def run_isolated(opts, rec: Recorder, workloads: list[Workload], deadline: float) -> None:
    """Each workload in a child process, within the time left; a hung or crashed child is a 'fails' row."""
    for w in workloads:
        left = deadline - time.monotonic()
        if left < 10:
            for size in w.gpu if torch.cuda.is_available() else w.cpu:
                rec.add(w, "tritonfunc", size, "status", "skipped", "time budget spent")
            continue
        timeout = min(left, opts.workload_timeout_s)
        cmd = [sys.executable, __file__, "--child", "--only", w.name, "--out", str(rec.path), "--run", rec.run]
        cmd += ["--compile-backend", opts.compile_backend, f"--bandwidth={opts.bandwidth}", f"--peak={opts.peak}"]
        cmd += (["--no-compile"] if opts.no_compile else []) + (["--no-plan"] if opts.no_plan else [])
        before = len(_read(rec.path))
        try:
            proc = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
            failed = proc.returncode != 0 and f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
        except subprocess.TimeoutExpired:
            failed = f"timed out after {timeout:.0f} s"
        rec.rows += _read(rec.path)[before:]
        if failed:
            sizes = w.gpu if torch.cuda.is_available() else w.cpu
            for size in map(size_str, sizes):
                done = {
                    r["provider"]
                    for r in rec.rows
                    if (r["workload"], r["size"], r["metric"]) == (w.name, size, "status")
                }
                for provider in PROVIDERS:
                    if provider not in done and not (provider == "torch.compile" and opts.no_compile):
                        rec.add(w, provider, size, "status", "fails", failed)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# ---------------------------------------------------------------------------------------------
# The table.


def _table(rows: list[dict], columns: list[tuple[str, str, str, str]], sizes_of) -> list[str]:
    """columns: (header, provider, metric, format); one line per workload and size."""
    value = {(r["workload"], r["size"], r["provider"], r["metric"]): r["value"] for r in rows}
    lines = []
    keys = list(dict.fromkeys((r["workload"], r["size"]) for r in rows if sizes_of(r)))
    if not keys:
        return lines
    wn = max(len("workload"), *(len(k[0]) for k in keys))
    ws = max(len("size"), *(len(k[1]) for k in keys))
    widths = [max(len(h), 8) for h, *_ in columns]
    header = "  ".join(f"{h:>{n}}" for (h, *_), n in zip(columns, widths))
    lines.append(f"{'workload':<{wn}}  {'size':<{ws}}  {header}")
    for wl, size in keys:
        cells = []
        for (_, provider, metric, fmt), n in zip(columns, widths):
            v = value.get((wl, size, provider, metric))
            cells.append(f"{'-' if v is None else v if isinstance(v, str) else format(v, fmt):>{n}}")
        lines.append(f"{wl:<{wn}}  {size:<{ws}}  " + "  ".join(cells))
    return lines


CPU_COLUMNS = [
    ("tritonfunc", "tritonfunc", "status", ""),
    ("launches", "tritonfunc", "launches", "d"),
    ("tl.dot", "tritonfunc", "dot_launches", "d"),
    ("bytes/ideal", "tritonfunc", "bytes_over_ideal", ".2f"),
    ("host ms", "tritonfunc", "host_ms", ".2f"),
    ("func ops", "torch.func", "aten_ops", "d"),
    ("func bytes/ideal", "torch.func", "bytes_over_ideal", ".2f"),
    ("func host ms", "torch.func", "host_ms", ".2f"),
    ("compile", "torch.compile", "status", ""),
]
PLAN_COLUMNS = [
    ("plan launches", "tritonfunc", "plan_launches", "d"),
    ("tl.dot", "tritonfunc", "plan_dot_launches", "d"),
    ("plan bytes/ideal", "tritonfunc", "plan_bytes_over_ideal", ".2f"),
    ("func ops", "torch.func", "plan_aten_ops", "d"),
    ("func bytes/ideal", "torch.func", "plan_bytes_over_ideal", ".2f"),
    ("ideal MB", "roofline", "ideal_bytes", ",.1f"),
]
GPU_COLUMNS = [
    ("tritonfunc", "tritonfunc", "status", ""),
    ("tf ms", "tritonfunc", "ms", ".4f"),
    ("func ms", "torch.func", "ms", ".4f"),
    ("compile ms", "torch.compile", "ms", ".4f"),
    ("roof ms", "roofline", "ms", ".4f"),
    ("launches", "tritonfunc", "launches", "d"),
    ("tl.dot", "tritonfunc", "dot_launches", "d"),
    ("bytes/ideal", "tritonfunc", "bytes_over_ideal", ".2f"),
    ("tf cold s", "tritonfunc", "cold_s", ".2f"),
    ("compile", "torch.compile", "status", ""),
    ("host us", "tritonfunc", "host_us", ".0f"),
]


def report(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if r["workload"] != "machine"]
    gpu = any(r["backend"] == "triton" for r in rows)
    metrics = {r["metric"] for r in rows}
    out = []
    if gpu:
        out += _table(rows, GPU_COLUMNS, lambda r: True)
        out += [""] + targets(rows)
    else:
        out += _table(rows, CPU_COLUMNS, lambda r: not r["metric"].startswith("plan_") and r["provider"] != "roofline")
        if any(m.startswith("plan_") for m in metrics):
            mb = [dict(r, value=r["value"] / 1e6) if r["metric"] == "ideal_bytes" else r for r in rows]
            plan_keys = {(r["workload"], r["size"]) for r in rows if r["metric"].startswith("plan_")}
            out += ["", "plan at GPU sizes (tritonfunc.explain and torch.func on meta tensors; nothing run):"]
            out += _table([r for r in mb if (r["workload"], r["size"]) in plan_keys], PLAN_COLUMNS, lambda r: True)
    problems = [r for r in rows if r["metric"].endswith("status") and r["value"] not in ("ok",)]
    if problems:
        out += ["", "not ok:"]
        out += [f"  {r['workload']} {r['size']} {r['provider']}: {r['value']} {r.get('note', '')}" for r in problems]
    return out


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets against this run's GPU times (reported, never asserted)."""
    v = {(r["workload"], r["size"], r["provider"], r["metric"]): r for r in rows}
    lines = ["targets: >= 80% roofline (memory-bound), >= 1.0x torch.compile, >= 5x torch.func (composed):"]
    for name, size in dict.fromkeys((r["workload"], r["size"]) for r in rows):
        w = BY_NAME.get(name)
        tf = v.get((name, size, "tritonfunc", "ms"))
        if tf is None or w is None or "host" in w.tags:
            continue
        parts = []
        roof = v.get((name, size, "roofline", "ms"))
        if roof and roof.get("note") == "memory":
            share = roof["value"] / tf["value"]
            parts.append(f"roofline {100 * share:.0f}% {'met' if share >= TARGET_ROOFLINE else 'missed'}")
        comp = v.get((name, size, "torch.compile", "ms"))
        if comp:
            x = comp["value"] / tf["value"]
            parts.append(f"vs compile {x:.2f}x {'met' if x >= TARGET_COMPILE else 'missed'}")
        eager = v.get((name, size, "torch.func", "ms"))
        if eager and w.composed:
            x = eager["value"] / tf["value"]
            parts.append(f"vs torch.func {x:.2f}x {'met' if x >= TARGET_EAGER else 'missed'}")
        lines.append(f"  {name} {size}: " + ", ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated workload names (default: all)")
    parser.add_argument(
        "--out", help="JSONL file to append rows to, or a folder for <run>.jsonl (default perf/results/)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    parser.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (default inductor; 'eager' checks dynamo)"
    )
    parser.add_argument("--no-plan", action="store_true", help="CPU: skip the plan at GPU sizes")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting workloads after this many s")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None, help="a process per workload")
    parser.add_argument(
        "--workload-timeout-s", type=float, default=120, help="isolated: a workload's process is stopped after this"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--bandwidth", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--peak", type=float, default=0.0, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)

    env = environment()
    gpu = torch.cuda.is_available()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run = opts.run or f"{stamp}-{env['commit']}-{'cuda' if gpu else 'cpu'}"
    path = Path(opts.out) if opts.out else RESULTS
    if path.is_dir() or str(opts.out).endswith("/"):
        path = path / f"{run}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = Recorder(path, run, env)
    workloads = _selected(opts.only)
    deadline = time.monotonic() + (opts.budget_s if opts.budget_s else float("inf"))

    if opts.child:
        run_in_process(opts, rec, workloads, deadline)
        return 0

    commit = env["commit"] + ("+" if env["dirty"] else "")
    print(f"tritonfunc perf suite: {env['device']} ({env['backend']}), commit {commit}")
    print("  " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    start = time.perf_counter()
    if gpu:
        opts.bandwidth, opts.peak = copy_bandwidth(), peak_flops()
        torch.cuda.empty_cache()  # the workloads run in child processes: leave them the memory
        machine = Workload("machine", "the roofline's measured bandwidth and peak", None, [], [])
        rec.add(machine, "roofline", {}, "copy_GBps", opts.bandwidth / 1e9)
        rec.add(machine, "roofline", {}, "peak_TFLOPs", opts.peak / 1e12)
        print(f"  roofline: copy {opts.bandwidth / 1e9:.0f} GB/s, float32 matmul {opts.peak / 1e12:.1f} TFLOP/s")
    else:
        print("  (Triton interpreter: launches and bytes are real; times outside kernels are host time)")
    isolate = gpu if opts.isolate is None else opts.isolate
    (run_isolated if isolate else run_in_process)(opts, rec, workloads, deadline)
    print("\n".join(report(rec.rows)))
    print(f"{len(rec.rows)} rows in {time.perf_counter() - start:.0f} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
