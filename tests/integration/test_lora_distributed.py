"""A LoRA DPO step under torchrun (2 processes, gloo, FSDP2) equals the single-process step, and only
the adapter's parameters receive gradients and optimizer state."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from drift.model import build_byte_tokenizer, load_model, save_hf_checkpoint
from tests.tiny import tiny_config

SCRIPT = Path(__file__).resolve().parents[1] / "lora_stage.py"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def _start(folder: Path) -> Path:
    """A finished stage to continue: the tiny base saved as base/, a PEFT adapter with random A and B
    (B not zero, so that A receives a gradient too) as adapter/, their merge as model/."""
    import peft
    from transformers import AutoModelForCausalLM

    tokenizer = build_byte_tokenizer()
    base = load_model(tiny_config(folder).model, dtype=torch.float32, seed=7, vocab_size=len(tokenizer))
    save_hf_checkpoint(base, tokenizer, base.state_dict(), folder / "base")
    # loaded from its folder, so that PEFT records that folder as the adapter's base
    base = AutoModelForCausalLM.from_pretrained(folder / "base")
    adapted = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_" in name:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    adapted.save_pretrained(folder / "adapter")
    merged = adapted.merge_and_unload()
    save_hf_checkpoint(merged, tokenizer, merged.state_dict(), folder / "model")
    return folder / "model"


def test_lora_step_on_two_processes_equals_single_process_step_and_trains_the_adapter_only(tmp_path):
    start = _start(tmp_path / "start")
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    # the same global batch of 8 pairs: 1 process x batch 8, vs 2 processes x batch 2 x 2 accumulation steps
    _run([sys.executable, str(SCRIPT), str(single), str(start), "8", "1"])
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(SCRIPT), str(sharded), str(start), "2", "2"])

    # only the adapter's A and B (2 layers x 7 projections x 2) require, receive and keep anything
    for run, world_size in ((single, 1), (sharded, 2)):
        report = json.loads((run / "report.json").read_text())
        assert report["world_size"] == world_size
        adapter = sorted(name for name in report["dtypes"] if ".lora_A." in name or ".lora_B." in name)
        assert len(adapter) == 28 and len(report["dtypes"]) > len(adapter)
        assert report["requires_grad"] == adapter
        assert report["received_grad"] == adapter
        assert report["optimizer_params"] == adapter
        assert sorted(report["optimizer_state"]) == adapter
        assert all(state["square_avg"][0] == "torch.float32" for state in report["optimizer_state"].values())
        # fp32 adapter master weights; the frozen base in the compute dtype (fp32 on a CPU)
        assert all(report["dtypes"][name] == "torch.float32" for name in adapter)
        if world_size == 2:  # every parameter, base and adapter, is sharded
            assert report["sharded"] == sorted(report["dtypes"])

    # the gradients, and with SGD the update they make, agree (fp32 sums in another order)
    single_grads, sharded_grads = load_file(single / "sgd_grads.safetensors"), load_file(sharded / "sgd_grads.safetensors")
    assert sorted(single_grads) == sorted(sharded_grads) and len(single_grads) == 28
    for name, grad in single_grads.items():
        assert grad.abs().max() > 0, name  # A too: B is not zero
        assert (grad - sharded_grads[name]).abs().max() <= 1e-4 * grad.abs().max() + 1e-8, name
    before = load_file(tmp_path / "start" / "adapter" / "adapter_model.safetensors")
    after_single = load_file(single / "sgd" / "adapter" / "adapter_model.safetensors")
    after_sharded = load_file(sharded / "sgd" / "adapter" / "adapter_model.safetensors")
    assert sorted(after_single) == sorted(after_sharded) == sorted(before)
    for name in before:
        update_single, update_sharded = after_single[name] - before[name], after_sharded[name] - before[name]
        assert update_single.abs().max() > 1e-6, name
        assert (update_single - update_sharded).abs().max() <= 1e-4 * update_single.abs().max() + 1e-8, name

    # the base did not move: the merged model is the base plus the new adapter, as PEFT merges it
    import peft
    from transformers import AutoModelForCausalLM

    base_folder = tmp_path / "start" / "base"
    expected = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), sharded / "sgd" / "adapter")
    expected = expected.merge_and_unload().state_dict()
    merged = load_file(sharded / "sgd" / "model" / "model.safetensors")
    base = load_file(base_folder / "model.safetensors")
    for name, value in merged.items():
        assert torch.allclose(value, expected[name], atol=1e-6), name
        if not any(f".{target}." in name for target in TARGETS):
            assert torch.equal(value, base[name]), name
