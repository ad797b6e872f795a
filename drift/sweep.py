"""A Hydra callback that writes one table of final metrics per job when a multirun sweep ends.

  python launch/train.py -m method=drift,spin method.beta=0.05,0.1 method.iterations=1,2
  -> <sweep dir>/sweep_summary.json and sweep_summary.md
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from drift.io import write_json_atomic, write_text_atomic


def collect_sweep(sweep_dir: Path) -> list[dict]:
    rows = []
    for summary_path in sorted(Path(sweep_dir).glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        stages = summary.get("stages", {})
        last_name = list(stages)[-1] if stages else None
        last = stages.get(last_name, {}) if last_name else {}
        rows.append(
            {
                "job": summary_path.parent.name,
                "method": summary.get("method"),
                "final_stage": last_name,
                **{key: last.get(key) for key in ("mean_loss", "mean_margin", "mean_accuracy", "mean_gradient_weight", "pairs")},
                "model": summary.get("model"),
                "heldout_gold": heldout_gold(summary),
            }
        )
    return rows


def heldout_gold(summary: dict) -> dict[str, float]:
    """Held-out gold by evaluated checkpoint (base, warmstart, iter_k), in training order; {} without eval."""
    return {name: result["gold"] for name, result in summary.get("heldout", {}).items()}


def format_sweep(rows: list[dict]) -> str:
    # the held-out gold comes first: the training statistics beside it are diagnostics, not outcomes
    lines = ["| job | final stage | held-out gold by stage | pairs | loss | margin | accuracy | σ(-s) |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        values = [row.get(k) for k in ("mean_loss", "mean_margin", "mean_accuracy", "mean_gradient_weight")]
        cells = " | ".join("" if v is None else f"{v:.4f}" for v in values)
        gold = ", ".join(f"{name} {value:.3f}" for name, value in row.get("heldout_gold", {}).items())
        lines.append(f"| {row['job']} | {row['final_stage']} | {gold} | {row.get('pairs') or ''} | {cells} |")
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_sweep(sweep_dir)
        write_json_atomic(sweep_dir / "sweep_summary.json", rows)
        table = format_sweep(rows)
        write_text_atomic(sweep_dir / "sweep_summary.md", table)
        print(f"sweep summary ({len(rows)} jobs): {sweep_dir / 'sweep_summary.md'}\n{table}")
