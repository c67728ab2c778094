"""A tour of tritonfunc in a few seconds: `python -m tritonfunc.demo`.

Each function below is traced, fused into one Triton kernel and run; the demo prints its error
against eager torch, how many kernels it launched and how many bytes they moved, against the ideal
of reading every input once and writing every output once, then the softmax kernel's source.
Without a CUDA GPU the kernels run on the CPU through Triton's interpreter. Exits 1 if a check fails.
"""

import os
import sys

import torch
import torch.nn.functional as F

import tritonfunc


def elementwise_chain(x):
    """20 elementwise torch ops (counted on the right); one kernel, one read of x, one write."""
    a = torch.sin(x) * 1.5 + 0.25  # sin mul add            3
    b = torch.cos(a) - x * 0.5  # cos mul sub               6
    c = torch.exp(-b.abs())  # abs neg exp                  9
    d = torch.sqrt(c + 1.0) * a  # add sqrt mul            12
    e = torch.maximum(d, -d * 0.25)  # neg mul maximum     15
    f = torch.log(e.abs() + 1e-3)  # abs add log           18
    return f * c + b  # mul add                            20


def softmax(x):
    return torch.softmax(x, dim=-1)


def layer_norm(x, weight, bias):
    return F.layer_norm(x, (x.shape[-1],), weight, bias)


def logsumexp(x):
    return torch.logsumexp(x, dim=-1)


def _rows(rows, cols, device):
    return (torch.randn(rows, cols, device=device),)


def _layer_norm_args(rows, cols, device):
    return (torch.randn(rows, cols, device=device), torch.randn(cols, device=device), torch.randn(cols, device=device))


# (function, makes its arguments from rows, cols and a device); perf/suite.py runs the same table.
WORKLOADS = [
    (elementwise_chain, _rows),
    (softmax, _rows),
    (layer_norm, _layer_norm_args),
    (logsumexp, _rows),
]


def ideal_bytes(args, out) -> tuple[int, int]:
    """The fewest bytes a run can move: each input read once, the output written once."""
    return sum(t.nbytes for t in args), out.nbytes


def run(fn, args):
    """Runs `fn` through tritonfunc.jit; returns (output, launch record, max abs error vs eager torch, allclose)."""
    with tritonfunc.record_launches() as rec:
        out = tritonfunc.jit(fn)(*args)
    expected = fn(*args)
    return out, rec, (out - expected).abs().max().item(), torch.allclose(out, expected, rtol=1e-4, atol=1e-4)


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu, Triton interpreter"
    rows, cols = 64, 1000
    torch.manual_seed(0)
    print(f"tritonfunc demo on {where}: inputs f32[{rows},{cols}]\n")
    print(f"{'function':<18} {'max|err|':>9} {'launches':>8} {'bytes read (ideal)':>20} {'written (ideal)':>18}  check")
    failed = []
    sources = {}
    for fn, make_args in WORKLOADS:
        args = make_args(rows, cols, device)
        out, rec, err, close = run(fn, args)
        read, written = ideal_bytes(args, out)
        ok = close and rec.count == 1 and rec.bytes_read == read and rec.bytes_written == written
        if not ok:
            failed.append(fn.__name__)
        sources[fn.__name__] = [launch.source for launch in rec.launches]
        print(
            f"{fn.__name__:<18} {err:>9.1e} {rec.count:>8} {f'{rec.bytes_read} ({read})':>20} "
            f"{f'{rec.bytes_written} ({written})':>18}  {'ok' if ok else 'FAILED'}"
        )
    print("\nThe softmax kernel, as generated:\n")
    print("\n\n".join(sources["softmax"]))
    if failed:
        print(f"FAILED: {', '.join(failed)} (want: allclose to torch, 1 launch, ideal bytes)", file=sys.stderr)
        return 1
    print("all checks passed: each function ran as one kernel moving the ideal bytes")
    return 0


if __name__ == "__main__":
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton reads TRITON_INTERPRET when it is imported, which `python -m tritonfunc.demo` did
        # with the package before this line: run again with it set (kernels run on the CPU then).
        os.environ["TRITON_INTERPRET"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "tritonfunc.demo", *sys.argv[1:]])
    sys.exit(main())
