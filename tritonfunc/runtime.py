"""Runtime: run a Program's steps: load generated kernels once, allocate buffers, launch them, call
torch for opaque steps, and record every step.

Backends:
  - "triton": CUDA tensors, compiled kernels;
  - "interpreter": CPU tensors, the same kernels through Triton's interpreter (TRITON_INTERPRET=1);
  - "torch": the traced (and transformed) graph run node by node with each primitive's torch
    reference implementation: no kernels, a second oracle.
`set_backend` (or the TRITONFUNC_BACKEND variable) forces one; by default CUDA tensors use
"triton", CPU tensors use "interpreter" when TRITON_INTERPRET=1 is set and "torch" otherwise.

Generated source is written to a cache folder, named by its hash, and imported from there:
`triton.jit` needs a real file (TRITON_NOTES.md).  One kernel object per source lives in this
process, so Triton's compiled-variant cache on it is reused; Triton's own disk cache keeps the
binaries between processes.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import linecache
import math
import os
import stat
import sys
import tempfile
import threading
import time
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# Triton 3.9 warns that FP fusion will default to off in 3.10; choose explicitly (torch's CUDA
# kernels contract a*b+c into FMA too).
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

from .codegen import KernelSource  # noqa: E402
from .graph import Graph, Var  # noqa: E402
from .kernels.contraction import matmul_allows_tf32  # noqa: E402
from .pipeline import compile_program  # noqa: E402
from .schedule import KernelStep, Program  # noqa: E402

BACKENDS = ("triton", "interpreter", "torch")
_backend_override: str | None = None


def set_backend(name: str | None) -> None:
    """Forces a backend for every later call ("triton", "interpreter", "torch"), or None for auto."""
    global _backend_override
    if name is not None and name not in BACKENDS:
        raise ValueError(f"tritonfunc: unknown backend {name!r}; expected one of {BACKENDS} or None")
    _backend_override = name


def backend_for(device: torch.device) -> str:
    name = _backend_override or os.environ.get("TRITONFUNC_BACKEND") or None
    if name is None or name == "auto":
        if device.type == "cuda":
            return "triton"
        return "interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "torch"
    if name not in BACKENDS:
        raise ValueError(f"tritonfunc: unknown backend {name!r} in TRITONFUNC_BACKEND")
    if name == "triton" and device.type != "cuda":
        raise RuntimeError(
            "tritonfunc: the 'triton' backend needs CUDA tensors; on the CPU use 'interpreter' or 'torch'"
        )
    if name == "interpreter" and device.type != "cpu":
        raise RuntimeError("tritonfunc: the 'interpreter' backend runs on CPU tensors")
    return name


# ---------------------------------------------------------------------------------------------
# Launch records.


@dataclass
class Launch:
    """One step of a Program as it ran: a generated kernel's launch or a torch call."""

    kind: str  # "kernel" | "torch"
    name: str
    grid: tuple[int, ...]  # () for a torch call
    bytes_read: int
    bytes_written: int
    source: str  # the kernel's Triton source, or the torch call it made
    seconds: float  # host wall time spent in the launch (or the torch call)


@dataclass
class LaunchRecord:
    launches: list[Launch] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Every step: kernel launches and torch calls."""
        return len(self.launches)

    @property
    def kernels(self) -> int:
        return sum(1 for x in self.launches if x.kind == "kernel")

    @property
    def torch_calls(self) -> int:
        return sum(1 for x in self.launches if x.kind == "torch")

    @property
    def bytes_read(self) -> int:
        return sum(x.bytes_read for x in self.launches)

    @property
    def bytes_written(self) -> int:
        return sum(x.bytes_written for x in self.launches)


_recording = threading.local()  # the active records of this thread


def _recorders() -> list[LaunchRecord]:
    if not hasattr(_recording, "records"):
        _recording.records = []
    return _recording.records


@contextlib.contextmanager
def record_launches():
    """Collects every step this thread runs inside the block (kernel launches and torch calls):
    `with record_launches() as rec: ...`."""
    rec = LaunchRecord()
    _recorders().append(rec)
    try:
        yield rec
    finally:
        _recorders().remove(rec)


# ---------------------------------------------------------------------------------------------
# Loading kernels.


_private_dir: Path | None = None


def cache_dir() -> Path:
    """Where kernel sources are written: TRITONFUNC_CACHE_DIR, else $XDG_CACHE_HOME/tritonfunc.  A
    folder that cannot be made or written falls back, with one warning, to a private temporary one."""
    global _private_dir
    root = os.environ.get("TRITONFUNC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tritonfunc"
    )
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if path.is_dir() and os.access(path, os.W_OK | os.X_OK):
            return path
    except OSError:
        pass
    if _private_dir is None:
        _private_dir = Path(tempfile.mkdtemp(prefix="tritonfunc-"))  # mode 0o700: ours alone
        warnings.warn(
            f"tritonfunc: the kernel cache folder {path} is not a writable folder; using {_private_dir} instead",
            stacklevel=2,
        )
    return _private_dir


def _trusted(path: Path, source: str) -> bool:
    """A cache file is used only if it is a regular file of ours, not writable by others, holding
    exactly the source its name promises."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read() == source


