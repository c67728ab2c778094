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
import weakref
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
# TRITONFUNC_BACKEND and TRITON_INTERPRET, read when tritonfunc is imported and by set_backend(None)
# (not at every call: a cached call costs microseconds).
_environment: tuple[str | None, bool] = (None, False)


def _read_environment() -> None:
    global _environment
    _environment = (os.environ.get("TRITONFUNC_BACKEND") or None, os.environ.get("TRITON_INTERPRET") == "1")


_read_environment()


def set_backend(name: str | None) -> None:
    """Forces a backend for every later call ("triton", "interpreter", "torch"), or None for the
    default (which reads TRITONFUNC_BACKEND and TRITON_INTERPRET again)."""
    global _backend_override
    if name is not None and name not in BACKENDS:
        raise ValueError(f"tritonfunc: unknown backend {name!r}; expected one of {BACKENDS} or None")
    _backend_override = name
    if name is None:
        _read_environment()


def backend_for(device: torch.device) -> str:
    name = _backend_override or _environment[0]
    if name is None or name == "auto":
        if device.type == "cuda":
            return "triton"
        return "interpreter" if _environment[1] else "torch"
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


def compile_for_sm90(ks: KernelSource, usage: bool = False) -> dict:
    """Compiles a generated kernel for the H100 (sm_90) on this machine; raises on any error.  With
    `usage`, the result also holds its registers per thread and bytes spilled."""
    from .aot import compile_sm90

    signature = tuple(ks.signature.items())
    return compile_sm90(str(_source_file(ks)), ks.name, signature, ks.num_warps, ks.num_stages, usage)


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


class Executable:
    """A Program with its kernels loaded, run on fresh inputs: a flat list of steps over numbered
    buffer slots, so a call does little more than allocate outputs and launch."""

    def __init__(self, program: Program, kernels: dict[int, object], interpret: bool):
        self.program = program
        self.interpret = interpret
        graph = program.graph
        slot: dict[Var, int] = {}
        for v in graph.inputs:
            slot.setdefault(v, len(slot))
        for step in program.steps:
            for v in step.outputs:
                slot.setdefault(v, len(slot))
        for v in graph.outputs:  # zero-size outputs: no step computes them
            slot.setdefault(v, len(slot))
        # zero-size values a step reads (a torch call on an empty tensor): no step computes them either
        unmade = [v for step in program.steps for v in step.inputs if v not in slot]
        for v in unmade:
            slot.setdefault(v, len(slot))
        self.empties = [(slot[v], v.shape, v.dtype) for v in dict.fromkeys(unmade)]
        self.num_slots = len(slot)
        self.num_inputs = len(graph.inputs)
        keep = set(graph.outputs) | set(graph.inputs)
        last_use: dict[Var, int] = {}
        for i, step in enumerate(program.steps):
            for v in step.inputs + step.outputs:
                last_use[v] = i
        self.steps = []
        for i, step in enumerate(program.steps):
            dead = [slot[v] for v, k in last_use.items() if k == i and v not in keep]
            if isinstance(step, KernelStep):
                ks = step.source
                outs = [(slot[v], v.shape, v.dtype) for v in ks.args[ks.num_loads :]]
                self.steps.append(("kernel", kernels[i], ks, [slot[v] for v in ks.args], outs, dead))
            else:
                node = step.node
                out_slots = [slot[v] for v in node.outs]
                self.steps.append(("torch", node, out_slots, [slot[v] for v in node.inputs], list(node.outs), dead))
        self.outputs = [slot[v] for v in graph.outputs]
        self.unset = [(slot[v], v.shape, v.dtype) for v in graph.outputs if v not in set(graph.inputs)]
        self.compiled: dict[tuple, object] = {}  # (step, alignment of its pointers) -> compiled kernel

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        env: list = [None] * self.num_slots
        env[: self.num_inputs] = inputs
        device = inputs[0].device if inputs else torch.device("cpu")
        records = _recorders()
        stream = None if self.interpret or device.type != "cuda" else torch.cuda.current_stream(device).cuda_stream
        for k, shape, dtype in self.empties:
            env[k] = torch.empty(shape, dtype=dtype, device=device)
        for i, (kind, what, ks, reads, writes, dead) in enumerate(self.steps):
            start = time.perf_counter() if records else 0.0
            if kind == "kernel":
                for k, shape, dtype in writes:
                    env[k] = torch.empty(shape, dtype=dtype, device=device)
                if ks.grid[0] > 0:
                    self.launch(i, what, ks, [env[k] for k in reads], stream)
                    if records:
                        _record(records, "kernel", ks.name, ks.grid, ks.bytes_read, ks.bytes_written, ks.source, start)
            else:
                node = what
                outs = node.prim.impl(*[env[k] for k in reads], **node.params)
                outs = outs if node.prim.multiple_results else (outs,)  # a template run by torch
                for v, k, t in zip(writes, ks, outs):  # ks: the output slots of a torch step
                    _check_opaque_result(node, v, t)
                    env[k] = t if t.is_contiguous() else t.contiguous()  # kernels read buffers as contiguous
                if records:
                    read, written = _nbytes(node.inputs), _nbytes(list(node.outs))
                    _record(records, "torch", node.prim.name, (), read, written, describe_torch_call(node), start)
            for k in dead:
                env[k] = None
        for k, shape, dtype in self.unset:
            if env[k] is None:
                env[k] = torch.empty(shape, dtype=dtype, device=device)
        return _distinct([env[k] for k in self.outputs])

    def launch(self, i: int, kernel, ks: KernelSource, args: list[torch.Tensor], stream) -> None:
        if self.interpret:
            with _interpreter_lock:
                kernel[ks.grid](*args, num_warps=ks.num_warps)
            return
        # A compiled kernel is specialised to its pointers' 16-byte alignment: one per pattern.
        key = (i, tuple(t.data_ptr() % 16 == 0 for t in args))
        compiled = self.compiled.get(key) if DIRECT_LAUNCH else None
        if compiled is not None:
            g = ks.grid
            compiled.run(
                g[0], g[1] if len(g) > 1 else 1, g[2] if len(g) > 2 else 1, stream,
                compiled.function, compiled.packed_metadata, None, None, None, *args,
            )  # fmt: skip
            return
        # binds, compiles once, launches
        compiled = kernel[ks.grid](*args, num_warps=ks.num_warps, num_stages=ks.num_stages)
        if all(hasattr(compiled, a) for a in ("run", "function", "packed_metadata")):
            self.compiled[key] = compiled


