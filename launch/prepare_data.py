"""Source -> records + report + rejects.jsonl, written atomically to out_dir.

  python launch/prepare_data.py                                    # the shipped fixture
  python launch/prepare_data.py data=wildfeedback data.path=/data/sat_dsat_annotation.json
  python launch/prepare_data.py data=drift_jsonl data.path=dsat_data.jsonl \
      tokenizer=/models/qwen data.max_prompt_length=1024          # also fit every prompt
"""

import hydra
from omegaconf import DictConfig

from drift.compose import exit_with_sentence, run_app, validated
from drift.config import PrepareDataConfig


@hydra.main(config_path="../conf", config_name="prepare_data", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from drift.config import ConfigError
    from drift.data import format_report, write_records
    from drift.preflight import check_data

    config = validated(cfg, PrepareDataConfig, error_prefix="prepare_data")
    tokenizer = None
    try:
        if config.tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(config.tokenizer, local_files_only=True)
        # the same check launch/train.py runs: path, format, schema, and no hub retries offline
        records = check_data(config.data, offline=True, tokenizer=tokenizer)
    except (ConfigError, OSError) as error:
        # a sentence naming the input and the fix, not a traceback
        exit_with_sentence("prepare_data", str(error))
    paths = write_records(records, config.out_dir)
    print(format_report(records.report))
    print(f"wrote {', '.join(p.name for p in paths)} to {config.out_dir}")


if __name__ == "__main__":
    run_app(main, "prepare_data", PrepareDataConfig, error_prefix="prepare_data")
