"""benchmarks/guidance_compare.py end to end on the tiny model: one seed, DRIFT, DRIFT with
method.chosen_filter=own_fallback, unguided DRIFT and SPIN from DRIFT's warm start, then the report."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = ["model=tiny", "data=testbed_compact", "sampler.max_new_tokens=8", "sampler.truncated=keep",
        "trainer.max_length=3072", "trainer.max_prompt_length=2048", "trainer.lr=1e-3", "method.warmstart_epochs=1",
        "eval.max_new_tokens=8"]


def test_the_comparison_runs_every_method_from_one_warm_start_and_writes_its_report(tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    rows = (REPO / "drift/data/fixtures/testbed_compact_heldout.jsonl").read_text().splitlines()
    heldout.write_text("\n".join(rows[:2] + rows[-2:]) + "\n")  # both kinds
    runs, out = tmp_path / "runs", tmp_path / "out"
    extra = [arg for override in [*TINY, f"eval.heldout={heldout}"] for arg in ("--set", override)]
    done = subprocess.run([sys.executable, "benchmarks/guidance_compare.py", "--seeds", "3", "--filters", "own_fallback",
                           "--replies", "2", "--runs", str(runs), "--out", str(out), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "compare.json").read_text())
    rows = report["per_seed"]["3"]
    assert list(rows) == ["drift", "drift_own_fallback", "drift_unguided", "spin"]
    for label in ("drift_own_fallback", "drift_unguided", "spin"):
        assert rows[label]["warmstart_from"] == str(runs / "drift_s3")
        assert rows[label]["over_drift"]["all"]["prompts"] == 4
    assert rows["drift"]["over_warmstart"]["stated"]["prompts"] == 2
    counts = rows["drift_own_fallback"]["chosen_filter"]
    assert counts["filter"] == "own_fallback" and counts["guided_chosen"] + counts["own_chosen"] == rows["drift_own_fallback"]["pairs"]
    # the filter samples every case's original prompt, so its guidance check covers every case
    assert rows["drift_own_fallback"]["guidance_check"]["cases"] > rows["drift"]["guidance_check"]["cases"]
    assert report["summary"]["spin"]["over_warmstart"]["all"]["seeds"] == 1
    assert (out / "compare.png").stat().st_size > 0 and "| 3 | drift_own_fallback |" in (out / "compare.md").read_text()
    # a second call runs nothing: every run has its summary
    again = subprocess.run([sys.executable, "benchmarks/guidance_compare.py", "--seeds", "3", "--filters", "own_fallback",
                            "--replies", "2", "--runs", str(runs), "--out", str(out), *extra],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("finished earlier, kept") == 4
