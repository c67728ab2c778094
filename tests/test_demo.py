"""The README's first command ends in `python -m tritonfunc.demo`: run it as a newcomer would, in a
fresh process whose environment sets neither TRITON_INTERPRET nor TRITONFUNC_BACKEND."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_demo_passes_its_checks_from_a_bare_environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRITON_INTERPRET", "TRITONFUNC_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "tritonfunc.demo"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "all checks passed" in proc.stdout
    assert proc.stdout.count(" ok\n") == 4  # four functions, one launch each at the ideal bytes