def _source_file(ks: KernelSource) -> Path:
    """The cache file holding `ks.source`, named by its hash; a missing, corrupt, tampered or
    foreign file (a symlink, another owner's, writable by others) is replaced."""
    digest = hashlib.sha256(ks.source.encode()).hexdigest()[:20]
    path = cache_dir() / f"{ks.name}_{digest}.py"
    if not _trusted(path, ks.source):
        # write then rename: concurrent processes never see a partial file; os.replace swaps a
        # symlink itself, not what it points to.  mkstemp makes the file 0o600.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(ks.source)
        os.replace(tmp, path)
    return path


# Loaded kernel modules, least recently used first; bounded so that many shapes do not pile up.
_MODULES: collections.OrderedDict[tuple[str, bool], object] = collections.OrderedDict()
MAX_LOADED_KERNELS = 1024
# Recently generated kernels, for the ahead-of-time sm_90 check.
GENERATED: collections.OrderedDict[Path, KernelSource] = collections.OrderedDict()
_load_lock = threading.RLock()
# Triton's interpreter patches triton.language during a launch: one interpreted launch at a time.
_interpreter_lock = threading.Lock()


def _import(ks: KernelSource, path: Path, interpret: bool):
    """Executes the verified source under the file's name.  linecache is primed with that same
    source, so what triton.jit reads back through inspect is what was verified, whatever happens
    to the file afterwards."""
    key = (ks.source, interpret)
    if key in _MODULES:
        _MODULES.move_to_end(key)
        return _MODULES[key]
    if interpret:
        install_interpreter_support()
    name = f"tritonfunc_kernels.{path.stem}_{'interp' if interpret else 'jit'}"
    lines = ks.source.splitlines(keepends=True)
    linecache.cache[str(path)] = (len(ks.source), None, lines, str(path))
    module = types.ModuleType(name)
    module.__file__ = str(path)
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"  # read when @triton.jit runs
    try:
        sys.modules[name] = module
        exec(compile(ks.source, str(path), "exec"), module.__dict__)  # noqa: S102 (our generated kernel)
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
    _MODULES[key] = module
    while len(_MODULES) > MAX_LOADED_KERNELS:
        _, evicted = _MODULES.popitem(last=False)
        sys.modules.pop(evicted.__name__, None)
    return module


def load_kernel(ks: KernelSource, interpret: bool):
    with _load_lock:
        path = _source_file(ks)
        GENERATED[path] = ks
        GENERATED.move_to_end(path)
        while len(GENERATED) > MAX_LOADED_KERNELS:
            GENERATED.popitem(last=False)
        fn = getattr(_import(ks, path, interpret), ks.name)
    if os.environ.get("TRITONFUNC_CHECK_SM90") == "1":
        compile_for_sm90(ks)
    return fn


def compile_for_sm90(ks: KernelSource) -> dict:
    """Compiles a generated kernel for the H100 (sm_90) on this machine; raises on any error."""
    from .aot import compile_sm90

    return compile_sm90(str(_source_file(ks)), ks.name, tuple(ks.signature.items()), ks.num_warps, ks.num_stages)


def _lgamma(x: float) -> float:
    try:
        return math.lgamma(x)
    except ValueError:  # a pole (0 or a negative integer): torch gives inf
        return math.inf


