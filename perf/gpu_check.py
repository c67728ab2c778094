"""The project's GPU check: one prepared script for a session that is lent a GPU.

    python perf/gpu_check.py [--quick]

1. Correctness on CUDA tensors (compiled Triton kernels, not the interpreter): a table of functions,
   each through jit, grad, jvp, vmap and jacrev, against torch / torch.func, with ulp-level
   tolerances (on a GPU, fp32 exp, sqrt and division are approximate and a*b+c is fused).
2. Unless --quick: the timings of perf/bench.py and perf/bench_transforms.py.
Exits non-zero if any check fails.  Run it without TRITON_INTERPRET: the interpreter replaces
triton.language's own helpers at import, which a compiled kernel cannot call.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.func
import torch.nn.functional as F

import tritonfunc

HERE = Path(__file__).resolve().parent
RTOL, ATOL = 1e-4, 1e-5

FUNCTIONS = {
    "elementwise_chain": lambda x: ((x.sin() * x.exp() + 1).tanh() * F.gelu(x)).sum(-1),
    "softmax_weighted": lambda x: (F.softmax(x, -1) * x).sum(-1),
    "layer_norm": lambda x: F.layer_norm(x, x.shape[-1:]).pow(2).sum(-1),
    "logsumexp": lambda x: torch.logsumexp(x, -1),
    "cross_entropy_rows": lambda x: F.cross_entropy(x, torch.arange(x.shape[0], device=x.device) % x.shape[1]),
    "reductions": lambda x: x.amax(-1) + x.var(-1) + x.abs().sqrt().mean(-1),
    "shapes": lambda x: torch.cat([x[:, ::2], x.T.reshape(x.shape[0], -1)[:, :3]], 1).sum(-1),
}


def close(a, b) -> bool:
    leaves_a, leaves_b = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    # absolute tolerance relative to the result's scale: float32 rounding grows with magnitude
    return len(leaves_a) == len(leaves_b) and all(
        x.shape == y.shape and torch.allclose(x, y, rtol=RTOL, atol=ATOL * max(1.0, y.abs().max().item()))
        for x, y in zip(leaves_a, leaves_b)
    )


def checks(x: torch.Tensor):
    v = torch.randn_like(x)
    for name, f in FUNCTIONS.items():
        scalar = lambda x, f=f: f(x).sum()  # noqa: E731
        yield f"{name}: jit", lambda f=f: tritonfunc.jit(f)(x), lambda f=f: f(x)
        yield f"{name}: grad", lambda s=scalar: tritonfunc.grad(s)(x), lambda s=scalar: torch.func.grad(s)(x)
        yield (
            f"{name}: hvp",
            lambda s=scalar: tritonfunc.jvp(tritonfunc.grad(s), (x,), (v,)),
            lambda s=scalar: torch.func.jvp(torch.func.grad(s), (x,), (v,)),
        )
        yield (
            f"{name}: vmap(grad)",
            lambda s=scalar: tritonfunc.vmap(tritonfunc.grad(s))(x[:, None]),
            lambda s=scalar: torch.func.vmap(torch.func.grad(s))(x[:, None]),
        )
        yield f"{name}: jacrev", lambda f=f: tritonfunc.jacrev(f)(x[:4]), lambda f=f: torch.func.jacrev(f)(x[:4])


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to check")
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("gpu_check: unset TRITON_INTERPRET (the interpreter breaks compiled kernels in this process)")
        return 2
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(64, 48, device="cuda")
    print(f"gpu_check on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    failures = 0
    for name, mine, ref in checks(x):
        try:
            with tritonfunc.record_launches() as rec:
                got = mine()
            ok = close(got, ref())
            print(f"  {'ok  ' if ok else 'FAIL'} {name:34s} launches={rec.count}")
        except Exception as e:  # a crash is a failure of this check, not the end of the run
            ok = False
            print(f"  FAIL {name:34s} {type(e).__name__}: {str(e)[:200]}")
        failures += not ok
    print(f"{failures} failed")
    if "--quick" not in sys.argv:
        for bench in ("bench.py", "bench_transforms.py"):
            failures += subprocess.run([sys.executable, str(HERE / bench)]).returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
