"""The sampler process: load a saved checkpoint, sample replies, write samples.jsonl, exit.

  python launch/sample.py checkpoint=<HF folder> prompts=<prompts.jsonl> out_dir=<folder> sampler=hf
  python launch/sample.py checkpoint=... prompts=... out_dir=... sampler=vllm sampler.tensor_parallel_size=2

Started by drift.sampler.client between iterations, so that the trainer and the sampler never hold
the GPU at once. Exit codes: 0 done, 2 a config or prompts-file error (nothing was loaded).
"""

import sys

import hydra
from omegaconf import DictConfig

from drift.compose import run_app, validated
from drift.config import SampleConfig


@hydra.main(config_path="../conf", config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from drift.config import ConfigError
    from drift.sampler.process import PromptFileError, format_report, run_sampler

    config = validated(cfg, SampleConfig, error_prefix="sample")
    try:
        report = run_sampler(
            config.checkpoint, config.prompts, config.out_dir, config.sampler,
            max_prompt_length=config.max_prompt_length, prompt_format=config.prompt_format,
            device=config.device, trust_remote_code=config.trust_remote_code, progress_bar=config.progress_bar,
        )
    except (ConfigError, PromptFileError, FileNotFoundError) as error:
        # a sentence naming the input and the fix, not a traceback
        print(f"sample: {error}", file=sys.stderr)
        sys.exit(2)
    print(format_report(report))


if __name__ == "__main__":
    run_app(main, "sample", SampleConfig, error_prefix="sample")
