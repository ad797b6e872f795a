"""A Hydra callback that writes one table of final metrics per job when a multirun sweep ends.

  python launch/train.py -m method=drift,spin method.beta=0.05,0.1 method.iterations=1,2
  -> <sweep dir>/sweep_summary.json and sweep_summary.md
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


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
            }
        )
    return rows


def format_sweep(rows: list[dict]) -> str:
    lines = ["| job | final stage | pairs | loss | margin | accuracy | σ(-s) |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        values = [row.get(k) for k in ("mean_loss", "mean_margin", "mean_accuracy", "mean_gradient_weight")]
        cells = " | ".join("" if v is None else f"{v:.4f}" for v in values)
        lines.append(f"| {row['job']} | {row['final_stage']} | {row.get('pairs') or ''} | {cells} |")
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_sweep(sweep_dir)
        (sweep_dir / "sweep_summary.json").write_text(json.dumps(rows, indent=2) + "\n")
        table = format_sweep(rows)
        (sweep_dir / "sweep_summary.md").write_text(table)
        print(f"sweep summary ({len(rows)} jobs): {sweep_dir / 'sweep_summary.md'}\n{table}")
