"""The commands of launch/analyze.py: analyses of a run's training (drift.analysis) and evaluations
of its models (drift.eval). Each command module holds its config dataclass (``CONFIG``, composed by
conf/analyze/<command>.yaml) and ``run(config) -> exit code``. conf/analyze/ is the commands' own
config root, apart from the trainer's groups (conf/eval, conf/data), so a command's keys never
read as a trainer's config group.

  python launch/analyze.py <command> key=value ...        # a Hydra app: --cfg job, -m sweeps
  invoke("dynamics", ["run=runs/A"])                      # the same in this process (tests, notebooks)
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

COMMANDS = {
    "coverage": "drift.analysis.coverage",
    "dynamics": "drift.analysis.dynamics",
    "gradient_check": "drift.analysis.gradient_check",
    "export": "drift.eval.export",
    "testbed": "drift.eval.testbed",
}


def commands() -> list[str]:
    return sorted(COMMANDS)


def load(command: str) -> ModuleType:
    return importlib.import_module(COMMANDS[command])


def compose_command(command: str, overrides: list[str]):
    """The validated config ``python launch/analyze.py <command> <overrides>`` would run with."""
    from drift.compose import CONF_DIR, check_each_key_once, compose

    check_each_key_once(overrides)
    return compose(command, overrides, load(command).CONFIG, config_dir=CONF_DIR / "analyze")


def invoke(command: str, overrides: list[str]) -> int:
    """What ``python launch/analyze.py <command> <overrides>`` does, in this process."""
    from drift.config import ConfigError

    try:
        config = compose_command(command, overrides)
    except ConfigError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 2
    return load(command).run(config)
