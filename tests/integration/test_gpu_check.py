"""benchmarks/gpu_check.sh: valid bash, and every command it would run accepts the flags it
passes (the benchmarks' own argument parsers, the trainer's config composition), checked on CPU."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _module(relative: str):
    name = f"gpu_check_{Path(relative).stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / relative)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def commands() -> dict[str, list[str]]:
    """Script path -> its arguments, as the dry run prints them."""
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, env={**os.environ, "GPU_CHECK_DRY_RUN": "1"}
    )
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]
    return {line[1]: line[2:] for line in lines}


def test_gpu_check_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_gpu_check_runs_the_four_parts(commands):
    assert list(commands) == [
        "benchmarks/logprob_throughput.py", "benchmarks/dpo_step.py", "launch/train.py", "benchmarks/memory_plan.py",
    ]


def test_logprob_kernels_part_runs_bf16_on_cuda_beside_liger(commands):
    args = _module("benchmarks/logprob_throughput.py").build_parser().parse_args(commands["benchmarks/logprob_throughput.py"])
    assert (args.device, args.dtype) == ("cuda", "bfloat16")
    assert {"liger", "triton", "naive"} <= set(args.variants)
    assert args.out.name.startswith("gpu_") and args.out.parent.name == "results"


def test_dpo_step_part_runs_bf16(commands):
    args = _module("benchmarks/dpo_step.py").build_parser().parse_args(commands["benchmarks/dpo_step.py"])
    assert args.precision == "bf16" and "ours" in args.variants
    assert Path(args.out).name.startswith("gpu_")


def test_drift_iteration_part_composes_with_the_vllm_sampler(commands):
    from drift.compose import compose
    from drift.config import Config

    config = compose("config", commands["launch/train.py"], Config)
    assert config.sampler.backend == "vllm"
    assert config.method.name == "drift" and config.method.iterations == 1
    assert config.trainer.precision == "bf16"


def test_memory_plan_part_parses(commands):
    memory_plan = _module("benchmarks/memory_plan.py")
    args, overrides = memory_plan.build_parser().parse_known_args(commands["benchmarks/memory_plan.py"])
    assert args.json.name.startswith("gpu_")
    plan = memory_plan.plan_from_overrides(overrides)
    assert plan.model == "qwen14b" and plan.setting.nproc == 8
