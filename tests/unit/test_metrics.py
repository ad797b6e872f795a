"""Per-pair metrics: every pair of every step is logged once, and the step means agree with them."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_stage.py

from tiny_stage import main as run_tiny_stage  # noqa: E402


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pair_metrics_cover_every_pair_and_match_the_step_means(tmp_path):
    # 6 pairs, batch 2, 2 epochs: 6 steps; rmsprop at lr 1e-2 so the logits move off 0
    run_tiny_stage(tmp_path, 2, 1, "rmsprop", 6, 2)
    steps = _rows(tmp_path / "stage" / "metrics.jsonl")
    pairs = _rows(tmp_path / "stage" / "pair_metrics.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 7))
    for epoch in (0, 1):
        ids = [row["pair_id"] for row in pairs if row["epoch"] == epoch]
        assert sorted(ids) == sorted(f"pair-{i}" for i in range(6))
    for step in steps:
        rows = [row for row in pairs if row["step"] == step["step"]]
        assert len(rows) == step["pairs"] == 2
        gradient_weight = sum(1 / (1 + math.exp(row["logit"])) for row in rows) / len(rows)
        margin = sum(row["chosen_reward"] - row["rejected_reward"] for row in rows) / len(rows)
        assert gradient_weight == pytest.approx(step["gradient_weight"], abs=1e-6)  # the trainer sums float32 terms
        assert margin == pytest.approx(step["margin"], abs=1e-6)  # the trainer sums float32 terms
        # s = margin per pair (both are beta times the log-ratio difference)
        for row in rows:
            assert row["logit"] == pytest.approx(row["chosen_reward"] - row["rejected_reward"], abs=1e-6)
    assert any(abs(row["logit"]) > 1e-4 for row in pairs if row["step"] > 1)


def test_a_resumed_run_drops_the_steps_after_its_checkpoint_and_a_torn_last_row(tmp_path):
    from drift.config import LoggingConfig
    from drift.metrics import MetricsLog, read_metrics

    path = tmp_path / "metrics.jsonl"
    # steps 1-3 logged, then the run was killed while writing step 4's row
    path.write_text("".join(json.dumps({"step": step, "loss": step / 10}) + "\n" for step in (1, 2, 3)) + '{"step": 4, "lo')
    assert [row["step"] for row in read_metrics(path)] == [1, 2, 3]
    log = MetricsLog(path, LoggingConfig(wandb_mode="disabled"), enabled=True, run_name="r", resume_after_step=2)
    log.log({"step": 3, "loss": 0.25})
    log.close()
    assert _rows(path) == [{"step": 1, "loss": 0.1}, {"step": 2, "loss": 0.2}, {"step": 3, "loss": 0.25}]
