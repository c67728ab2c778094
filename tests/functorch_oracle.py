"""functorch's own public-API tests run against tritonfunc's transforms, as an outside oracle.

It runs functorch's test/test_vmap.py and test/test_eager_transforms.py with `functorch.vmap`,
`functorch.grad`, ... (and `torch.func.*`, `torch.vmap`) pointed at tritonfunc's functions before
the test modules are imported. No functorch code is vendored here.

Getting the tests: pytorch/functorch removed them from its HEAD when functorch moved into pytorch;
the last commit that has them is d1126fb7 (September 2022). Keep them outside this repository:

    git clone https://github.com/pytorch/functorch /tmp/functorch      # or any mirror of it
    mkdir -p /work/functorch-tests
    git -C /tmp/functorch archive d1126fb7 test | tar x -C /work/functorch-tests
    # -> /work/functorch-tests/test/{test_vmap.py,test_eager_transforms.py,common_utils.py,...}

Running, from the repository root, in a venv with `pip install torch==2.13.0 -e '.[dev]'` (the dev
extra brings pytest-xdist, pytest-timeout and expecttest, which torch's testing helpers import):

    T=/work/functorch-tests/test
    TRITONFUNC_BACKEND=torch .venv/bin/python tests/functorch_oracle.py $T -n 2 --timeout 300 -q -rA
    .venv/bin/python tests/functorch_oracle.py $T -n 2 --timeout 300 -q -rA        # the interpreter
    .venv/bin/python tests/functorch_oracle.py $T --transforms torch -n 2 -q -rA   # baseline: torch.func

Each takes 1-2 minutes on 2 cores. Add --junitxml=FILE for per-test outcomes. Compare with the
baseline: a test that also fails under torch.func is stale against torch 2.13, not tritonfunc's.

Options (taken out before the rest goes to pytest):
  --transforms tritonfunc|torch   whose transforms the tests get (default tritonfunc); `torch` runs
                                  the tests unpatched under the same shims.
  --all                           keep the class deselected by default (below).
  --files a.py,b.py               test files (default test_vmap.py,test_eager_transforms.py).

What it does:
- Sets TRITON_INTERPRET=1 (if unset): CPU tensors go through Triton's interpreter unless
  TRITONFUNC_BACKEND (left as given) picks another backend.
- The tests target torch-1.13-era functorch. `_install_compat_shims` maps the names they import that
  have moved since (torch.testing.floating_types, functorch._C, functorch._src.eager_transforms.
  {_argnums_partial, enable_fwd_grad}, functorch._src.make_functional.functional_init*) onto their
  torch 2.x homes, and makes the tests' common_utils.skipOps skip ops no longer in torch's op_db.
- Patched: functorch.{vmap, grad, grad_and_value, vjp, jvp, jacrev, jacfwd, hessian},
  functorch.experimental.{jacfwd, jvp, hessian}, torch.func.{vmap, grad, grad_and_value, vjp, jvp,
  linearize, jacrev, jacfwd, hessian} and torch.vmap. Left as torch's: functorch.experimental.
  chunk_vmap, make_functional*, combine_state_for_ensemble, functionalize, make_fx, functorch._C.
- Deselected unless --all: test_vmap.py's TestVmapOperatorsOpInfo, about 1,500 tests, one per
  operator of torch's op_db and test kind (vmap over every operator torch has, and checks that
  torch's own batching rules exist). CUDA-only tests are not instantiated without a GPU.
- Use `-n 2` (pytest-xdist replaces a worker that crashes) and `--timeout N` (pytest-timeout), so
  that a crash or a hang fails one test, not the run.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_FILES = ["test_vmap.py", "test_eager_transforms.py"]
DESELECT_CLASSES = ["TestVmapOperatorsOpInfo"]
PATCHED = ["vmap", "grad", "grad_and_value", "vjp", "jvp", "linearize", "jacrev", "jacfwd", "hessian"]


def _install_compat_shims() -> None:
    """Gives names the 2022 tests import from their torch 2.x homes (no functorch code copied)."""
    import contextlib
    import types

    import torch
    import torch._C._functorch as _F
    import torch.testing
    import torch.testing._internal.common_dtype as common_dtype
    from torch.autograd import forward_ad

    for name in ("floating_types", "floating_types_and", "all_types_and_complex_and"):
        if not hasattr(torch.testing, name):
            setattr(torch.testing, name, getattr(common_dtype, name))

    # functorch._C was the C extension of the standalone functorch; torch._C._functorch holds it now.
    fc = types.ModuleType("functorch._C")
    for name in dir(_F):
        if not name.startswith("__"):
            setattr(fc, name, getattr(_F, name))
    fc.get_fwd_grad_enabled = torch._C._is_fwd_grad_enabled
    fc.set_fwd_grad_enabled = torch._C._set_fwd_grad_enabled
    sys.modules["functorch._C"] = fc
    import functorch

    functorch._C = fc

    import functorch._src.eager_transforms as src_et
    import torch._functorch.eager_transforms as et

    @contextlib.contextmanager
    def enable_fwd_grad(enabled=True):
        with forward_ad._set_fwd_grad_enabled(enabled):
            yield

    def _argnums_partial(f, args, argnums):
        # functorch 0.2's helper: (f of the selected args only, the selected args).
        if isinstance(argnums, int):
            chosen = (et._validate_and_wrap_argnum(argnums, len(args)),)
        else:
            et._validate_and_wrap_argnums(argnums, len(args))
            chosen = tuple(et._validate_and_wrap_argnum(a, len(args)) for a in argnums)

        def f_wrapper(*sel):
            full = list(args)
            for i, a in zip(chosen, sel):
                full[i] = a
            return f(*full)

        return f_wrapper, tuple(args[i] for i in chosen)

    import functorch._src.make_functional as src_mf
    import torch._functorch.make_functional as mf

    for name in ("functional_init", "functional_init_with_buffers"):
        if not hasattr(src_mf, name):
            setattr(src_mf, name, getattr(mf, name))

    # The tests' own common_utils.skipOps asserts that every op it names is still in torch's op_db;
    # ops renamed or removed since 2022 would stop the module importing, so they are dropped.
    import common_utils

    if not getattr(common_utils.skipOps, "_oracle", False):
        orig_skip_ops, all_ops = common_utils.skipOps, common_utils.op_db + common_utils.additional_op_db
        known = {(o.name, o.variant_test_name) for o in all_ops}

        def skip_ops(test_case_name, base_test_name, to_skip):
            return orig_skip_ops(test_case_name, base_test_name, {x for x in to_skip if (x[0], x[1]) in known})

        skip_ops._oracle = True
        common_utils.skipOps = skip_ops

    for name, value in (("enable_fwd_grad", enable_fwd_grad), ("_argnums_partial", _argnums_partial)):
        if not hasattr(src_et, name):
            setattr(src_et, name, value)


def _point_transforms_at_tritonfunc() -> None:
    import functorch
    import functorch.experimental as fexp
    import torch
    import torch.func

    import tritonfunc

    for name in PATCHED:
        fn = getattr(tritonfunc, name)
        for mod in (functorch, fexp, torch.func):
            if hasattr(mod, name):
                setattr(mod, name, fn)
    torch.vmap = tritonfunc.vmap


# ---------------------------------------------------------------------------------------------
# pytest plugin side (loaded with -p functorch_oracle in the main process and every xdist worker).


def pytest_configure(config):
    # Patch first: the shims import the tests' common_utils, which binds `from functorch import vmap`.
    if os.environ.get("FUNCTORCH_ORACLE_TRANSFORMS", "tritonfunc") == "tritonfunc":
        _point_transforms_at_tritonfunc()
    _install_compat_shims()
    import common_utils
    import functorch

    assert common_utils.vmap is functorch.vmap, "the tests' common_utils bound vmap before it was patched"
    config.addinivalue_line("filterwarnings", "ignore::FutureWarning")
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning")


def pytest_report_header(config):
    which = os.environ.get("FUNCTORCH_ORACLE_TRANSFORMS", "tritonfunc")
    return (
        f"functorch oracle: transforms={which} TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')} "
        f"TRITONFUNC_BACKEND={os.environ.get('TRITONFUNC_BACKEND')}"
    )


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FUNCTORCH_ORACLE_ALL") == "1":
        return
    keep, drop = [], []
    for item in items:
        cls = item.cls.__name__ if item.cls is not None else ""
        (drop if any(cls.startswith(c) for c in DESELECT_CLASSES) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    test_dir = os.path.abspath(argv[0])
    rest = argv[1:]
    transforms, files = "tritonfunc", DEFAULT_FILES
    pytest_args = []
    it = iter(rest)
    for a in it:
        if a == "--transforms":
            transforms = next(it)
        elif a.startswith("--transforms="):
            transforms = a.split("=", 1)[1]
        elif a == "--all":
            os.environ["FUNCTORCH_ORACLE_ALL"] = "1"
        elif a == "--files":
            files = next(it).split(",")
        elif a.startswith("--files="):
            files = a.split("=", 1)[1].split(",")
        else:
            pytest_args.append(a)
    if transforms not in ("tritonfunc", "torch"):
        raise SystemExit("--transforms must be tritonfunc or torch")
    os.environ["FUNCTORCH_ORACLE_TRANSFORMS"] = transforms
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # The plugin (this file) and the test directory must import in xdist workers too.
    os.environ["PYTHONPATH"] = os.pathsep.join([HERE, test_dir] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    sys.path[:0] = [HERE, test_dir]
    os.chdir(test_dir)

    import pytest

    args = [*files, "-p", "functorch_oracle", "-p", "no:cacheprovider", "-o", "addopts=", *pytest_args]
    return int(pytest.main(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
