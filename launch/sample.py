"""The sampler process: load a saved checkpoint, sample replies, write samples.jsonl, exit.

  python launch/sample.py checkpoint=<HF folder> prompts=<prompts.jsonl> out_dir=<folder> sampler=hf
  python launch/sample.py checkpoint=... prompts=... out_dir=... sampler=vllm sampler.tensor_parallel_size=2

Started by the pipeline between iterations, so that the trainer and the sampler never hold the
GPU at once. Exit codes: 0 done, 2 a config or prompts-file error (nothing was loaded).
"""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="../conf", config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from drift.config import ConfigError
    from drift.sampler.process import PromptFileError, format_report, run_sampler, sampler_config_from_dict

    raw = OmegaConf.to_container(cfg, resolve=True)
    try:
        sampler = sampler_config_from_dict(raw["sampler"])
        report = run_sampler(
            raw["checkpoint"], raw["prompts"], raw["out_dir"], sampler,
            max_prompt_length=int(raw["max_prompt_length"]), prompt_format=raw["prompt_format"],
            device=raw["device"], trust_remote_code=bool(raw["trust_remote_code"]),
            progress_bar=bool(raw["progress_bar"]),
        )
    except (ConfigError, PromptFileError, FileNotFoundError) as error:
        # a sentence naming the input and the fix, not a traceback
        print(f"sample: {error}", file=sys.stderr)
        sys.exit(2)
    print(format_report(report))


if __name__ == "__main__":
    main()
