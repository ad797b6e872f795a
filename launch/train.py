"""Entry point: compose the Hydra config, check it and everything it names, hand it to drift.pipeline.

  python launch/train.py                                     # embedded SmolLM2 on the fixture
  torchrun --nproc-per-node 8 launch/train.py method=drift model=qwen14b

Every check (the config, the data source, the sampler and attention backends, the model source, and
the run folder's finished stages against this config) runs before Hydra writes into the run folder,
and each failure is one sentence (drift.preflight). What the run prints also goes to the run folder's
train.log (drift.console), the libraries' own progress bars and banners left out.
"""

import contextlib
import os
from pathlib import Path

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

    from drift.console import LOG_NAME, tee_to_log
    from drift.pipeline import format_summary, run

    config = validated(cfg, Config, error_prefix=ERROR_PREFIX)
    run_dir = HydraConfig.get().runtime.output_dir
    main_rank = int(os.environ.get("RANK", "0")) == 0
    with tee_to_log(Path(run_dir) / LOG_NAME) if main_rank else contextlib.nullcontext():
        try:
            preflight(config, run_dir)  # done already before Hydra wrote the folder, except in a -m sweep's jobs
            summary = run(config, run_dir, OmegaConf.to_container(cfg, resolve=True))
        except ConfigError as error:
            exit_with_sentence(ERROR_PREFIX, str(error))
        if main_rank:
            print(format_summary(summary), flush=True)


if __name__ == "__main__":
    from drift.console import quiet_libraries

    quiet_libraries()  # before anything imports tqdm or transformers; inherited by the sampler processes
    run_app(main, "config", Config, error_prefix=ERROR_PREFIX, preflight=preflight)
