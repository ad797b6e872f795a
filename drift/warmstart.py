"""One warm start for several runs: `method.warmstart_from=<run folder>`.

The paper trains one warm start and starts every method from it. A comparison of methods here does
the same: the later runs link the first run's finished warm start (``iter_0/``) into their own folder
instead of training it again, once every setting that shapes a warm start's weights (the model, the
data, the trainer's settings, beta, rpo_alpha and the warm-start epochs) is found equal in both runs.
A run records those settings in ``iter_0/warmstart.json``; an older run's are read from the config
Hydra saved beside it (``.hydra/config.yaml``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from drift.checks import ConfigError
from drift.io import DONE, atomic_dir, write_json_atomic

SETTINGS_FILE = "warmstart.json"
# settings that change where or how fast a warm start runs, or what happens after it, not its weights
_NOT_SHAPING = {"trainer": ("device", "save_every_steps", "max_tokens_per_forward"), "data": ("guidance",)}


def warmstart_settings(config) -> dict:
    """Everything a warm start's weights depend on, as plain values."""
    def section(name: str) -> dict:
        values = asdict(getattr(config, name))
        return {key: value for key, value in values.items() if key not in _NOT_SHAPING.get(name, ())}

    method = config.method
    return {
        "model": section("model"), "data": section("data"), "trainer": section("trainer"),
        "method": {"beta": method.beta, "rpo_alpha": method.rpo_alpha, "warmstart_epochs": method.warmstart_epochs},
    }


def record_settings(iter0: Path, settings: dict, source: str | None = None) -> None:
    write_json_atomic(iter0 / SETTINGS_FILE, {"from": source, "settings": settings})


def recorded_settings(run: Path) -> dict:
    """The warm-start settings of an earlier run: its warmstart.json, else its saved Hydra config."""
    recorded = run / "iter_0" / SETTINGS_FILE
    if recorded.exists():
        return json.loads(recorded.read_text())["settings"]
    saved = run / ".hydra" / "config.yaml"
    if saved.exists():
        from omegaconf import OmegaConf

        from drift.compose import structured
        from drift.config import Config

        return warmstart_settings(structured(OmegaConf.load(saved), Config))
    raise ConfigError(
        f"method.warmstart_from={run}: found neither {recorded} nor {saved}, so nothing says how that warm "
        f"start was trained; give the folder of a run made by launch/train.py"
    )


def differences(theirs: dict, ours: dict, prefix: str = "") -> list[str]:
    """'key: X there, Y here' for every leaf that differs (a key missing on one side reads as None)."""
    lines = []
    for key in sorted(set(theirs) | set(ours)):
        there, here = theirs.get(key), ours.get(key)
        where = f"{prefix}{key}"
        if isinstance(there, dict) and isinstance(here, dict):
            lines += differences(there, here, where + ".")
        elif there != here:
            lines.append(f"{where}: {there!r} there, {here!r} here")
    return lines


def reuse_warmstart(source_run: str | os.PathLike, run_dir: Path, settings: dict) -> None:
    """Link the finished warm start of `source_run` into `run_dir/iter_0` (files are hard links where the
    file system allows: checkpoints are only ever replaced, never written in place). Raises ConfigError
    when its settings differ from `settings` or it has not finished. Nothing to do on a resumed run."""
    target = run_dir / "iter_0"
    if (target / "train" / DONE).exists():
        return
    source_run = Path(source_run).resolve()
    source = source_run / "iter_0"
    if not (source / "train" / DONE).exists():
        raise ConfigError(
            f"method.warmstart_from={source_run}: it has no finished warm start ({source / 'train' / DONE} is "
            f"missing); finish that run first or drop method.warmstart_from"
        )
    mismatched = differences(recorded_settings(source_run), settings)
    if mismatched:
        raise ConfigError(
            f"method.warmstart_from={source_run}: its warm start was trained with other settings "
            f"({'; '.join(mismatched)}); use the same values or drop method.warmstart_from"
        )
    with atomic_dir(target) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns(SETTINGS_FILE))
        record_settings(staging, settings, str(source_run))


def _link_or_copy(source: str, target: str) -> str:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)
    return target
