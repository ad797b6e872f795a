"""Source -> records + report + rejects.jsonl, written atomically to out_dir.

  python launch/prepare_data.py                                    # the shipped fixture
  python launch/prepare_data.py data=wildfeedback data.path=/data/sat_dsat_annotation.json
  python launch/prepare_data.py data=drift_jsonl data.path=dsat_data.jsonl \
      tokenizer=/models/qwen data.max_prompt_length=1024          # also fit every prompt
"""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="../conf", config_name="prepare_data", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from drift.data import DataConfig, SchemaError, format_report, load_records, write_records

    data_cfg = DataConfig(**OmegaConf.to_container(cfg.data, resolve=True))
    tokenizer = None
    try:
        data_cfg.validate()
        if cfg.tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer, local_files_only=True)
        records = load_records(data_cfg, tokenizer=tokenizer)
    except (ValueError, SchemaError, RuntimeError, OSError) as error:
        # a sentence naming the input and the fix, not a traceback
        print(f"prepare_data: {error}", file=sys.stderr)
        sys.exit(2)
    paths = write_records(records, cfg.out_dir)
    print(format_report(records.report))
    print(f"wrote {', '.join(p.name for p in paths)} to {cfg.out_dir}")


if __name__ == "__main__":
    main()
