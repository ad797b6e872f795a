"""Per-step metrics to metrics.jsonl (always) and wandb (offline unless configured), rank 0 only.

Beside them, pair_metrics.jsonl holds one row per pair per step (its DPO logit s and rewards), for
the training-dynamics analysis: distributions of sigma(-s), not only their means.
"""

from __future__ import annotations

from pathlib import Path

from drift.config import LoggingConfig
from drift.io import append_jsonl, read_jsonl, write_jsonl_atomic

PAIR_METRICS = "pair_metrics.jsonl"


def _drop_steps_after(path: Path, step: int) -> None:
    """A resumed run rewrites the steps after its checkpoint: drop what a killed run logged past it
    (a row it was killed while writing included)."""
    if not path.exists():
        return
    rows = read_jsonl(path, torn_tail_ok=True)
    write_jsonl_atomic(path, [row for row in rows if row.get("step", 0) <= step])


class MetricsLog:
    """``group``: the pipeline's run name, so that its stages show as one group in wandb; ``wandb_dir``:
    the folder wandb writes its wandb/ folder into (default: beside metrics.jsonl). wandb prints nothing:
    the run says once where its files are (drift.pipeline.run_header)."""

    def __init__(self, path: Path, logging_cfg: LoggingConfig, *, enabled: bool, run_name: str, config: dict | None = None,
                 resume_after_step: int = 0, group: str | None = None, wandb_dir: Path | None = None):
        self.path = Path(path)
        self.pairs_path = self.path.parent / PAIR_METRICS
        self.enabled = enabled
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_steps_after(self.path, resume_after_step)
        _drop_steps_after(self.pairs_path, resume_after_step)
        if logging_cfg.wandb_mode != "disabled":
            import wandb

            folder = Path(wandb_dir) if wandb_dir is not None else self.path.parent
            folder.mkdir(parents=True, exist_ok=True)
            self._wandb = wandb.init(
                project=logging_cfg.wandb_project,
                name=run_name,
                group=group,
                job_type=self.path.parent.parent.name if group else None,
                mode=logging_cfg.wandb_mode,
                dir=str(folder),
                config=config,
                resume="allow",
                id=f"{run_name}-{self.path.parent.name}".replace("/", "-")[:64],
                # no banner, no history at the end, no copy of the console, no system-metrics thread
                settings=wandb.Settings(silent=True, quiet=True, console="off", x_disable_stats=True, disable_git=True),
            )

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, [record])
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("step"))

    def log_pairs(self, step: int, epoch: int, rows: list[dict]) -> None:
        if self.enabled:
            append_jsonl(self.pairs_path, [{"step": step, "epoch": epoch, **row} for row in rows])

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return read_jsonl(path, torn_tail_ok=True)  # a run still training (or killed) may be mid-row
