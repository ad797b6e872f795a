"""What every test layer shares: the layers as markers, and the tiny random-weight model with its
byte tokenizer as fixtures.

  tests/unit/          in-process tests, laid out like the package (data/, eval/, analysis/, kernels/, sampler/)
  tests/integration/   tests that start processes: torchrun, the pipeline, the sampler, the launchers
  tests/gpu/           CUDA only, skipped without it; a CPU/CUDA device mix is caught on the CPU too, by the
                       stand-in accelerator of tests/stand_in_device.py (tests/unit/test_device_placement.py)

A test that starts a process (a launcher, the sampler, torchrun, a fresh interpreter) goes under
tests/integration/, and every test there is marked ``integration``, so ``pytest -m "not integration"``
is the quick loop. The process tests of a unit-layer module sit in tests/integration/test_<module>_process.py
and import its helpers (tests.unit.<...>.test_<module>), which stay importable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# the support scripts (tiny.py, tiny_stage.py, kill_after_checkpoint.py) are run as scripts too,
# so they import each other by plain name
sys.path.insert(0, str(TESTS))


def pytest_collection_modifyitems(config, items):
    for item in items:
        parents = Path(str(item.fspath)).resolve().parents
        if TESTS / "integration" in parents:
            item.add_marker(pytest.mark.integration)
        if TESTS / "gpu" in parents:
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs CUDA (tests/gpu/ runs where a GPU is)"))


@pytest.fixture
def byte_tokenizer():
    from drift.model import build_byte_tokenizer

    return build_byte_tokenizer()


@pytest.fixture(scope="session")
def save_tiny_checkpoint():
    """folder -> folder holding a seeded tiny Llama (fp32, safetensors) and the byte tokenizer: what
    the sampler, the export and the evaluation read as a trained checkpoint."""
    from drift.config import ModelConfig
    from drift.model import build_byte_tokenizer, load_model

    def save(folder: Path) -> Path:
        tokenizer = build_byte_tokenizer()
        model = load_model(ModelConfig(name="tiny", name_or_path="tiny:llama"), dtype=torch.float32, seed=0,
                           vocab_size=len(tokenizer))
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    return save


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, save_tiny_checkpoint) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "policy")