@functools.cache
def install_interpreter_support():
    """Gives libdevice functions numpy bodies under the interpreter (its stubs return None).

    Each replacement keeps the original's name, module and signature and hands over to the
    original when called with a compiler `_semantic`, so compiling for a GPU in the same process
    still works.
    """
    import triton.language as tl
    from triton.language.extra import libdevice
    from triton.runtime.interpreter import TensorHandle

    def numpy_extern(original, np_fn):
        @functools.wraps(original)
        def fn(*args, _semantic=None, **kwargs):
            if _semantic is not None:
                return original(*args, _semantic=_semantic, **kwargs)
            tensors = [a for a in args if isinstance(a, tl.tensor)]
            dtype = tensors[0].dtype
            data = [a.handle.data if isinstance(a, tl.tensor) else a for a in args]
            with np.errstate(all="ignore"):
                out = np.asarray(np_fn(*data)).astype(tensors[0].handle.data.dtype)
            ty = tl.block_type(dtype, list(out.shape)) if out.ndim else dtype
            return tl.tensor(TensorHandle(out, dtype), ty)

        return fn

    table = {
        "tanh": np.tanh,
        "log1p": np.log1p,
        "expm1": np.expm1,
        "tan": np.tan,
        "pow": np.power,
        "atan2": np.arctan2,
        "log10": np.log10,
        "sinh": np.sinh,
        "cosh": np.cosh,
        "asin": np.arcsin,
        "acos": np.arccos,
        "atan": np.arctan,
        "asinh": np.arcsinh,
        "acosh": np.arccosh,
        "atanh": np.arctanh,
        "hypot": np.hypot,
        "rint": np.rint,  # half to even
        "signbit": np.signbit,
        "erfc": np.vectorize(math.erfc, otypes=[np.float64]),
        "lgamma": np.vectorize(_lgamma, otypes=[np.float64]),
        # numpy has no erfinv (and scipy is not a dependency): torch's, on the same values
        "erfinv": lambda x: torch.special.erfinv(torch.from_numpy(np.asarray(x))).numpy(),
    }
    for name, np_fn in table.items():
        setattr(libdevice, name, numpy_extern(getattr(libdevice, name), np_fn))


# ---------------------------------------------------------------------------------------------
# Executables: a Program with its kernels loaded, run on fresh inputs.


def _nbytes(vars_: list[Var]) -> int:
    return sum(v.numel * v.dtype.itemsize for v in vars_)


def describe_torch_call(node) -> str:
    ins = ", ".join(v.type_str for v in node.inputs)
    params = "".join(repr(p) for p in node.params.values())
    return f"{node.prim.name}{params} on ({ins}) -> {', '.join(v.type_str for v in node.outs)}"


@dataclass
class Executable:
    program: Program
    kernels: dict[int, object]  # step index -> loaded kernel
    free_after: list[list[Var]]  # buffers no later step needs, per step
    interpret: bool

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        graph = self.program.graph
        env: dict[Var, torch.Tensor] = dict(zip(graph.inputs, inputs))
        device = inputs[0].device if inputs else torch.device("cpu")
        for i, (step, dead) in enumerate(zip(self.program.steps, self.free_after)):
            start = time.perf_counter()
            if isinstance(step, KernelStep):
                ks = step.source
                for v in ks.args[ks.num_loads :]:
                    env[v] = torch.empty(v.shape, dtype=v.dtype, device=device)
                if ks.grid[0] > 0:
                    self.launch(self.kernels[i], ks, [env[v] for v in ks.args])
                    _record("kernel", ks.name, ks.grid, ks.bytes_read, ks.bytes_written, ks.source, start)
            else:
                node = step.node
                outs = node.prim.impl(*[env[v] for v in node.inputs], **node.params)
                outs = outs if node.prim.multiple_results else (outs,)  # a template run by torch
                for v, t in zip(node.outs, outs):
                    _check_opaque_result(node, v, t)
                    # the kernels after it read intermediates as contiguous buffers
                    env[v] = t if t.is_contiguous() else t.contiguous()
                _record(
                    "torch",
                    node.prim.name,
                    (),
                    _nbytes(node.inputs),
                    _nbytes(list(node.outs)),
                    describe_torch_call(node),
                    start,
                )
            for v in dead:
                env.pop(v, None)
        for v in graph.outputs:  # zero-size outputs: no kernel computes them
            if v not in env:
                env[v] = torch.empty(v.shape, dtype=v.dtype, device=device)
        return _distinct([env[v] for v in graph.outputs])

    def launch(self, kernel, ks: KernelSource, args: list[torch.Tensor]) -> None:
        if self.interpret:
            with _interpreter_lock:
                kernel[ks.grid](*args, num_warps=ks.num_warps)
        else:
            kernel[ks.grid](*args, num_warps=ks.num_warps, num_stages=ks.num_stages)


