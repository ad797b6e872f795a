"""benchmarks/gpu_check.sh: valid bash; its dry run lists the parts, their timeouts (7 minutes at most in
all) and the output folder; every command it would run accepts the flags it passes (the benchmarks' own
argument parsers, the trainer's config composition); with a bundle it installs the bundle and runs the
random-weights model from it; on a machine without a GPU it prints the versions first, skips the GPU
parts, and leaves at most 8 files in the one output folder, its table printed last."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
PARTS = ["setup", "gpu", "logprob_kernels", "dpo_step", "drift_iteration", "memory_plan", "report"]
SEVEN_MINUTES = 420


def _module(relative: str):
    return load_script(relative)


def _dry_run(**env: str) -> str:
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "GPU_CHECK_PYTHON": sys.executable, "GPU_CHECK_DRY_RUN": "1", **env},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _parts(stdout: str) -> dict[str, tuple[int, list[str]]]:
    """Part name -> (its timeout in seconds, its command's words; none for a part with nothing to run)."""
    parts, name = {}, None
    for line in stdout.splitlines():
        if line.startswith("part "):
            _, name, seconds = line.split()
            parts[name] = (int(seconds), [])
        elif line.startswith("+ "):
            parts[name] = (parts[name][0], shlex.split(line[2:]))
    return parts


@pytest.fixture(scope="module")
def dry_run() -> str:
    return _dry_run(GPU_CHECK_OUT="/somewhere/gpu_out")


@pytest.fixture(scope="module")
def commands(dry_run) -> dict[str, list[str]]:
    """Part name -> the arguments after the script it runs."""
    return {name: words[2:] for name, (_, words) in _parts(dry_run).items() if words}


def test_gpu_check_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_dry_run_lists_the_parts_their_timeouts_and_the_output_folder(dry_run):
    parts = _parts(dry_run)
    assert list(parts) == PARTS
    stop_seconds = int(dry_run.split("stopped at most ")[1].split()[0])
    timeouts = [seconds for seconds, _ in parts.values()]
    assert all(seconds > 0 for seconds in timeouts)
    assert sum(timeouts) + stop_seconds * len(timeouts) <= SEVEN_MINUTES
    assert f"timeouts: {sum(timeouts)} s in all" in dry_run
    assert "output folder: /somewhere/gpu_out (GPU_CHECK_OUT)" in dry_run
    assert "(nothing to run: no bundle given)" in dry_run  # no install, and no network probe, without a bundle


def test_every_output_lands_in_the_one_folder(commands):
    assert commands["logprob_kernels"][commands["logprob_kernels"].index("--out") + 1] == "/somewhere/gpu_out/logprob_kernels.json"
    assert commands["dpo_step"][commands["dpo_step"].index("--out") + 1] == "/somewhere/gpu_out/dpo_step.json"
    assert commands["memory_plan"][commands["memory_plan"].index("--json") + 1] == "/somewhere/gpu_out/memory_plan.json"
    assert commands["report"][commands["report"].index("--out") + 1] == "/somewhere/gpu_out"


def test_with_a_bundle_it_installs_the_bundle_and_runs_its_model_shape(tmp_path):
    parts = _parts(_dry_run(GPU_CHECK_BUNDLE=str(tmp_path / "bundle")))
    assert parts["setup"][1] == ["bash", "launch/setup_env.sh", "--offline", str(tmp_path / "bundle")]
    model = f"random:{tmp_path / 'bundle' / 'models' / 'smollm2-135m-shape'}"
    assert parts["dpo_step"][1][parts["dpo_step"][1].index("--model") + 1] == model
    assert f"model.name_or_path={model}" in parts["drift_iteration"][1]
    assert not any(word in SCRIPT.read_text() for word in ("urlopen", "curl ", "wget ", "pypi.org"))


def test_logprob_kernels_part_runs_bf16_on_cuda_beside_liger(commands):
    args = _module("benchmarks/logprob_throughput.py").build_parser().parse_args(commands["logprob_kernels"])
    assert (args.device, args.dtype) == ("cuda", "bfloat16")
    assert {"liger", "triton", "chunked", "naive", "flash_attn"} <= set(args.variants)


def test_dpo_step_part_runs_bf16_ours_and_trl_liger_on_random_weights(commands):
    args = _module("benchmarks/dpo_step.py").build_parser().parse_args(commands["dpo_step"])
    assert args.precision == "bf16" and set(args.variants) == {"ours", "trl_liger"}
    assert args.model == "random:embedded:smollm2"  # no bundle: the embedded model's own shape


def test_drift_iteration_part_composes_on_cuda_with_the_auto_sampler(commands):
    from drift.compose import compose
    from drift.config import Config

    config = compose("config", commands["drift_iteration"], Config)
    assert config.sampler.backend == "auto" and config.sampler.truncated == "keep"
    assert config.method.name == "drift" and (config.method.iterations, config.method.warmstart_epochs) == (1, 1)
    assert (config.trainer.device, config.trainer.precision) == ("cuda", "bf16")
    assert config.model.name == "smollm2_shape" and config.model.name_or_path == "random:embedded:smollm2"


def test_memory_plan_part_parses(commands):
    memory_plan = _module("benchmarks/memory_plan.py")
    _, overrides = memory_plan.build_parser().parse_known_args(commands["memory_plan"])
    plan = memory_plan.plan_from_overrides(overrides)
    assert plan.model == "qwen14b" and plan.setting.nproc == 8


def test_without_a_gpu_it_prints_the_versions_first_and_the_table_last_in_one_folder(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "GPU_CHECK_PYTHON": sys.executable, "GPU_CHECK_OUT": str(out),
             "GPU_CHECK_WORK": str(tmp_path / "work"), "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 1, result.stderr  # the GPU probe failed: not every part ran
    lines = result.stdout.splitlines()
    assert lines[0].startswith("versions: torch ") and all(f" {name} " in lines[0] for name in ("triton", "transformers", "pyarrow", "fsspec"))
    table = (out / "summary.txt").read_text().splitlines()
    assert lines[-len(table):] == table
    assert "logprob_kernels  skipped: no GPU" in "\n".join(table)
    written = sorted(path.name for path in out.iterdir())
    assert written == ["logs.tar.gz", "memory_plan.json", "summary.json", "summary.txt"] and len(written) <= 8
    summary = json.loads((out / "summary.json").read_text())
    assert [part["part"] for part in summary["parts"]] == PARTS[:-1]
    assert summary["weights"] == "random weights"
