"""One LoRA DPO step of the tiny model, single-process or under torchrun, for test_lora_distributed.py.

usage: lora_stage.py OUT_DIR START_MODEL PER_DEVICE_BATCH GRAD_ACCUM

START_MODEL is a stage's model/ folder with adapter/ beside it (drift.lora.start_of): the step
continues that adapter. Two stages run on the same 8 pairs:
  sgd/      one SGD step, finished: its model/ (merged) and adapter/ are the step's result, and
            OUT_DIR/sgd_grads.safetensors holds every parameter's gradient before the step (gathered)
  rmsprop/  one RMSprop step: OUT_DIR/report.json says which parameters require and received a
            gradient, and what the optimizer holds state for
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tiny import synthetic_pairs, tiny_config  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from drift.config import LoraConfig  # noqa: E402
from drift.model import load_tokenizer  # noqa: E402
from drift.parallel import init_runtime  # noqa: E402
from drift.train import Stage, StageTrainer  # noqa: E402

LORA = LoraConfig(rank=4, alpha=8.0)


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def trainer_for(out: Path, start: str, runtime, optimizer: str, batch: int, accum: int) -> StageTrainer:
    config = tiny_config(out, per_device_batch_size=batch, grad_accum_steps=accum, optimizer=optimizer,
                         lr=0.5 if optimizer == "sgd" else 1e-2, warmup_ratio=0.0)
    config.model.lora = LORA
    stage = Stage(optimizer, out / optimizer, synthetic_pairs(8, seed=3), start, None, 1, out / "cache")
    return StageTrainer.setup(config, runtime, stage, load_tokenizer(config.model), None)


def one_step(trainer: StageTrainer) -> dict[str, torch.Tensor]:
    """The step; returns every parameter's gradient (full, on every rank) before the optimizer ran."""
    _, step_pairs = trainer.next_step_pairs()
    trainer.train_step(step_pairs)
    trainer.clip_gradients()
    grads = {name: full(p.grad).detach().clone() for name, p in trainer.policy.named_parameters() if p.grad is not None}
    trainer.optimizer_step()
    return grads


def main(out_dir: str, start: str, batch: int, accum: int) -> None:
    out = Path(out_dir)
    runtime = init_runtime("cpu", "fp32")

    sgd = trainer_for(out, start, runtime, "sgd", batch, accum)
    grads = one_step(sgd)
    sgd.finish()
    if runtime.is_main:
        save_file({name.removeprefix("causal_lm."): g.contiguous() for name, g in grads.items()}, str(out / "sgd_grads.safetensors"))

    rmsprop = trainer_for(out, start, runtime, "rmsprop", batch, accum)
    received = one_step(rmsprop)
    names = {id(p): name for name, p in rmsprop.policy.named_parameters()}
    states = {names[id(p)]: {key: [str(v.dtype), list(full(v).shape)] for key, v in state.items() if torch.is_tensor(v)}
              for p, state in rmsprop.optimizer.state.items()}
    parameters = dict(rmsprop.policy.named_parameters())
    report = {
        "requires_grad": sorted(name for name, p in parameters.items() if p.requires_grad),
        "received_grad": sorted(received),
        "optimizer_params": sorted(names[id(p)] for group in rmsprop.optimizer.param_groups for p in group["params"]),
        "optimizer_state": states,
        "dtypes": {name: str(p.dtype) for name, p in parameters.items()},
        "sharded": sorted(name for name, p in parameters.items() if isinstance(p, DTensor)),
        "world_size": runtime.world_size,
    }
    if runtime.is_main:
        (out / "report.json").write_text(json.dumps(report, indent=1))
    if runtime.distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    out_dir, start, batch, accum = sys.argv[1:]
    main(out_dir, start, int(batch), int(accum))
