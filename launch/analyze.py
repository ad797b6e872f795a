"""Analyses and evaluations of finished runs: one Hydra app per command (drift/commands.py names
its module in drift/analysis/ or drift/eval/, its config
dataclass composed by conf/analyze/<command>.yaml, the analyses' own config root).

  python launch/analyze.py dynamics run=runs/drift_smollm2_fixture
  python launch/analyze.py dynamics run=[runs/drift_smollm2_fixture,runs/spin_smollm2_fixture] tau=0.4
  python launch/analyze.py dynamics -m run=runs/A,runs/B       # a sweep: one job per run
  python launch/analyze.py coverage --cfg job                  # the composed config, with every default
"""

import sys

import hydra
from omegaconf import DictConfig

from drift.commands import commands, load
from drift.compose import check_each_key_once, exit_with_sentence, run_app, validated
from drift.config import ConfigError


def main() -> None:
    available = commands()
    if len(sys.argv) < 2 or sys.argv[1] not in available:
        exit_with_sentence("usage", f"python launch/analyze.py <command> key=value ...; commands: {', '.join(available)}")
    name = sys.argv.pop(1)  # the rest is the command's Hydra command line
    command = load(name)

    @hydra.main(config_path="../conf/analyze", config_name=name, version_base="1.3")
    def analyze(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        try:
            check_each_key_once(HydraConfig.get().overrides.task)
        except ConfigError as error:
            exit_with_sentence(name, str(error))
        code = command.run(validated(cfg, command.CONFIG, error_prefix=name))
        if code:
            sys.exit(code)

    run_app(analyze, name, command.CONFIG, error_prefix=name)


if __name__ == "__main__":
    main()
