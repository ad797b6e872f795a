"""drift.kernels must not shadow the unrelated hub `kernels` distribution transformers probes for."""

import importlib.util
import subprocess
import sys


def test_kernels_are_importable_only_as_drift_kernels():
    assert importlib.util.find_spec("drift.kernels") is not None
    # run in a fresh interpreter from another folder so the checkout's kernels/ is not on sys.path
    code = (
        "import importlib.util, transformers\n"
        "from transformers.utils import is_kernels_available\n"
        "import drift.kernels\n"
        "print(importlib.util.find_spec('kernels') is None, is_kernels_available())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]
