"""Train the tiny model on synthetic pairs; run single-process or under torchrun by the tests.

usage: tiny_stage.py OUT_DIR PER_DEVICE_BATCH GRAD_ACCUM OPTIMIZER NUM_PAIRS EPOCHS [SAVE_EVERY [MAX_TOKENS_PER_FORWARD]]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from tiny import synthetic_pairs, tiny_config  # noqa: E402

from drift.model import load_tokenizer  # noqa: E402
from drift.parallel import init_runtime  # noqa: E402
from drift.train import Stage, train_stage  # noqa: E402


def main(out_dir, per_device_batch_size, grad_accum_steps, optimizer, num_pairs, epochs, save_every=0, max_tokens_per_forward=0) -> None:
    out = Path(out_dir)
    config = tiny_config(
        out,
        per_device_batch_size=per_device_batch_size,
        grad_accum_steps=grad_accum_steps,
        lr=0.5 if optimizer == "sgd" else 1e-2,
        optimizer=optimizer,
        warmup_ratio=0.0 if optimizer == "sgd" else 0.1,
        save_every_steps=save_every,
        max_tokens_per_forward=max_tokens_per_forward,
    )
    runtime = init_runtime("cpu", "fp32")
    tokenizer = load_tokenizer(config.model)
    stage = Stage("tiny", out / "stage", synthetic_pairs(num_pairs, seed=3), None, None, epochs, out / "cache")
    train_stage(config, runtime, stage, tokenizer)
    if runtime.distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    out_dir, batch, accum, optimizer, num_pairs, epochs, *rest = sys.argv[1:]
    main(out_dir, int(batch), int(accum), optimizer, int(num_pairs), int(epochs), *(int(x) for x in rest))
