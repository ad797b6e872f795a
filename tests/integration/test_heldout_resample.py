"""benchmarks/heldout_resample.py: a finished run's models scored again with K replies per prompt."""

import json
from pathlib import Path

import pytest
import yaml

from drift.data.sources import TESTBED_HELDOUT
from drift.eval.gold import gold_reward
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]


def _resample():
    return load_script("benchmarks/heldout_resample.py")


def fake_run(folder: Path, checkpoint: Path) -> tuple[Path, list[dict]]:
    """A run folder as launch/train.py leaves it, as far as the script reads it: its config and a
    summary naming the evaluated checkpoint; four rows of the shipped held-out split, both kinds."""
    rows = [json.loads(line) for line in TESTBED_HELDOUT.read_text().splitlines()[:4]]
    heldout = folder / "heldout.jsonl"
    folder.mkdir(parents=True)
    heldout.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = {"sampler": {"max_new_tokens": 4, "batch_size": 3, "seed": 11},
              "eval": {"heldout": str(heldout), "max_new_tokens": 6},
              "trainer": {"max_prompt_length": 256, "device": "cpu"}, "data": {"prompt_format": "chat_template"},
              "model": {"trust_remote_code": False}, "output_dir": str(folder)}
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "summary.json").write_text(json.dumps({"heldout": {"base": {"checkpoint": str(checkpoint), "gold": 0.0}}}))
    return folder, rows


def test_k_replies_per_prompt_are_scored_and_averaged_over_prompts_times_k(tiny_checkpoint, tmp_path):
    run, rows = fake_run(tmp_path / "run", tiny_checkpoint)
    results = _resample().resample_run(run, 3, None)
    base = results["base"]
    samples = [json.loads(line) for line in (Path(base["samples_folder"]) / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == base["replies"] == 12 and base["samples_per_prompt"] == 3
    for row in rows:  # three replies each, three different draws
        own = [s for s in samples if s["prompt_id"] == row["prompt_id"]]
        assert len(own) == 3 and len({s["seed"] for s in own}) == 3
    # by hand: every reply scored by the gold rules, the mean over 4 prompts x 3 replies
    specs = {row["prompt_id"]: row["Preference"] for row in rows}
    by_hand = sum(gold_reward(s["text"], specs[s["prompt_id"]]).score for s in samples) / 12
    assert base["gold"] == pytest.approx(by_hand, abs=1e-4)
    assert base["by_kind"]["stated"]["prompts"] + base["by_kind"]["revealed"]["prompts"] == 4
    assert Path(base["samples_folder"]).parent == run / "eval_cache"  # the run's own cache, shared with its runs


def test_a_run_without_a_summary_or_an_evaluation_says_so(tmp_path):
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(SystemExit, match="has not finished"):
        _resample().resample_run(tmp_path / "unfinished", 2, None)
    (tmp_path / "noeval").mkdir()
    (tmp_path / "noeval" / "summary.json").write_text(json.dumps({"stages": {}}))
    with pytest.raises(SystemExit, match="no held-out evaluation"):
        _resample().resample_run(tmp_path / "noeval", 2, None)
