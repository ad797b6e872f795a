"""drift.kernels' Triton kernels against the fp64 reference, in a process of their own: TRITON_INTERPRET=1
must be set before the kernels are defined and must not leak into the other tests of this process.
The process runs tests/unit/kernels/test_kernels.py as a script on every case of its CASES."""

from __future__ import annotations

import os
import subprocess
import sys

import tests.unit.kernels.test_kernels as kernel_tests
from tests.unit.kernels.test_kernels import CASES


def test_triton_matches_fp64_reference_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, kernel_tests.__file__, "triton"], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.stdout.split() == [case.name for case in CASES]
