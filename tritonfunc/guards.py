"""Guards: what a traced function read besides its arguments, found by where it comes from.

A cached Program is only valid while everything the function read is unchanged.  After a trace,
`discover` walks what the function can reach from its *roots* (the user's functions under the
transform stack, and arguments that are not tensors): closure cells, the globals its code names,
default arguments, and the attributes of modules and plain objects found there, recursively.  It
records one guard per value reached, as a path from a root:

  - a Python value (number, string, bool, None, dtype, device, ...) is compared by value;
  - a user function by its code object (its own closure and globals are guarded below it);
  - a library function, a class or a Python module by identity;
  - an nn.Module or a plain object by type (its attributes are guarded below it);
  - lists, tuples and dicts by length and keys (their items below them);
  - a captured tensor the trace used as a constant is its *source*: it is re-read at every call
    (so in-place updates are seen), and a tensor rebound under the same name with the same shape,
    dtype, strides and device simply takes its place.  A tensor the trace did not use as a value is
    compared by that metadata too (the function may have read its shape).

Anything else (an object with no __dict__, more state than GUARD_LIMIT values) makes the function
unguardable: it is then re-traced at every call, never stale, and `explain` says why.

Checking walks the same paths in order, each object resolved once from its parent, so a check costs
one attribute or item lookup and one comparison per guard.
"""

from __future__ import annotations

import builtins
import dis
import functools
import math
import types
from dataclasses import dataclass

import torch

# Values compared by value.
SCALAR_TYPES = (
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    type(None),
    torch.dtype,
    torch.device,
    torch.layout,
    torch.memory_format,
    slice,
    range,
    type(Ellipsis),
)
# Functions and objects of these packages are trusted not to change: guarded by identity.
LIBRARY_MODULES = ("torch", "tritonfunc", "triton", "numpy", "math", "functools", "operator", "builtins", "typing")
GUARD_LIMIT = 512  # values guarded per call, at most
DEPTH_LIMIT = 8  # object nesting followed, at most

MISSING = object()
RECIPE = "__tritonfunc_recipe__"  # set on tritonfunc's wrappers: (name, params, inner function)


class Unguardable(Exception):
    """What a function reads cannot be guarded; the message says what."""


@dataclass(frozen=True)
class Guard:
    parent: int  # index of the guard holding the containing object; -1 for a root
    step: str  # root | cell | global | default | kwdefault | attr | item | func | self | inner
    key: object  # the root's position, cell index, name, item key
    check: str  # value | is | code | type | len | keys | tensor | recipe (see _TESTS)
    expected: object
    what: str  # the path, for explain


def _is_library(obj) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module.split(".")[0] in LIBRARY_MODULES


def tensor_meta(t: torch.Tensor) -> tuple:
    return (tuple(t.shape), t.dtype, tuple(t.stride()), t.device, t.requires_grad)


