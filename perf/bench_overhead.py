"""Host overhead per call: what tritonfunc spends in Python around its launches.

    python perf/bench_overhead.py [--calls N] [--json out.json]

For each workload: the cold first call (trace, transforms, schedule, codegen, kernel loading) apart,
then the median over N calls of the host time per cached call with the kernels not run (launches
made no-ops): everything tritonfunc does around its launches.  (`record_launches()` records carry
each launch's `seconds` too, for wall time minus launch time on any backend.)
Beside it, torch.func's whole time per call on the same inputs (eager, CPU here: its kernels are
tiny, so that is mostly its own host work).  Targets (issue 8): <= 50 us per cached call on this CPU
and <= 0.1x torch.func's time where that is larger.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch.func  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tritonfunc  # noqa: E402
from tritonfunc import runtime  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def chain(x):
    return ((x * 1.5 + 0.5).sin() * x.exp() - x.cos()).tanh()


def sin_exp(x):
    return (x.sin() * x.exp()).sum()


def cross_entropy(z, t):
    return F.cross_entropy(z[None], t[None])


def mlp_loss(w1, w2, x, t):
    return F.cross_entropy((torch.tanh(x @ w1) @ w2)[None], t[None])


def sum_sin(x):
    return x.sin().sum()


def workloads(ft):
    """(name, function of the transform module applied to inputs, inputs)."""
    r = lambda *s: torch.randn(*s, device=DEVICE)  # noqa: E731
    x1024, x32, v32 = r(1024), r(32), r(32)
    z, t = r(32, 10), torch.randint(0, 10, (32,), device=DEVICE)
    w1, w2, xm, tm = r(8, 16), r(16, 4), r(16, 8), torch.randint(0, 4, (16,), device=DEVICE)
    return [
        ("jit elementwise chain n=1024", lambda: (ft.jit(chain) if ft is tritonfunc else chain)(x1024)),
        ("grad (sin x * exp x).sum() n=32", lambda: ft.grad(sin_exp)(x32)),
        ("HVP jvp(grad) of it n=32", lambda: ft.jvp(ft.grad(sin_exp), (x32,), (v32,))),
        ("vmap(grad(cross-entropy)) 32 x 10", lambda: ft.vmap(ft.grad(cross_entropy))(z, t)),
        (
            "vmap(grad(2-layer MLP)) 16 rows",
            lambda: ft.vmap(ft.grad(mlp_loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))(w1, w2, xm, tm),
        ),
        ("hessian of sum(sin) n=32", lambda: ft.hessian(sum_sin)(x32)),
        ("jacrev of tanh n=32", lambda: ft.jacrev(torch.tanh)(x32)),
    ]


def host_time(call, calls: int) -> tuple[float, float]:
    """(cold seconds, median host seconds per cached call).  The cold call runs everything; the
    cached calls run with kernel launches made no-ops, so what is timed is tritonfunc's own work
    (key, guards, allocation, launch bookkeeping), as on a GPU where launches are asynchronous.
    (Timing around real interpreted launches instead would charge tritonfunc for the CPU caches
    the interpreter's numpy work flushes: 3-4x more, none of it present on a GPU.)"""
    start = time.perf_counter()
    call()
    cold = time.perf_counter() - start
    call()
    samples = []
    launch = runtime.Executable.launch
    runtime.Executable.launch = lambda *args: None
    try:
        for _ in range(max(1, calls // ROUND)):
            start = time.perf_counter()
            for _ in range(ROUND):
                call()
            samples.append((time.perf_counter() - start) / ROUND)
    finally:
        runtime.Executable.launch = launch
    return cold, statistics.median(samples)


ROUND = 10


def torch_time(call, calls: int) -> float:
    call()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def end_to_end(call) -> float:
    """GPU only: median seconds per call, kernels included (triton.testing.do_bench)."""
    import triton.testing

    return triton.testing.do_bench(call, return_mode="median") / 1e3


def compiled(reference):
    """torch.compile of the torch.func composition, or None if it does not compile."""
    try:
        fn = torch.compile(reference)
        fn()
        return fn
    except Exception:  # noqa: BLE001  (reported as missing)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = []
    ours, theirs = workloads(tritonfunc), workloads(torch.func)
    header = f"{'workload':36} {'cold ms':>8} {'host us/call':>12} {'torch.func us/call':>18} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for (name, call, *_), (_, reference, *_) in zip(ours, theirs):
        cold, host = host_time(call, args.calls)
        ref = torch_time(reference, args.calls)
        row = {"workload": name, "cold_s": cold, "host_s_per_call": host, "torch_func_s_per_call": ref}
        line = f"{name:36} {cold * 1e3:8.1f} {host * 1e6:12.1f} {ref * 1e6:18.1f} {host / ref:6.2f}"
        if DEVICE == "cuda":  # end to end, kernels included, against torch.func and torch.compile
            row["e2e_s"], row["torch_func_e2e_s"] = end_to_end(call), end_to_end(reference)
            fn = compiled(reference)
            row["torch_compile_e2e_s"] = end_to_end(fn) if fn is not None else None
            line += f"  e2e us: ours {row['e2e_s'] * 1e6:.1f}, torch.func {row['torch_func_e2e_s'] * 1e6:.1f}"
            line += f", torch.compile {row['torch_compile_e2e_s'] * 1e6:.1f}" if fn is not None else ", compile fails"
        rows.append(row)
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": DEVICE, "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
