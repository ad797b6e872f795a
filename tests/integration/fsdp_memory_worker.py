"""Run under torchrun (2 processes, gloo) by test_fsdp_memory.py; rank 0 writes what it measured to OUT/report.json.

usage: torchrun --nproc-per-node 2 tests/integration/fsdp_memory_worker.py OUT_DIR

1. meta-device loading: every rank builds the model on meta, only rank 0 reads weights (rank 1's
   load_model raises), shards arrive by broadcast; gathered back they must equal a plain load.
2. gradient accumulation: the layout of the gradients after each micro-batch (sharded DTensors, or
   FSDP's unsharded accumulation buffers), and the step's gradient under the sharded path, the
   unsharded path and one big batch.
3. sharded checkpoints: every rank writes its own file; a resumed trainer holds the same weights
   and optimizer state bit for bit.
4. release_memory: nothing keeps the policy, its parameters or the optimizer alive.
"""

import gc
import json
import sys
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from tiny import synthetic_pairs, tiny_config  # noqa: E402
from torch.distributed.fsdp import FSDPModule  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

import drift.train  # noqa: E402
from drift.model import load_model, load_tokenizer  # noqa: E402
from drift.parallel import init_runtime  # noqa: E402
from drift.train import Stage, StageTrainer, _build_policy  # noqa: E402


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def meta_load_report(out: Path, runtime, family: str) -> dict:
    config = tiny_config(out)
    config.model.name_or_path = f"tiny:{family}"
    tokenizer = load_tokenizer(config.model)
    sharded = _build_policy(config.model, config.trainer, runtime, None, len(tokenizer))
    plain = load_model(config.model, dtype=torch.float32, seed=config.trainer.seed, vocab_size=len(tokenizer))
    expected = plain.state_dict()
    state = sharded.causal_lm.state_dict()
    mismatched = [name for name, value in state.items() if not torch.equal(full(value), expected[name])]
    buffers = dict(plain.named_buffers())
    bad_buffers = [name for name, value in sharded.causal_lm.named_buffers() if not torch.equal(value, buffers[name])]
    parameters = list(sharded.parameters())
    return {
        "keys_equal": sorted(state) == sorted(expected),
        "mismatched": mismatched,
        "buffers_checked": len(buffers),
        "bad_buffers": bad_buffers,
        "all_dtensor": all(isinstance(p, DTensor) for p in parameters),
        "any_meta": any(p.is_meta or p.to_local().is_meta for p in parameters),
        "local_numel": sum(p.to_local().numel() for p in parameters),
        "full_numel": sum(p.numel() for p in parameters),
    }


def grad_layout(policy) -> dict:
    """Where this rank's gradients live right now."""
    unsharded = 0  # FSDP's full-size gradient buffers kept between backwards
    for module in policy.modules():
        if isinstance(module, FSDPModule):
            group = module._get_fsdp_state()._fsdp_param_group
            for fsdp_param in group.fsdp_params if group else []:
                held = getattr(fsdp_param, "_unsharded_param", None)
                if fsdp_param.unsharded_accumulated_grad is not None or (held is not None and held.grad is not None):
                    unsharded += 1
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    sharded = sum(isinstance(g, DTensor) and g.to_local().shape == p.to_local().shape
                  for p, g in ((p, p.grad) for p in policy.parameters() if p.grad is not None))
    return {"unsharded_buffers": unsharded, "grads": len(grads), "sharded_grads": int(sharded)}


def step_gradients(out: Path, runtime, tokenizer, label: str, **trainer) -> tuple[dict, list[dict], StageTrainer]:
    config = tiny_config(out, optimizer="sgd", lr=0.5, warmup_ratio=0.0, **trainer)
    stage = Stage("acc", out / f"stage-{label}", synthetic_pairs(8, seed=3), None, None, 1, out / "cache")
    trainer_ = StageTrainer.setup(config, runtime, stage, tokenizer, None)
    layouts = []
    forward_backward = trainer_._forward_backward

    def recording(*args):
        result = forward_backward(*args)
        layouts.append(grad_layout(trainer_.policy))
        return result

    trainer_._forward_backward = recording
    _, step_pairs = trainer_.next_step_pairs()
    trainer_.train_step(step_pairs)
    grads = {name: full(p.grad).clone() for name, p in trainer_.policy.named_parameters()}
    return grads, layouts, trainer_


