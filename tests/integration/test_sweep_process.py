"""Hydra multirun of launch/train.py: one folder per job and a sweep summary written when the sweep ends."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_multirun_writes_one_folder_per_job_and_a_summary(tmp_path):
    command = [
        sys.executable, "launch/train.py", "-m", "model=tiny", "data=fixture", "method=drift,spin", "method.iterations=1",
        "method.warmstart_epochs=0", "sampler.max_new_tokens=4", "sampler.truncated=keep", "trainer.max_length=3072", "trainer.max_prompt_length=2048",
        f"output_dir={tmp_path}", "logging.wandb_mode=disabled", "logging.progress_bar=false",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweep_tiny_fixture"
    rows = json.loads((sweep / "sweep_summary.json").read_text())
    assert sorted(row["method"] for row in rows) == ["drift", "spin"]
    for row in rows:
        job = sweep / row["job"]
        assert (job / "iter_1" / "train" / "done").exists()
        history = [json.loads(line) for line in (job / "iter_1" / "train" / "metrics.jsonl").read_text().splitlines()]
        assert abs(row["mean_loss"] - sum(r["loss"] for r in history) / len(history)) < 1e-12
    assert "| job |" in (sweep / "sweep_summary.md").read_text()
