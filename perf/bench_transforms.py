"""Benchmarks of function transforms: tritonfunc against torch.func on the same compositions.

    python perf/bench_transforms.py [--json out.json] [--no-compile]

Each workload is written once, as a function of the transform module (`ft` is tritonfunc or
torch.func), so both sides run the same composition on the same f32 inputs.

Without a GPU: tritonfunc's kernels run through Triton's interpreter at small sizes; the table
shows tritonfunc's launches and bytes moved against the ideal (every input read once, every output
written once), its max error against torch.func, and how many ATen ops torch.func executes (all of
them, and those that are not views). On a GPU each non-view ATen op is roughly one kernel launch:
that is the count tritonfunc's fused kernels are meant to beat.
On a CUDA GPU: larger sizes, the same counts, and median times (triton.testing.do_bench) of
tritonfunc, torch.func eager and torch.compile of the torch.func composition.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before tritonfunc generates any kernel

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch.func  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils import _pytree as pytree  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import tritonfunc  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Workloads. Each `setup(device, **size)` returns (args, program) where program(ft) is the
# composition built from `ft`'s transforms; the benchmark calls program(ft)(*args).


def _linreg_loss(w, x, y):
    return (x @ w - y) ** 2


def per_sample_grad_linreg(device, batch, dim):
    args = (torch.randn(dim, device=device), torch.randn(batch, dim, device=device), torch.randn(batch, device=device))
    return args, lambda ft: ft.vmap(ft.grad(_linreg_loss), in_dims=(None, 0, 0))


def _cross_entropy(z, t):
    return F.cross_entropy(z[None], t[None])


def per_sample_grad_xent(device, batch, classes):
    args = (torch.randn(batch, classes, device=device), torch.randint(0, classes, (batch,), device=device))
    return args, lambda ft: ft.vmap(ft.grad(_cross_entropy))


def _sin_exp(x):
    return (x.sin() * x.exp()).sum()


def _logsumexp(x):
    return torch.logsumexp(x, 0)


def _hvp(f):
    def setup(device, n):
        x = torch.randn(n, device=device)
        args = (x, torch.randn_like(x))
        return args, lambda ft: lambda x, v: ft.jvp(ft.grad(f), (x,), (v,))

    return setup


def _tanh_x_rowsum(m):
    return lambda x: (x.tanh() * x).reshape(m, -1).sum(1)


def jacrev_tanh(device, m, n):
    return (torch.randn(n, device=device),), lambda ft: ft.jacrev(_tanh_x_rowsum(m))


def jacfwd_tanh(device, m, n):
    return (torch.randn(n, device=device),), lambda ft: ft.jacfwd(_tanh_x_rowsum(m))


def ensemble_forward(device, models, batch, dim, hidden, out):
    nets = [nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, out)).to(device) for _ in range(models)]
    # tritonfunc re-exports torch's stack_module_state; detached so eager torch records no autograd graph.
    params, buffers = torch.func.stack_module_state(nets)
    params = {k: v.detach() for k, v in params.items()}
    base = nets[0].to("meta")

    def program(ft):
        return ft.vmap(lambda p, b, x: ft.functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))

    return (params, buffers, torch.randn(batch, dim, device=device)), program


def vmap_softmax(device, batch, n):
    return (torch.randn(batch, n, device=device),), lambda ft: ft.vmap(lambda x: torch.softmax(x, -1))


def vmap_layer_norm(device, batch, n):
    args = (torch.randn(batch, n, device=device), torch.randn(n, device=device), torch.randn(n, device=device))
    return args, lambda ft: ft.vmap(lambda x, w, b: F.layer_norm(x, (n,), w, b), in_dims=(0, None, None))


@dataclass
class Workload:
    name: str
    setup: Callable
    cpu: dict  # sizes for the interpreter: a few seconds at most
    gpu: dict


WORKLOADS = [
    Workload("psgrad_linreg", per_sample_grad_linreg, dict(batch=64, dim=128), dict(batch=8192, dim=1024)),
    Workload("psgrad_xent", per_sample_grad_xent, dict(batch=64, classes=100), dict(batch=8192, classes=1000)),
    Workload("hvp_sin_exp", _hvp(_sin_exp), dict(n=4096), dict(n=1 << 24)),
    Workload("hvp_logsumexp", _hvp(_logsumexp), dict(n=4096), dict(n=1 << 24)),
    Workload("jacrev_tanh", jacrev_tanh, dict(m=16, n=512), dict(m=256, n=65536)),
    Workload("jacfwd_tanh", jacfwd_tanh, dict(m=16, n=512), dict(m=256, n=4096)),
    Workload(
        "ensemble_mlp",
        ensemble_forward,
        dict(models=4, batch=16, dim=32, hidden=32, out=8),
        dict(models=8, batch=1024, dim=256, hidden=256, out=64),
    ),
    Workload("vmap_softmax", vmap_softmax, dict(batch=64, n=256), dict(batch=8192, n=1024)),
    Workload("vmap_layer_norm", vmap_layer_norm, dict(batch=64, n=256), dict(batch=8192, n=1024)),
]

# ---------------------------------------------------------------------------------------------
# Measurements.


class CountAtenOps(TorchDispatchMode):
    """Counts the ATen ops that run under it, and how many of those are views (no kernel on a GPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        self.views += bool(func.is_view)
        return func(*args, **(kwargs or {}))


def _leaves(tree) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def measure_counts(tf_fn, ref_fn, args) -> dict:
    with tritonfunc.record_launches() as rec:
        out = tf_fn(*args)
    with CountAtenOps() as ops:
        expected = ref_fn(*args)
    outs, refs = _leaves(out), _leaves(expected)
    if [o.shape for o in outs] != [r.shape for r in refs]:
        raise RuntimeError(f"output shapes differ: {[o.shape for o in outs]} vs torch.func {[r.shape for r in refs]}")
    read, written = sum(t.nbytes for t in _leaves(args)), sum(t.nbytes for t in refs)
    return {
        "launches": rec.count,
        "kernels": [launch.name for launch in rec.launches],
        "bytes_read": rec.bytes_read,
        "bytes_written": rec.bytes_written,
        "ideal_read": read,
        "ideal_written": written,
        "bytes_over_ideal": (rec.bytes_read + rec.bytes_written) / (read + written),
        "max_abs_err": max((o.double() - r.double()).abs().max().item() for o, r in zip(outs, refs)),
        "aten_ops": ops.count,
        "aten_non_view_ops": ops.count - ops.views,
    }


def gpu_times(tf_fn, ref_fn, args, name: str, use_compile: bool) -> dict:
    bench = lambda f: triton.testing.do_bench(lambda: f(*args), return_mode="median")
    times = {"tritonfunc_ms": bench(tf_fn), "torch_func_ms": bench(ref_fn), "compile_ms": None}
    if use_compile:
        try:
            times["compile_ms"] = bench(torch.compile(ref_fn))
        except Exception as e:  # a failing torch.compile is a row of the table, not the end of the run
            times["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"  torch.compile failed on {name}: {times['compile_error']}")
    return times


def _size_str(size: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in size.items())


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (GPU only)")
    opts = parser.parse_args()

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    meta = {
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({platform.processor() or platform.machine()})",
        "backend": "triton" if gpu else "interpreter",
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    print(f"tritonfunc transform benchmarks on {meta['device']}, torch {meta['torch']}, triton {meta['triton']}")
    if gpu:
        header = f"{'launch':>6} {'aten ops (non-view)':>19} {'bytes/ideal':>11} {'max|err|':>9} "
        header += f"{'tritonfunc ms':>13} {'torch.func ms':>13} {'compile ms':>10}"
    else:
        print("(Triton interpreter: launches and bytes are real, times are not worth reporting)")
        header = f"{'launches':>8} {'aten ops (non-view)':>19} {'bytes read (ideal)':>22} {'written (ideal)':>22} "
        header += f"{'bytes/ideal':>11} {'max|err|':>9}"
    sizes = [_size_str(w.gpu if gpu else w.cpu) for w in WORKLOADS]
    width = max(len(s) for s in sizes)
    print(f"{'workload':<16} {'size':<{width}} {header}")

    rows = []
    for w, size_str in zip(WORKLOADS, sizes):
        size = w.gpu if gpu else w.cpu
        torch.manual_seed(0)
        args, program = w.setup(device, **size)
        tf_fn, ref_fn = program(tritonfunc), program(torch.func)
        row = {"workload": w.name, "size": size}
        start = time.perf_counter()
        try:
            row.update(measure_counts(tf_fn, ref_fn, args))
            if gpu:
                row.update(gpu_times(tf_fn, ref_fn, args, w.name, use_compile=not opts.no_compile))
        except Exception as e:  # a failing workload is a row of the table, not the end of the run
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"{w.name:<16} {size_str:<{width}} ERROR {row['error']}")
            rows.append(row)
            continue
        row["seconds"] = time.perf_counter() - start
        ops = f"{row['aten_ops']} ({row['aten_non_view_ops']})"
        if gpu:
            print(
                f"{w.name:<16} {size_str:<{width}} {row['launches']:>6} {ops:>19} {row['bytes_over_ideal']:>11.2f} "
                f"{row['max_abs_err']:>9.1e} {row['tritonfunc_ms']:>13.4f} {row['torch_func_ms']:>13.4f} "
                f"{_fmt(row['compile_ms'], '>10.4f')}"
            )
        else:
            read = f"{row['bytes_read']} ({row['ideal_read']})"
            written = f"{row['bytes_written']} ({row['ideal_written']})"
            print(
                f"{w.name:<16} {size_str:<{width}} {row['launches']:>8} {ops:>19} {read:>22} {written:>22} "
                f"{row['bytes_over_ideal']:>11.2f} {row['max_abs_err']:>9.1e}"
            )
        rows.append(row)

    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
        print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