def max_relative_difference(a: dict, b: dict) -> float:
    return max((a[n] - b[n]).abs().max().item() / (a[n].abs().max().item() + 1e-12) for n in a)


def checkpoint_report(out: Path, runtime, tokenizer) -> dict:
    config = tiny_config(out, optimizer="rmsprop", lr=1e-2)
    stage = Stage("ckpt", out / "stage-ckpt", synthetic_pairs(8, seed=4), None, None, 2, out / "cache")
    trainer = StageTrainer.setup(config, runtime, stage, tokenizer, None)
    for _ in range(2):
        _, step_pairs = trainer.next_step_pairs()
        trainer.train_step(step_pairs)
        trainer.clip_gradients()
        trainer.optimizer_step()
    trainer.checkpoint()
    resumed = StageTrainer.setup(config, runtime, stage, tokenizer, None)
    weights_equal = all(torch.equal(full(a), full(b)) for a, b in zip(trainer.policy.parameters(), resumed.policy.parameters()))
    saved, loaded = trainer.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    optimizer_equal = sorted(saved) == sorted(loaded) and all(
        torch.equal(full(saved[i][key]), full(loaded[i][key])) for i in saved for key in saved[i]
    )
    files = sorted(p.name for p in (stage.folder / "checkpoint" / "state").iterdir())
    return {"weights_equal": weights_equal, "optimizer_equal": optimizer_equal, "optimizer_entries": len(saved),
            "files": files, "resumed_step": resumed.state.global_step}


def release_report(trainer: StageTrainer) -> dict:
    alive = [weakref.ref(trainer.policy), weakref.ref(trainer.optimizer)]
    alive += [weakref.ref(p) for p in trainer.parameters]
    trainer.release_memory()
    gc.collect()
    return {"tracked": len(alive), "still_alive": sum(ref() is not None for ref in alive)}


def main(out_dir: str) -> None:
    out = Path(out_dir)
    runtime = init_runtime("cpu", "fp32")
    if not runtime.is_main:
        def no_weights_here(*args, **kwargs):
            raise AssertionError("a rank other than 0 read the model's weights")

        drift.train.load_model = no_weights_here  # only rank 0 may read the weights
    report = {"meta_load": {family: meta_load_report(out, runtime, family) for family in ("llama", "qwen2")}}

    tokenizer = load_tokenizer(tiny_config(out).model)
    sharded, sharded_layouts, trainer = step_gradients(out, runtime, tokenizer, "sharded", per_device_batch_size=2, grad_accum_steps=2)
    unsharded, unsharded_layouts, _ = step_gradients(out, runtime, tokenizer, "unsharded", per_device_batch_size=2,
                                                     grad_accum_steps=2, accumulate_sharded_grads=False)
    big, _, _ = step_gradients(out, runtime, tokenizer, "big", per_device_batch_size=4, grad_accum_steps=1)
    report["accumulation"] = {
        "sharded_layouts": sharded_layouts,
        "unsharded_layouts": unsharded_layouts,
        "parameters": len(sharded),
        "sharded_vs_unsharded": max_relative_difference(unsharded, sharded),
        "sharded_vs_big_batch": max_relative_difference(big, sharded),
        "largest_gradient": max(g.abs().max().item() for g in sharded.values()),
    }
    report["release"] = release_report(trainer)
    report["checkpoint"] = checkpoint_report(out, runtime, tokenizer)
    if runtime.is_main:
        (out / "report.json").write_text(json.dumps(report, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