class GraphReplay:
    """An Executable captured once into a CUDA graph and replayed: the call copies its inputs into
    the captured buffers (so it is right whatever their addresses), replays every launch at once,
    and returns copies of the outputs (the next replay overwrites the captured ones).  Worth it
    where launches, not bytes, dominate: many small kernels."""

    def __init__(self, executable: Executable, inputs: list[torch.Tensor]):
        self.executable = executable
        self.inputs = [t.clone() for t in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile and load everything before capturing
            executable(self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = executable(self.inputs)

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        for static, t in zip(self.inputs, inputs):
            static.copy_(t)
        self.graph.replay()
        return [t.clone() for t in self.outputs]


# Launching a compiled kernel directly (its launcher, with the arguments as they are) skips
# JITFunction.run's per-call argument binding (~10 us a launch).  TRITONFUNC_DIRECT_LAUNCH=0
# goes through JITFunction.run every time.
DIRECT_LAUNCH = os.environ.get("TRITONFUNC_DIRECT_LAUNCH", "1") != "0"


def _record(records, kind, name, grid, read, written, source, start) -> None:
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
    return Executable(program, kernels, interpret)


# Executables of graphs run outside the trace cache (a vjp_fn's backward, a graph traced anew
# at every call): by graph object first, then by graph text, bounded.
_BY_GRAPH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_EXECUTABLES: collections.OrderedDict[tuple, Executable] = collections.OrderedDict()
MAX_EXECUTABLES = 256


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
    layout = (tuple((tuple(t.stride()), t.device.type) for t in inputs), backend, matmul_allows_tf32())
    mine = _BY_GRAPH.setdefault(graph, {})
    if layout in mine:
        return mine[layout]
    key = (graph.pretty(), layout)
    with _load_lock:
        executable = _EXECUTABLES.get(key)
        if executable is None:
            executable = build(graph, inputs, interpret=(backend == "interpreter"))
            _EXECUTABLES[key] = executable
            while len(_EXECUTABLES) > MAX_EXECUTABLES:
                _EXECUTABLES.popitem(last=False)
        _EXECUTABLES.move_to_end(key)
    mine[layout] = executable
    return executable


def clear() -> None:
    """Drops every executable and loaded kernel (the sources on disk stay)."""
    with _load_lock:
        _BY_GRAPH.clear()
        _EXECUTABLES.clear()
        _MODULES.clear()
        GENERATED.clear()


def execute(graph: Graph, inputs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Runs a traced graph on concrete inputs (arguments, then constants) with the chosen backend."""
    backend = backend_for(device)
    if backend == "torch":
        return evaluate(graph, inputs)
    inputs = [t.detach() for t in inputs]
    return executable_for(graph, inputs, backend)(inputs)
