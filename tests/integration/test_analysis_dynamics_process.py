"""launch/analyze.py as a Hydra app: --cfg job, a one-sentence error that leaves no folder, and a multirun."""

import json
import sys
from pathlib import Path

from drift.analysis import dynamics


def test_the_command_line_is_a_hydra_app(tmp_path):
    """--cfg job prints the composed config; a missing value fails with one sentence before anything loads."""
    import subprocess

    analyze = [sys.executable, str(Path(__file__).resolve().parents[2] / "launch" / "analyze.py")]
    printed = subprocess.run([*analyze, "coverage", "--cfg", "job"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert "m: 128" in printed.stdout and "quantile: 0.8" in printed.stdout and "truncated: keep" in printed.stdout
    missing = subprocess.run([*analyze, "dynamics", "run="], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr == "dynamics: give at least one run=runs/<run_name> (run=[runs/A,runs/B] overlays several)\n"
    assert not list(tmp_path.iterdir())  # no Hydra folder, no log file


def test_a_multirun_sweep_runs_the_command_once_per_value(tmp_path):
    import subprocess

    for name, loss in (("A", 0.5), ("B", 0.25)):
        stage = tmp_path / name / "iter_0" / "train"
        stage.mkdir(parents=True)
        rows = [{"step": step, "loss": loss * step, **{key: 0.0 for key in dynamics.STEP_QUANTITIES if key != "loss"}}
                for step in (1, 2)]
        (stage / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    analyze = [sys.executable, str(Path(__file__).resolve().parents[2] / "launch" / "analyze.py")]
    swept = subprocess.run([*analyze, "dynamics", "-m", "run=A,B", "tau=0.4"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=300)
    assert swept.returncode == 0, swept.stderr
    for name, loss in (("A", 0.5), ("B", 0.25)):
        result = json.loads((tmp_path / name / "analysis" / "dynamics" / "dynamics.json").read_text())
        assert [run["label"] for run in result["runs"]] == [name] and result["tau"] == 0.4
        assert result["runs"][0]["series"]["loss"] == [loss, 2 * loss]
    # Hydra records the sweep (one job per value) under conf/analyze/common.yaml's sweep folder
    (recorded,) = (tmp_path / "runs" / "analyze_sweeps").glob("*/multirun.yaml")
    assert "run=A,B" in recorded.read_text()
