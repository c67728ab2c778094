"""On a machine with a CUDA GPU: the project's GPU check (perf/gpu_check.py) in its own process,
without TRITON_INTERPRET, so the kernels are compiled and run on the device."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.gpu
def test_gpu_check_passes_on_cuda():
    script = Path(__file__).resolve().parent.parent / "perf" / "gpu_check.py"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITONFUNC_BACKEND")}
    proc = subprocess.run([sys.executable, str(script), "--quick"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
