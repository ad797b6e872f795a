"""Entry point: compose the Hydra config, check it and everything it names, hand it to drift.pipeline.

  python launch/train.py                                     # embedded SmolLM2 on the fixture
  torchrun --nproc-per-node 8 launch/train.py method=drift model=qwen14b

Every check (the config, the data source, the sampler and attention backends, the model source, and
the run folder's finished stages against this config) runs before Hydra writes into the run folder,
and each failure is one sentence (drift.preflight).
"""

import os

import hydra
from omegaconf import DictConfig, OmegaConf

from drift.compose import exit_with_sentence, run_app, validated
from drift.config import Config, ConfigError

ERROR_PREFIX = "config error"  # "config error: <one sentence>", before anything is loaded


def preflight(config: Config, run_dir: str) -> None:
    from drift.preflight import check_run

    check_run(config, run_dir)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from drift.pipeline import format_summary, run

    config = validated(cfg, Config, error_prefix=ERROR_PREFIX)
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        preflight(config, run_dir)  # done already before Hydra wrote the folder, except in a -m sweep's jobs
        summary = run(config, run_dir, OmegaConf.to_container(cfg, resolve=True))
    except ConfigError as error:
        exit_with_sentence(ERROR_PREFIX, str(error))
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_summary(summary))


if __name__ == "__main__":
    run_app(main, "config", Config, error_prefix=ERROR_PREFIX, preflight=preflight)
