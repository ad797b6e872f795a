"""Per-step metrics to metrics.jsonl (always) and wandb (offline unless configured), rank 0 only."""

from __future__ import annotations

import json
import os
from pathlib import Path

from drift.config import LoggingConfig


class MetricsLog:
    def __init__(self, path: Path, logging_cfg: LoggingConfig, *, enabled: bool, run_name: str, config: dict | None = None, resume_after_step: int = 0):
        self.path = Path(path)
        self.enabled = enabled
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a resumed run rewrites the steps after its checkpoint, so drop what a killed run logged past it
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= resume_after_step]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        if logging_cfg.wandb_mode != "disabled":
            import wandb

            self._wandb = wandb.init(
                project=logging_cfg.wandb_project,
                name=run_name,
                mode=logging_cfg.wandb_mode,
                dir=str(self.path.parent),
                config=config,
                resume="allow",
                id=f"{run_name}-{self.path.parent.name}".replace("/", "-")[:64],
            )

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")
            stream.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("step"))

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
