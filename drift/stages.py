"""One stage contract: a stage is a function of its inputs and of the settings that shape its output.

A stage (the initial model, warm start, sample, pairs, tokenize, train, evaluate) declares a
``StageKey``: its inputs, each named by a fingerprint (an upstream stage's output, the training
data), and its settings, as dotted config keys with their values. The key is written into the stage
folder before any work (``stage.json``) and again into its ``done`` marker, with the fingerprint of
the stage's output. Then:

- the same key and a ``done`` marker: the stage is reused as it is;
- the same key, no marker: the stage continues (a training stage from its checkpoint);
- another key: the run stops before any work with one sentence naming the stage and what differs,
  unless ``resume=retrain``, which removes that stage and every later one and runs them again.

Settings that cannot change an output (where or how fast a stage runs, logging, progress bars,
evaluation keys for a training stage) are in no stage's key, so they never block a rerun. The
sampler client's reuse rule and ``method.warmstart_from`` are the same comparison of keys.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from drift.checks import ConfigError
from drift.fingerprint import fingerprint
from drift.io import DONE, mark_done, read_done, write_json_atomic

STAGE_FILE = "stage.json"
RETRAIN = "retrain"

# settings that change where or how fast a stage runs, or only its logs: never part of a key
NOT_SHAPING = (
    "model.name", "model.local_files_only", "model.trust_remote_code", "model.gradient_checkpointing",
    "model.attn_implementation", "trainer.device", "trainer.logprob_impl", "trainer.save_every_steps",
    "trainer.max_tokens_per_forward", "trainer.packing", "trainer.share_prompts", "trainer.accumulate_sharded_grads",
    "reward.batch_size", "reward.local_files_only", "reward.trust_remote_code",
)


@dataclass(frozen=True)
class StageKey:
    """What a stage's output is a function of."""

    inputs: dict[str, str] = field(default_factory=dict)  # name -> fingerprint of an upstream output
    settings: dict[str, Any] = field(default_factory=dict)  # dotted config key -> value

    @property
    def fingerprint(self) -> str:
        return fingerprint({"inputs": self.inputs, "settings": self.settings})

    def record(self) -> dict:
        return {"fingerprint": self.fingerprint, "inputs": self.inputs, "settings": self.settings}

    @classmethod
    def from_record(cls, record: dict) -> StageKey:
        return cls(dict(record.get("inputs", {})), dict(record.get("settings", {})))


class StageMismatch(ConfigError):
    """A stage folder holds work made from other inputs or settings; the message says what differs
    and the two ways on."""


# ---- settings -----------------------------------------------------------------------------------


def flat_settings(config) -> dict[str, Any]:
    """Every leaf of a config dataclass as {"section.key": value} (JSON-plain values)."""
    flat: dict[str, Any] = {}

    def walk(value, prefix: str) -> None:
        if dataclasses.is_dataclass(value):
            for item in dataclasses.fields(value):
                walk(getattr(value, item.name), f"{prefix}{item.name}.")
        else:
            flat[prefix.rstrip(".")] = list(value) if isinstance(value, tuple) else value

    walk(config, "")
    return flat


def select(config, *keys: str) -> dict[str, Any]:
    """The settings named by ``keys`` (a key ending in "." takes its whole section), less NOT_SHAPING."""
    flat = flat_settings(config)
    chosen = {}
    for key in keys:
        if key.endswith("."):
            chosen.update({name: value for name, value in flat.items() if name.startswith(key)})
        else:
            chosen[key] = flat[key]
    return {name: value for name, value in sorted(chosen.items()) if name not in NOT_SHAPING}


# ---- what a folder records ----------------------------------------------------------------------


def recorded_key(folder: Path) -> StageKey | None:
    """The key of the work in ``folder``: its done marker's, else the one written when it started."""
    folder = Path(folder)
    done = _read_json(folder / DONE)
    if done is not None:
        return StageKey.from_record(done["key"]) if isinstance(done.get("key"), dict) else StageKey({}, {"?": "older"})
    started = _read_json(folder / STAGE_FILE)
    return StageKey.from_record(started) if started is not None else None


def output_of(folder: Path) -> str | None:
    """The fingerprint of a finished stage's output, or None."""
    done = read_done(folder)
    return done.get("output") if done else None


def is_finished(folder: Path, key: StageKey) -> bool:
    done = read_done(folder)
    return bool(done) and isinstance(done.get("key"), dict) and done["key"].get("fingerprint") == key.fingerprint


def start(folder: Path, key: StageKey) -> None:
    """Record the key before any work, so that a rerun with other settings finds it even mid-stage."""
    write_json_atomic(Path(folder) / STAGE_FILE, key.record())


def finish(folder: Path, key: StageKey, output: str, summary: dict | None = None) -> None:
    """The done marker: the key, the output's fingerprint and the stage's own summary."""
    mark_done(folder, {**(summary or {}), "key": key.record(), "output": output})


def differences(recorded: StageKey, wanted: StageKey) -> list[str]:
    """'key: X there, Y here' for every setting that differs, then every input that does."""
    lines = []
    if recorded.settings == {"?": "older"}:
        return ["it was finished by an older drift that recorded no settings"]
    for key in sorted(set(recorded.settings) | set(wanted.settings)):
        there, here = recorded.settings.get(key), wanted.settings.get(key)
        if there != here:
            lines.append(f"{key}: {there!r} there, {here!r} here")
    for name in sorted(set(recorded.inputs) | set(wanted.inputs)):
        if recorded.inputs.get(name) != wanted.inputs.get(name):
            lines.append(f"its input {name} differs")
    return lines


def mismatch_sentence(stage: str, lines: list[str], retrain_key: str = "resume") -> str:
    return (f"stage {stage} in this run folder was made with other settings or inputs ({'; '.join(lines)}); "
            f"give a new run_name to keep it, or {retrain_key}={RETRAIN} to train again from {stage} on")


def remove_stages(folders: Iterable[Path]) -> None:
    """Remove stale stage folders, last first, so that a kill part way never leaves a finished stage
    whose upstream is gone."""
    for folder in reversed(list(folders)):
        if Path(folder).exists():
            shutil.rmtree(folder)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
