"""The main job's console, `python launch/train.py` on the tiny model (the compact testbed and its recipe,
shorter replies): a person can read it -- at most 40 lines, a line when each stage starts and ends, one
line about wandb and none of its history, no progress bars off a terminal, the guidance check's per-rule table, the held-out table and the
figures at the end -- and the run folder's train.log holds the same text."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_main_job_console_is_short_and_its_log_is_the_same_text(tmp_path):
    command = [sys.executable, "launch/train.py", "model=tiny", "sampler.max_new_tokens=12", "eval.max_new_tokens=12",
               "trainer.max_length=3072", "trainer.max_prompt_length=2048", "trainer.lr=1e-3", "logging.wandb_mode=offline",
               "sampler.truncated=keep",  # every 12-token reply counts, so the guidance check has cases
               "run_name=main", f"output_dir={tmp_path}"]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, timeout=900)
    console = result.stdout
    assert result.returncode == 0, console[-3000:]
    run = tmp_path / "main"
    assert (run / "train.log").read_text() == console
    lines = console.splitlines()
    assert len(lines) <= 40, console
    assert "\r" not in console and "it/s]" not in console  # no progress bar reached a pipe
    wandb_lines = [line for line in lines if line.lower().startswith("wandb")]
    assert len(wandb_lines) == 1 and str(run / "wandb") in wandb_lines[0], wandb_lines
    assert not re.search(r"Run (history|summary)|Syncing run|View run", console)
    assert list((run / "wandb").glob("offline-run-*")), "wandb wrote its offline runs under <run>/wandb"
    # a start and an end line for every stage that ran
    for stage in ("warmstart train", "iter_1 sample", "iter_1 train", "evaluate"):
        stamped = [line for line in lines if re.match(rf"\[\s*\d+:\d\d\] {stage}: ", line)]
        assert len(stamped) >= 2 and "done in" in stamped[-1], (stage, stamped)
    # it ends with the held-out table (base, warm start, the iteration, paired gains) and names its figures
    assert any(line.startswith("held-out ") for line in lines)
    assert any(line.startswith("iter_1") and "over warmstart" in line for line in lines)
    figures = next(line for line in lines if line.startswith("figures: "))
    assert str(run / "figures" / "gold_per_stage.png") in figures and (run / "figures" / "gold_per_stage.png").is_file()
    assert list((run / "figures" / "dynamics").glob("*.png"))
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["heldout"]) == ["base", "warmstart", "iter_1"]
    # the guidance check's paired margin and its per-rule table, every rule summary.json keeps, on the console
    check = summary["stages"]["iter_1"]["guidance_check"]
    margin = check["overall"]["margin_over_own"]
    assert any("guidance check" in line and f"{margin['margin']:+.3f} ± {margin['se']:.3f} paired" in line for line in lines)
    header = next(index for index, line in enumerate(lines) if line.split()[:2] == ["rule", "cases"])
    assert [line.split()[0] for line in lines[header + 1:header + 1 + len(check["by_rule"])]] == list(check["by_rule"])
