"""Benchmarks: the demo's workloads (tritonfunc/demo.py) over a few sizes.

    python perf/bench.py [--json out.json] [--no-compile]

On a CUDA GPU: median times (triton.testing.do_bench) of tritonfunc.jit, eager torch and
torch.compile, and the bandwidth each achieves on the ideal bytes (every input read once, every
output written once), beside the roofline: those bytes over the bandwidth of a large device copy.
Without a GPU: the generated kernels run through Triton's interpreter at small sizes, and the table
shows launches and bytes moved against the ideal (interpreter times mean nothing).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before tritonfunc generates any kernel

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402

import triton  # noqa: E402

import tritonfunc  # noqa: E402
from tritonfunc.demo import WORKLOADS, ideal_bytes  # noqa: E402

CPU_SIZES = [(64, 256), (256, 1024), (512, 1000), (16, 8192)]  # (rows, cols), small enough for the interpreter
GPU_SIZES = [(4096, 1024), (8192, 4096), (32768, 1000), (16384, 8192)]


def measure_launches(fn, args) -> dict:
    with tritonfunc.record_launches() as rec:
        out = tritonfunc.jit(fn)(*args)
    expected = fn(*args)
    read, written = ideal_bytes(args, out)
    return {
        "launches": rec.count,
        "bytes_read": rec.bytes_read,
        "bytes_written": rec.bytes_written,
        "ideal_read": read,
        "ideal_written": written,
        "bytes_over_ideal": (rec.bytes_read + rec.bytes_written) / (read + written),
        "max_abs_err": (out - expected).abs().max().item(),
    }


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy: the roofline's bandwidth."""
    src = torch.empty(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.nbytes / (ms * 1e-3)


def gpu_times(fn, args, use_compile: bool) -> dict:
    jitted = tritonfunc.jit(fn)
    times = {
        "tritonfunc_ms": triton.testing.do_bench(lambda: jitted(*args), return_mode="median"),
        "eager_ms": triton.testing.do_bench(lambda: fn(*args), return_mode="median"),
        "compile_ms": None,
    }
    if use_compile:
        try:
            compiled = torch.compile(fn)
            times["compile_ms"] = triton.testing.do_bench(lambda: compiled(*args), return_mode="median")
        except Exception as e:  # a failing torch.compile is a row of the table, not the end of the run
            print(f"  torch.compile failed on {fn.__name__}: {type(e).__name__}: {e}")
    return times


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (GPU only)")
    opts = parser.parse_args()

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    torch.manual_seed(0)
    meta = {
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({platform.processor() or platform.machine()})",
        "backend": "triton" if gpu else "interpreter",
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    print(f"tritonfunc benchmarks on {meta['device']}, torch {meta['torch']}, triton {meta['triton']}")
    if gpu:
        meta["copy_GBps"] = copy_bandwidth() / 1e9
        print(f"roofline bandwidth (1 GiB copy): {meta['copy_GBps']:.0f} GB/s")
        print(
            f"{'workload':<18} {'size':>12} {'launch':>6} {'bytes/ideal':>11} {'tritonfunc ms':>13} {'eager ms':>9} "
            f"{'compile ms':>10} {'roofline ms':>11} {'tritonfunc GB/s':>15} {'% roofline':>10}"
        )
    else:
        print("(Triton interpreter: launches and bytes are real, times are not worth reporting)")
        print(
            f"{'workload':<18} {'size':>12} {'launches':>8} {'bytes read (ideal)':>22} {'written (ideal)':>20} "
            f"{'bytes/ideal':>11} {'max|err|':>9}"
        )

    rows = []
    for fn, make_args in WORKLOADS:
        for r, c in GPU_SIZES if gpu else CPU_SIZES:
            args = make_args(r, c, device)
            row = {"workload": fn.__name__, "rows": r, "cols": c, **measure_launches(fn, args)}
            size = f"{r}x{c}"
            if gpu:
                row.update(gpu_times(fn, args, use_compile=not opts.no_compile))
                ideal = row["ideal_read"] + row["ideal_written"]
                row["roofline_ms"] = ideal / (meta["copy_GBps"] * 1e9) * 1e3
                row["tritonfunc_GBps"] = ideal / (row["tritonfunc_ms"] * 1e-3) / 1e9
                print(
                    f"{fn.__name__:<18} {size:>12} {row['launches']:>6} {row['bytes_over_ideal']:>11.2f} "
                    f"{row['tritonfunc_ms']:>13.4f} {row['eager_ms']:>9.4f} {_fmt(row['compile_ms'], '>10.4f')} "
                    f"{row['roofline_ms']:>11.4f} {row['tritonfunc_GBps']:>15.0f} "
                    f"{100 * row['roofline_ms'] / row['tritonfunc_ms']:>9.0f}%"
                )
            else:
                read = f"{row['bytes_read']} ({row['ideal_read']})"
                written = f"{row['bytes_written']} ({row['ideal_written']})"
                print(
                    f"{fn.__name__:<18} {size:>12} {row['launches']:>8} {read:>22} {written:>20} "
                    f"{row['bytes_over_ideal']:>11.2f} {row['max_abs_err']:>9.1e}"
                )
            rows.append(row)

    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
        print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
