"""drift.kernels never shadows the hub `kernels` distribution that transformers imports: the
top-level kernels/ folder has no __init__.py, and drift/__init__.py registers it under its one name,
from the source tree and from a built wheel alike."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, cwd: Path, **env) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300,
                            env={**_base_env(), **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def _base_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_hub_kernels_integration_imports_with_the_repository_root_first():
    # `python -c` from the repository root puts the root first on sys.path, as pytest's rootdir and a
    # notebook do: the folder kernels/ sits there, and transformers must still get the hub package
    code = (
        "import sys\n"
        "assert sys.path[0] in ('', '.'), sys.path[:2]\n"
        "from transformers.utils import is_kernels_available\n"
        "assert is_kernels_available(), 'the hub kernels package is not installed at a version transformers accepts'\n"
        "from transformers.integrations import hub_kernels\n"
        "from kernels import CUDAProperties, LayerRepository\n"
        "import kernels, drift.kernels\n"
        "print(kernels.__file__, drift.kernels.__file__, drift.kernels.token_logprobs.__module__)\n"
    )
    hub_file, ours, module = _python(code, cwd=REPO)
    assert "site-packages" in hub_file and not hub_file.startswith(str(REPO / "kernels")), hub_file
    assert ours == str(REPO / "kernels" / "package.py")
    assert module == "drift.kernels.dispatch"


def test_drift_kernels_from_a_built_wheel(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("drift-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "drift/kernels/package.py" in names and "drift/kernels/chunked.py" in names
    assert not any(name.startswith("kernels/") for name in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "import drift, drift.kernels, drift.kernels.chunked\nprint(drift.__file__, drift.kernels.__file__)\n"
    drift_file, kernels_file = _python(code, cwd=tmp_path, PYTHONPATH=str(site))
    assert drift_file == str(site / "drift" / "__init__.py")
    assert kernels_file == str(site / "drift" / "kernels" / "package.py")


def test_import_drift_does_not_load_torch():
    # drift.kernels is registered lazily: config-only tools (the memory plan, prepare_data's checks)
    # import drift without paying for torch
    (loaded,) = _python("import sys, drift\nprint('torch' in sys.modules)\n", cwd=Path("/"))
    assert loaded == "False"
