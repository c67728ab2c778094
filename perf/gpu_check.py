"""The project's GPU check: one command for a session that is lent a CUDA GPU.

    python perf/gpu_check.py [--out DIR] [--html FILE] [--budget-s 270] [--quick]

1. The gpu-marked tests (`pytest -m gpu`), which run this script with --quick: correctness on CUDA
   tensors (compiled Triton kernels, not the interpreter) of a table of functions through jit, grad,
   jvp, vmap and jacrev against torch / torch.func, with ulp-level tolerances (on a GPU, fp32 exp,
   sqrt and division are approximate and a*b+c is fused).
2. The perf suite (perf/suite.py) at GPU sizes within --budget-s seconds, its rows written to
   DIR/<run>.jsonl (default perf/results/, to be committed).
3. The dashboard (perf/dashboard.py) over perf/results/ and DIR, written to FILE (default DIR/dashboard.html).
Sized to finish within 8 minutes on one H100. Exits non-zero if a test fails, the suite crashes, or
tritonfunc disagrees with torch.func in the suite ("wrong"); a provider that raises ("fails") is
reported, not fatal. Run it without TRITON_INTERPRET: the interpreter replaces triton.language's
own helpers at import, which a compiled kernel cannot call.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.func
import torch.nn.functional as F

import tritonfunc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
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


def close(a, b, rtol=RTOL, atol=ATOL) -> bool:
    leaves_a, leaves_b = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    # absolute tolerance relative to the result's scale: float32 rounding grows with magnitude
    return len(leaves_a) == len(leaves_b) and all(
        x.shape == y.shape
        and torch.allclose(x.float(), y.float(), rtol=rtol, atol=atol * max(1.0, y.abs().max().item()))
        for x, y in zip(leaves_a, leaves_b)
    )


def _mlp(params, x):
    w1, b1, w2, b2 = params
    return F.linear(torch.tanh(F.linear(x, w1, b1)), w2, b2)


def _attention(params, x):
    wq, wk, wv, wo = params
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    return ((torch.softmax(q @ k.T / q.shape[-1] ** 0.5, -1) @ v) @ wo.T).pow(2).mean()


def contraction_checks():
    """The tl.dot kernels (issue 9): GEMMs with fused epilogues, per-sample gradients, the per-sample
    kernel of an attention block, in fp32 (IEEE: torch's default), TF32 and half precision."""
    g = torch.Generator(device="cuda").manual_seed(1)
    rand = lambda *shape, dtype=torch.float32: torch.randn(*shape, device="cuda", generator=g).to(dtype)
    params = (rand(128, 96) / 10, rand(128), rand(40, 128) / 11, rand(40))
    x, t = rand(256, 96), torch.arange(256, device="cuda") % 40
    loss = lambda p, x, t: F.cross_entropy(_mlp(p, x)[None], t[None])
    yield "mlp: jit", lambda: tritonfunc.jit(_mlp)(params, x), lambda: _mlp(params, x)
    psgrad = lambda ft: ft.vmap(ft.grad(loss), in_dims=(None, 0, 0))(params, x, t)
    yield "mlp: vmap(grad)", lambda: psgrad(tritonfunc), lambda: psgrad(torch.func)
    attn = (tuple(rand(32, 32) / 6 for _ in range(4)), rand(64, 16, 32))
    per_sample = lambda ft: ft.vmap(ft.grad(_attention), in_dims=(None, 0))(*attn)
    yield "attention: vmap(grad)", lambda: per_sample(tritonfunc), lambda: per_sample(torch.func)
    for dtype, tol in [(torch.float16, 2e-2), (torch.bfloat16, 5e-2)]:
        a, w = rand(256, 96, dtype=dtype), rand(128, 96, dtype=dtype)
        f = lambda a, w: torch.tanh(a @ w.T)
        yield f"linear {dtype}: jit", lambda f=f, a=a, w=w: tritonfunc.jit(f)(a, w), lambda f=f, a=a, w=w: f(a, w), tol


def tf32_check() -> bool:
    """With torch.backends.cuda.matmul.allow_tf32 the fp32 kernels use TF32, as torch's matmul then does."""
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        a, w = torch.randn(256, 512, device="cuda"), torch.randn(512, 384, device="cuda")
        with tritonfunc.record_launches() as rec:
            got = tritonfunc.jit(torch.mm)(a, w)
        uses_tf32 = 'input_precision="tf32"' in rec.launches[0].source
        return uses_tf32 and close(got, a @ w, rtol=1e-2, atol=1e-2)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


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


def correctness() -> int:
    """The quick check: every function and transform on CUDA against torch.func; returns the failures."""
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(64, 48, device="cuda")
    print(f"gpu_check on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    failures = 0
    # Each check runs three times: traced, replayed from the cache (kernels launched directly, no
    # JITFunction.run), and replayed as a CUDA graph.
    for name, mine, ref, *tol in list(checks(x)) + list(contraction_checks()):
        try:
            want = ref()
            with tritonfunc.record_launches() as rec:
                got = mine()
            replayed = mine()
            tritonfunc.set_cache(cuda_graphs=True)
            try:
                mine()  # captures
                graphed = mine()
            finally:
                tritonfunc.set_cache(cuda_graphs=False)
            ok = all(close(out, want, *(tol * 2)) for out in (got, replayed, graphed))
            print(f"  {'ok  ' if ok else 'FAIL'} {name:34s} launches={rec.count}")
        except Exception as e:  # a crash is a failure of this check, not the end of the run
            ok = False
            print(f"  FAIL {name:34s} {type(e).__name__}: {str(e)[:200]}")
        failures += not ok
    failures += interop()
    tf32 = tf32_check()
    print(f"  {'ok  ' if tf32 else 'FAIL'} fp32 contractions use TF32 when torch allows it")
    failures += not tf32
    print(f"{failures} failed")
    return failures


def interop() -> int:
    """Backward through a tritonfunc call and a torch.func transform over one, on CUDA."""
    x = torch.randn(32, 16, device="cuda", requires_grad=True)
    f = lambda x: (torch.softmax(x.sin(), -1) * x).sum()  # noqa: E731
    got = torch.autograd.grad(tritonfunc.jit(f)(x), x)[0]
    want = torch.autograd.grad(f(x), x)[0]
    ok = close(got, want) and close(
        torch.func.vmap(tritonfunc.grad(f))(x.detach()[:, None]),
        torch.func.vmap(torch.func.grad(f))(x.detach()[:, None]),
    )
    print(f"  {'ok  ' if ok else 'FAIL'} {'interop: autograd, torch.func':34s}")
    return not ok


def _step(title: str, cmd: list[str], env: dict) -> int:
    print(f"\n== {title}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    print(f"== {title}: exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the correctness table (what the gpu test runs)")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for the suite's rows (perf/results/)")
    parser.add_argument("--html", help="the dashboard to write (default OUT/dashboard.html)")
    parser.add_argument("--budget-s", type=float, default=270, help="time for the perf suite (default 270 s)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile in the suite")
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to check")
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("gpu_check: unset TRITON_INTERPRET (the interpreter breaks compiled kernels in this process)")
        return 2
    if opts.quick:
        return 1 if correctness() else 0

    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITONFUNC_BACKEND")}
    env["PYTHONUNBUFFERED"] = "1"
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    html = opts.html or str(out / "dashboard.html")
    before = set(out.glob("*.jsonl"))
    failed = []
    if _step("gpu tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"], env):
        failed.append("gpu tests")
    suite = [sys.executable, str(HERE / "suite.py"), "--out", f"{out}/", f"--budget-s={opts.budget_s}"]
    if _step("perf suite", suite + (["--no-compile"] if opts.no_compile else []), env):
        failed.append("perf suite")
    overhead = [sys.executable, str(HERE / "bench_overhead.py"), "--json", str(out / "overhead.json")]
    if _step("host overhead", overhead, env):
        failed.append("host overhead")
    wrong = [
        f"{r['workload']} {r['size']}"
        for path in set(out.glob("*.jsonl")) - before
        for r in map(json.loads, path.read_text().splitlines())
        if r["provider"] == "tritonfunc" and r["metric"] == "status" and r["value"] == "wrong"
    ]
    if wrong:
        failed.append(f"tritonfunc disagrees with torch.func on {', '.join(wrong)}")
    results = ["--results", str(HERE / "results")] + (
        ["--results", str(out)] if out.resolve() != HERE / "results" else []
    )
    if _step("dashboard", [sys.executable, str(HERE / "dashboard.py"), "--out", html, *results], env):
        failed.append("dashboard")
    print("\ngpu_check: " + ("FAILED: " + "; ".join(failed) if failed else f"passed; rows in {out}, page {html}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
