"""drift.kernels dispatch in a fresh interpreter: what importing the package loads, and the errors of a
forced Triton on CPU through the public entry point (TRITON_INTERPRET is read once, at import)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300)


def test_import_and_cpu_use_load_neither_triton_nor_flash_attn():
    result = run_python(
        "import sys, torch\n"
        "import drift.kernels as k\n"
        "k.token_logprobs(torch.randn(3, 8), torch.randn(11, 8), torch.tensor([1, 2, 3]))\n"
        "print('triton' in sys.modules, 'flash_attn' in sys.modules)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_forced_triton_on_cpu_through_the_public_entry_point_raises():
    # the real packages here: triton is installed, TRITON_INTERPRET is unset in the child
    result = run_python(
        "import torch, drift.kernels as k\n"
        "try:\n"
        "    k.token_logprobs(torch.randn(3, 8), torch.randn(11, 8), torch.tensor([1, 2, 3]), impl='triton')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "TRITON_INTERPRET=1" in result.stdout


def test_triton_imported_before_the_interpreter_was_requested_is_refused():
    result = run_python(
        "import os, torch, drift.kernels as k\n"
        "import drift.kernels.triton_logprobs\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "try:\n"
        "    k.token_logprobs(torch.randn(3, 8), torch.randn(11, 8), torch.tensor([1, 2, 3]), impl='triton')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "was imported before TRITON_INTERPRET=1 was set" in result.stdout
