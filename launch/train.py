"""Entry point: compose the Hydra config, validate it, hand it to drift.pipeline.

  python launch/train.py                                     # embedded SmolLM2 on the fixture
  torchrun --nproc-per-node 8 launch/train.py method=drift model=qwen14b
"""

import os

import hydra
from omegaconf import DictConfig, OmegaConf

from drift.compose import exit_with_sentence, run_app, validated
from drift.config import Config, ConfigError

ERROR_PREFIX = "config error"  # "config error: <one sentence>", before anything is loaded


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from drift.pipeline import format_summary, run

    config = validated(cfg, Config, error_prefix=ERROR_PREFIX)
    try:
        summary = run(config, HydraConfig.get().runtime.output_dir, OmegaConf.to_container(cfg, resolve=True))
    except ConfigError as error:  # a setting that only the run's files can check (method.warmstart_from)
        exit_with_sentence(ERROR_PREFIX, str(error))
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_summary(summary))


if __name__ == "__main__":
    run_app(main, "config", Config, error_prefix=ERROR_PREFIX)
