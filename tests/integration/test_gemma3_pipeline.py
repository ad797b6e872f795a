"""A DRIFT iteration (warm start, sample, pairs, train, each stage reloading the last one's model)
on a tiny random-weight Gemma 3: sliding-window layers through the whole pipeline, the sampler on
its plain-loop fallback. Needs no download; the real 270M weights: test_gemma3_embedded.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

from drift.model import TINY_GEMMA3_SLIDING_WINDOW

ROOT = Path(__file__).resolve().parents[2]


def test_a_drift_iteration_runs_on_a_tiny_gemma3(tmp_path):
    command = [
        sys.executable, "launch/train.py", "model=tiny", "data=fixture", "model.name_or_path=tiny:gemma3", "model.tiny_layers=3",
        "method=drift", "method.warmstart_epochs=1", "method.iterations=1",
        f"sampler.max_new_tokens={2 * TINY_GEMMA3_SLIDING_WINDOW}", "sampler.truncated=keep",
        "trainer.max_length=3072", "trainer.max_prompt_length=2048", "trainer.lr=1e-3",
        "logging.wandb_mode=disabled", "logging.progress_bar=false", "run_name=gemma", f"output_dir={tmp_path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "gemma"
    for stage in ("iter_0/train", "iter_1/sample", "iter_1/pairs", "iter_1/train"):
        assert (run / stage / "done").exists(), stage
    report = json.loads((run / "iter_1/sample/sampling_report.json").read_text())
    assert report["engine"] == "loop" and report["samples"] > 0
    assert "the static engine does not run this model" in result.stdout + result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["stages"]) == ["warmstart", "iter_1"] and summary["stages"]["iter_1"]["pairs"] > 0
    # packed rows: no padding in any step (drift.packing packs sliding-window layers)
    for stage in ("iter_0/train", "iter_1/train"):
        steps = [json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines()]
        assert steps and all(step["padding_share"] == 0 for step in steps), stage
    config = json.loads((run / "iter_1/train/model/config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["sliding_window"] == TINY_GEMMA3_SLIDING_WINDOW