def _record(kind, name, grid, read, written, source, start) -> None:
    records = _recorders()
    if records:
        launch = Launch(kind, name, grid, read, written, source, time.perf_counter() - start)
        for rec in records:
            rec.launches.append(launch)


def _check_opaque_result(node, v: Var, t) -> None:
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != v.shape or t.dtype != v.dtype:
        got = f"{t.dtype}{list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise RuntimeError(f"tritonfunc: {node.prim.name} returned {got} where its shape rule promised {v.type_str}")


def _distinct(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Outputs that CSE made one value (two equal results, two zero gradients) are separate tensors,
    as in torch: a later in-place update of one must not change the other."""
    seen: set[int] = set()
    result = []
    for t in outputs:
        result.append(t.clone() if id(t) in seen else t)
        seen.add(id(t))
    return result


def program_for(graph: Graph, inputs: list[torch.Tensor], target: str | None = None) -> Program:
    """The Program of a graph, with each kernel's source, for inputs with these strides; for the
    interpreter when they are CPU tensors, else for the H100 (meta tensors: a plan at GPU sizes)."""
    if target is None:
        device = inputs[0].device if inputs else torch.device("cpu")
        target = "interpreter" if device.type == "cpu" else "sm90"
    return compile_program(graph, {v: tuple(t.stride()) for v, t in zip(graph.inputs, inputs)}, target)


def build(graph: Graph, inputs: list[torch.Tensor], interpret: bool) -> Executable:
    program = program_for(graph, inputs, "interpreter" if interpret else "sm90")
    kernels = {i: load_kernel(s.source, interpret) for i, s in enumerate(program.steps) if isinstance(s, KernelStep)}
    keep = set(program.graph.outputs) | set(program.graph.inputs)
    last_use: dict[Var, int] = {}
    for i, step in enumerate(program.steps):
        for v in step.inputs + step.outputs:
            last_use[v] = i
    free_after = [[v for v, i in last_use.items() if i == k and v not in keep] for k in range(len(program.steps))]
    return Executable(program, kernels, free_after, interpret)


_EXECUTABLES: dict[tuple, Executable] = {}


def evaluate(graph: Graph, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The torch backend: every primitive's reference implementation, node by node."""
    env: dict[Var, torch.Tensor] = dict(zip(graph.inputs, inputs))
    device = inputs[0].device if inputs else torch.device("cpu")
    for n in graph.nodes:
        if n.prim.kind == "source" and not n.inputs:
            outs = n.prim.impl(device=device, **n.params)
        else:
            outs = n.prim.impl(*[env[v] for v in n.inputs], **n.params)
        env.update(zip(n.outs, outs if n.prim.multiple_results else (outs,)))
    return _distinct([env[v] for v in graph.outputs])


def executable_for(graph: Graph, inputs: list[torch.Tensor], backend: str) -> Executable:
    # Float32 contractions follow torch's TF32 setting, read when their kernels are generated.
    tf32 = matmul_allows_tf32()
    key = (graph.pretty(), tuple((tuple(t.stride()), t.device.type) for t in inputs), backend, tf32)
    if key not in _EXECUTABLES:
        _EXECUTABLES[key] = build(graph, inputs, interpret=(backend == "interpreter"))
    return _EXECUTABLES[key]


def execute(graph: Graph, inputs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Runs a traced graph on concrete inputs (arguments, then constants) with the chosen backend."""
    backend = backend_for(device)
    if backend == "torch":
        return evaluate(graph, inputs)
    inputs = [t.detach() for t in inputs]
    return executable_for(graph, inputs, backend)(inputs)
