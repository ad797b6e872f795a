"""The sweep summary table (the multirun itself: tests/integration/test_sweep_process.py)."""

import json


def test_sweep_table_puts_heldout_gold_of_every_stage_first(tmp_path):
    from drift.sweep import collect_sweep, format_sweep

    job = tmp_path / "trainer.lr=3e-06"
    job.mkdir()
    summary = {"method": "drift", "model": "m", "stages": {"iter_1": {"pairs": 7, "mean_loss": 0.5, "mean_margin": 1.0,
                                                                      "mean_accuracy": 0.75, "mean_gradient_weight": 0.4}},
               "heldout": {"base": {"gold": 0.372}, "warmstart": {"gold": 0.49}, "iter_1": {"gold": 0.5125}}}
    (job / "summary.json").write_text(json.dumps(summary))
    rows = collect_sweep(tmp_path)
    assert rows[0]["heldout_gold"] == {"base": 0.372, "warmstart": 0.49, "iter_1": 0.5125}
    assert "| trainer.lr=3e-06 | iter_1 | base 0.372, warmstart 0.490, iter_1 0.512 | 7 | 0.5000 |" in format_sweep(rows)
