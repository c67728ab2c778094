"""Ahead-of-time compilation of generated kernels for the H100 (sm_90), on a machine without a GPU.

Triton's interpreter leaves parts of triton.language patched after a launch, so compiling in a
process that also interprets kernels is unreliable.  Compilation therefore runs in a long-lived
worker process started without TRITON_INTERPRET; `compile_sm90` sends it one kernel at a time.
Run as `python -m tritonfunc.aot FILE.py ...` it compiles every kernel in the given files.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
import subprocess
import sys
import threading

_lock = threading.Lock()
_worker: subprocess.Popen | None = None


def _start() -> subprocess.Popen:
    global _worker
    if _worker is None or _worker.poll() is not None:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        _worker = subprocess.Popen(
            [sys.executable, "-m", "tritonfunc.aot", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        atexit.register(_worker.kill)
    return _worker


@functools.cache
def compile_sm90(
    path: str, name: str, signature: tuple, num_warps: int = 4, num_stages: int = 3, usage: bool = False
) -> dict:
    """Compiles kernel `name` from the source file `path`; returns its metadata or raises.  With
    `usage`, also its registers per thread and bytes spilled (ptxas -v: a fraction of a second more)."""
    request = {"path": path, "name": name, "signature": dict(signature), "num_warps": num_warps}
    request.update(num_stages=num_stages, usage=usage)
    with _lock:
        worker = _start()
        worker.stdin.write(json.dumps(request) + "\n")
        worker.stdin.flush()
        reply = json.loads(worker.stdout.readline() or '{"error": "the sm_90 compile worker died"}')
    if "error" in reply:
        raise RuntimeError(
            f"tritonfunc: generated kernel {name} ({path}) does not compile for sm_90:\n{reply['error']}"
        )
    return reply


def _compile_here(
    path: str, name: str, signature: dict, num_warps: int = 4, num_stages: int = 3, usage: bool = False
) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = importlib.util.spec_from_file_location(f"tritonfunc_aot_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    source = ASTSource(getattr(module, name), signature, {})
    options = {"num_warps": num_warps, "num_stages": num_stages}
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    meta = compiled.metadata
    registers, spills = _register_usage(compiled.asm.get("ptx"), meta.name) if usage else (None, None)
    shared = getattr(meta, "shared", None)
    return {"registers": registers, "spills": spills, "shared": shared, "num_warps": meta.num_warps}


def _register_usage(ptx: str | None, name: str) -> tuple[int | None, int | None]:
    """Registers per thread and bytes spilled, from the wheel's ptxas -v on the PTX (no GPU needed:
    a kernel that spills on an H100 shows here)."""
    import re
    import tempfile

    from triton.backends.nvidia import compiler

    if ptx is None:
        return None, None
    try:  # the signature differs between Triton versions; this is a diagnostic, never an error
        ptxas = compiler.get_ptxas(90).path
    except TypeError:
        ptxas = compiler.get_ptxas().path
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run(
            [ptxas, "-arch=sm_90a", "-v", path, "-o", os.path.join(tmp, "kernel.cubin")],
            capture_output=True,
            text=True,
        )
    text = out.stdout + out.stderr
    registers = re.search(rf"Function properties for {re.escape(name)}[\s\S]*?Used (\d+) registers", text)
    registers = registers or re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores", text)
    return (int(registers.group(1)) if registers else None), (int(spills.group(1)) if spills else None)


def _serve():
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = _compile_here(
                request["path"],
                request["name"],
                request["signature"],
                request.get("num_warps", 4),
                request.get("num_stages", 3),
                request.get("usage", False),
            )
        except Exception as e:  # the error text goes back to the test that generated the kernel
            reply = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        _serve()
