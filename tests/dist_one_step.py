"""Run one optimizer step on the tiny model and save the weights; used single-process and under torchrun."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from tiny import synthetic_pairs, tiny_config  # noqa: E402

from drift.model import load_tokenizer  # noqa: E402
from drift.parallel import init_runtime  # noqa: E402
from drift.train import Stage, train_stage  # noqa: E402


def main(out_dir: str, per_device_batch_size: int, grad_accum_steps: int, optimizer: str) -> None:
    out = Path(out_dir)
    config = tiny_config(
        out, per_device_batch_size=per_device_batch_size, grad_accum_steps=grad_accum_steps, lr=0.5, optimizer=optimizer, warmup_ratio=0.0
    )
    runtime = init_runtime("cpu", "fp32")
    tokenizer = load_tokenizer(config.model)
    # 8 pairs and a global batch of 8: exactly one optimizer step
    stage = Stage("one_step", out / "stage", synthetic_pairs(8, seed=3), None, None, 1, out / "cache")
    train_stage(config, runtime, stage, tokenizer)
    if runtime.distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
