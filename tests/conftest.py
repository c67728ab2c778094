"""Test set-up: generated kernels run through Triton's interpreter on the CPU, and every kernel
the suite generates is also compiled for sm_90 (the H100), so GPU-only compile errors fail here.

TRITON_INTERPRET must be set before triton.jit decorates anything, hence before any import.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITONFUNC_CHECK_SM90", "1")
os.environ.setdefault("TRITONFUNC_VERIFY", "1")  # the IR verifier runs after the trace, transforms and passes

import pytest  # noqa: E402
import torch  # noqa: E402

import tritonfunc  # noqa: E402

CPU_BACKENDS = ["interpreter", "torch"]


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    """Runs a test once per CPU backend: Triton's interpreter, and the torch reference executor."""
    tritonfunc.set_backend(request.param)
    yield request.param
    tritonfunc.set_backend(None)


@pytest.fixture
def interpreter():
    """Forces the interpreter backend: launch counts and bytes only exist for Triton kernels."""
    tritonfunc.set_backend("interpreter")
    yield
    tritonfunc.set_backend(None)


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
