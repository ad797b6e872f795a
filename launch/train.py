"""Entry point: compose the Hydra config, validate it, hand it to drift.pipeline.

  python launch/train.py                                     # embedded SmolLM2 on the fixture
  torchrun --nproc-per-node 8 launch/train.py method=drift model=qwen14b
"""

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from drift.config import ConfigError, config_from_dict
    from drift.pipeline import format_summary, run

    raw = OmegaConf.to_container(cfg, resolve=True)
    try:
        config = config_from_dict(raw)
    except ConfigError as error:
        # a clean sentence, not a traceback: nothing has been loaded yet
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)
    summary = run(config, HydraConfig.get().runtime.output_dir, raw)
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_summary(summary))


if __name__ == "__main__":
    main()