def _global_names(code: types.CodeType) -> list[str]:
    """Names the code (and the functions defined inside it) loads as globals."""
    names: list[str] = []
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval not in names:
            names.append(ins.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += [n for n in _global_names(const) if n not in names]
    return names


class _Walker:
    def __init__(self, const_ids: dict[int, int]):
        self.guards: list[Guard] = []
        self.const_ids = const_ids  # id(tensor) -> position among the graph's constants
        self.sources: dict[int, int] = {}  # constant position -> guard index
        self.seen: set[int] = set()

    def add(self, parent, step, key, check, expected, what) -> int:
        if len(self.guards) >= GUARD_LIMIT:
            raise Unguardable(f"it reads more than {GUARD_LIMIT} values besides its arguments")
        self.guards.append(Guard(parent, step, key, check, expected, what))
        return len(self.guards) - 1

    def visit(self, value, parent: int, step: str, key, what: str, depth: int = 0) -> None:
        if depth > DEPTH_LIMIT:
            raise Unguardable(f"{what} nests objects deeper than {DEPTH_LIMIT} levels")
        if isinstance(value, torch.Tensor):
            position = self.const_ids.get(id(value))
            if position is not None and position not in self.sources:
                self.sources[position] = self.add(parent, step, key, "tensor", tensor_meta(value), what)
            elif position is None and id(value) not in self.seen:
                # Not read as a value, but its shape or dtype may have been (`x * h.shape[0]`).
                self.seen.add(id(value))
                self.add(parent, step, key, "tensor", tensor_meta(value), what)
            return
        if isinstance(value, SCALAR_TYPES):
            self.add(parent, step, key, "value", value, what)
            return
        recipe = getattr(value, RECIPE, None)
        if recipe is not None:  # a tritonfunc transform of some function: its recipe, then that function
            me = self.add(parent, step, key, "recipe", recipe_key(value), what)
            self.visit(recipe[2], me, "inner", None, f"{what}.<transformed>", depth + 1)
            return
        if id(value) in self.seen:  # already guarded through another path
            return
        if isinstance(value, (type, types.ModuleType, types.BuiltinFunctionType, types.BuiltinMethodType)) or (
            callable(value) and _is_library(value) and not isinstance(value, torch.nn.Module)
        ):
            self.add(parent, step, key, "is", value, what)
            return
        self.seen.add(id(value))
        if isinstance(value, types.FunctionType):
            me = self.add(parent, step, key, "code", value.__code__, what)
            self.visit_function(value, me, what, depth)
        elif isinstance(value, types.MethodType):
            me = self.add(parent, step, key, "type", types.MethodType, what)
            self.visit(value.__func__, me, "func", None, f"{what}.__func__", depth + 1)
            self.visit(value.__self__, me, "self", None, f"{what}.__self__", depth + 1)
        elif isinstance(value, (list, tuple)):
            me = self.add(parent, step, key, "len", (type(value), len(value)), what)
            for i, item in enumerate(value):
                self.visit(item, me, "item", i, f"{what}[{i}]", depth + 1)
        elif isinstance(value, dict):
            me = self.add(parent, step, key, "keys", (type(value), tuple(value.keys())), what)
            for k, item in value.items():
                self.visit(item, me, "item", k, f"{what}[{k!r}]", depth + 1)
        elif isinstance(value, torch.nn.Module):
            me = self.add(parent, step, key, "type", type(value), what)
            hooks = _hooks(value)
            listed = self.add(me, "hooks", None, "len", (list, len(hooks)), f"{what}<hooks>")
            for i, hook in enumerate(hooks):
                self.visit(hook, listed, "item", i, f"{what}<hook {i}>", depth + 1)
            for name, attr in vars(value).items():
                # Private state other than tensors and submodules (caches, torch's own flags) does
                # not change what forward computes; hooks are guarded above.
                if name.startswith("_") and name not in ("_parameters", "_buffers", "_modules"):
                    continue
                self.visit(attr, me, "attr", name, f"{what}.{name}", depth + 1)
        elif hasattr(value, "__dict__"):  # a plain object (or a callable one: its class is guarded)
            me = self.add(parent, step, key, "type", type(value), what)
            for name, attr in vars(value).items():
                self.visit(attr, me, "attr", name, f"{what}.{name}", depth + 1)
        elif isinstance(value, (set, frozenset)) and all(isinstance(x, SCALAR_TYPES) for x in value):
            self.add(parent, step, key, "value", frozenset(value), what)
        else:
            raise Unguardable(f"{what} is a {type(value).__name__}, which tritonfunc cannot guard")

    def visit_function(self, fn: types.FunctionType, me: int, what: str, depth: int) -> None:
        if fn.__closure__:
            for i, (name, cell) in enumerate(zip(fn.__code__.co_freevars, fn.__closure__)):
                try:
                    contents = cell.cell_contents
                except ValueError:  # an empty cell (a name assigned later)
                    continue
                self.visit(contents, me, "cell", i, f"{what}<closure {name}>", depth + 1)
        for name in _global_names(fn.__code__):
            value = fn.__globals__.get(name, MISSING)
            if value is MISSING:
                if not hasattr(builtins, name):
                    self.add(me, "global", name, "is", MISSING, f"{what}<global {name}>")  # absent still
                continue
            self.visit(value, me, "global", name, f"{what}<global {name}>", depth + 1)
        for i, value in enumerate(fn.__defaults__ or ()):
            self.visit(value, me, "default", i, f"{what}<default {i}>", depth + 1)
        for name, value in (fn.__kwdefaults__ or {}).items():
            self.visit(value, me, "kwdefault", name, f"{what}<default {name}>", depth + 1)


def recipe_key(fn) -> tuple:
    """What identifies a callable in a cache key: a tritonfunc transform by its name, parameters
    and the key of what it transforms; a user function by its code; anything else by type."""
    recipe = getattr(fn, RECIPE, None)
    if recipe is not None:
        name, params, inner = recipe
        return (name, params, recipe_key(inner))
    if isinstance(fn, functools.partial):
        return ("partial", recipe_key(fn.func), len(fn.args), tuple(fn.keywords))
    if isinstance(fn, types.FunctionType):
        return ("code", fn.__code__)
    if isinstance(fn, types.MethodType):
        return ("method", recipe_key(fn.__func__), type(fn.__self__))
    if isinstance(fn, torch.nn.Module):
        return ("module", type(fn))
    if _is_library(fn) or isinstance(fn, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        return ("library", fn)
    return ("object", type(fn))


def roots_of(fn) -> list:
    """The user's callables under a transform stack, outermost first."""
    recipe = getattr(fn, RECIPE, None)
    if recipe is not None:
        return roots_of(recipe[2])
    if isinstance(fn, functools.partial):  # its bound arguments are read like captured values
        return [*roots_of(fn.func), fn.args, fn.keywords]
    return [fn]


class Guards:
    """The guards of one cached trace, compiled into one Python function: straight-line code with
    one lookup and one test per guard, returning the constants' current values or None."""

    def __init__(self, guards: list[Guard], sources: list[int]):
        self.guards = guards
        self.sources = sources  # per graph constant: the guard index of its source, or -1 (baked in)
        self.resolve = _compile(guards, sources)

    def describe(self) -> list[str]:
        return [f"{g.what}: {g.check}" for g in self.guards]


def _hooks(module: torch.nn.Module) -> list:
    """The forward hooks of a module (they run inside its call, so they are traced)."""
    return [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]


_STEPS = {
    "root": "roots[{key}]",
    "cell": "{obj}.__closure__[{key}].cell_contents",
    "global": "{obj}.__globals__.get({key}, MISSING)",
    "attr": "vars({obj}).get({key}, MISSING)",
    "item": "{obj}[{key}]",
    "default": "{obj}.__defaults__[{key}]",
    "kwdefault": "{obj}.__kwdefaults__[{key}]",
    "func": "{obj}.__func__",
    "self": "{obj}.__self__",
    "inner": "getattr({obj}, RECIPE)[2]",
    "hooks": "_hooks({obj})",
}
_TESTS = {
    "value": "type({v}) is {e}[0] and {v} == {e}[1]",
    "nan": "type({v}) is float and {v} != {v}",
    "is": "{v} is {e}",
    "code": "getattr({v}, '__code__', None) is {e}",
    "type": "type({v}) is {e}",
    "len": "type({v}) is {e}[0] and len({v}) == {e}[1]",
    "keys": "type({v}) is {e}[0] and tuple({v}.keys()) == {e}[1]",
    "tensor": "isinstance({v}, Tensor) and {v}.shape == {e}[0] and {v}.dtype is {e}[1] and {v}.stride() == {e}[2] "
    "and {v}.device == {e}[3] and {v}.requires_grad is {e}[4]",
    "recipe": "getattr({v}, RECIPE, None) is not None and recipe_key({v}) == {e}",
}


def _compile(guards: list[Guard], sources: list[int]):
    lines = ["def resolve(roots):", "    try:"]
    constants: dict[str, object] = {}
    for i, g in enumerate(guards):
        key = f"K{i}"
        constants[key] = g.key
        lines.append(f"        v{i} = " + _STEPS[g.step].format(obj=f"v{g.parent}", key=key))
        check, expected = g.check, g.expected
        if check == "value":
            if isinstance(expected, float) and math.isnan(expected):
                check = "nan"
            expected = (type(expected), expected)
        constants[f"E{i}"] = expected
        lines.append("        if not (" + _TESTS[check].format(v=f"v{i}", e=f"E{i}") + "): return None")
    values = ", ".join(f"v{i}" if i >= 0 else "None" for i in sources)
    lines += [f"        return [{values}]", "    except Exception:", "        return None"]
    scope = {"MISSING": MISSING, "RECIPE": RECIPE, "Tensor": torch.Tensor, "recipe_key": recipe_key, "_hooks": _hooks}
    scope.update(constants)
    exec(compile("\n".join(lines), "<tritonfunc guards>", "exec"), scope)  # noqa: S102 (our own generated code)
    return scope["resolve"]


def discover(roots: list, consts: list[torch.Tensor], fresh: set[int]) -> Guards:
    """Guards for what `roots` reach, with a source for every constant tensor of the trace except
    the `fresh` ones (made inside the function from Python data: baked into the cached entry).
    Raises Unguardable."""
    walker = _Walker({id(t): i for i, t in enumerate(consts)})
    for i, root in enumerate(roots):
        walker.visit(root, -1, "root", i, f"<root {i}>" if not callable(root) else getattr(root, "__name__", "f"))
    sources = []
    for i, t in enumerate(consts):
        if i in walker.sources:
            sources.append(walker.sources[i])
        elif id(t) in fresh:
            sources.append(-1)
        else:
            raise Unguardable(
                f"it reads a captured {t.dtype} tensor of shape {tuple(t.shape)} from somewhere tritonfunc does not "
                "look (closure cells, globals, default arguments, module and object attributes)"
            )
    return Guards(walker.guards, sources)
