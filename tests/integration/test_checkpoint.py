"""Resume after a kill, and checkpoints that plain transformers can load."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from drift.model import build_byte_tokenizer, load_model
from drift.parallel import SequenceLogprobModel, sequence_logps
from drift.tokenize import collate_sequences
from tests.tiny import synthetic_pairs, tiny_config

SCRIPT = Path(__file__).resolve().parents[1] / "tiny_stage.py"
KILL_AFTER_CHECKPOINT = Path(__file__).resolve().parents[1] / "kill_after_checkpoint.py"


def _stage(out: Path, *, kill_after: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 12 pairs, batch 2: 6 steps an epoch, 2 epochs; RMSprop so optimizer state matters on resume
    command = [sys.executable, str(SCRIPT), str(out), "2", "1", "rmsprop", "12", "2", "1"]
    if kill_after:
        command[1:1] = [str(KILL_AFTER_CHECKPOINT), f"tiny:{kill_after}"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    assert _stage(uninterrupted).returncode == 0
    killed = _stage(resumed, kill_after=7)  # mid second epoch
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = json.loads((resumed / "stage" / "checkpoint" / "trainer_state.json").read_text())
    assert state["global_step"] == 7 and not (resumed / "stage" / "done").exists()
    result = _stage(resumed)
    assert result.returncode == 0, result.stderr[-3000:]

    expected = load_file(uninterrupted / "stage" / "model" / "model.safetensors")
    actual = load_file(resumed / "stage" / "model" / "model.safetensors")
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    steps = [json.loads(line)["step"] for line in (resumed / "stage" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_saved_checkpoint_reloads_with_plain_transformers_and_gives_the_same_logits(tmp_path):
    from drift.checkpoint import save_policy
    from drift.parallel import init_runtime

    config = tiny_config(tmp_path)
    model = load_model(config.model, dtype=torch.float32, seed=11, vocab_size=len(build_byte_tokenizer()))
    with torch.no_grad():  # make the weights differ from any fresh init
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    wrapper = SequenceLogprobModel(model)
    save_policy(wrapper, build_byte_tokenizer(), tmp_path / "saved", init_runtime("cpu", "fp32"))

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32)
    input_ids = torch.tensor([[5, 17, 33, 101, 7, 250, 3]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids).logits, reloaded(input_ids).logits, atol=1e-6, rtol=0)
    # and the fused head path agrees with log_softmax over the reloaded model's full logits (fp64)
    pair = synthetic_pairs(1)[0]
    batch = collate_sequences([pair.chosen], pad_id=0)
    with torch.no_grad():
        ours, _ = sequence_logps(wrapper, batch)
        ids = torch.tensor([pair.chosen.prompt_ids + pair.chosen.response_ids])
        logits = reloaded(ids).logits[0].double()
        first = len(pair.chosen.prompt_ids)
        logps = torch.log_softmax(logits[first - 1 : -1], dim=-1)
        expected = logps.gather(1, torch.tensor(pair.chosen.response_ids).unsqueeze(1)).sum()
    assert abs(ours.item() - expected.item()) < 1e-4


def test_final_model_is_exported_in_the_training_precision_and_loads_with_transformers(tmp_path):
    """bf16 training (GPU) exports bf16 weights with a config that says so: vLLM and transformers load
    them as they are (half the bytes of the fp32 masters) instead of upcasting."""
    from drift.checkpoint import save_policy
    from drift.parallel import Runtime

    config = tiny_config(tmp_path)
    model = load_model(config.model, dtype=torch.float32, seed=13, vocab_size=len(build_byte_tokenizer()))
    with torch.no_grad():  # values with low bits set, which bf16 rounds away
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    bf16_training = Runtime(0, 1, 0, torch.device("cpu"), torch.bfloat16)
    save_policy(SequenceLogprobModel(model), build_byte_tokenizer(), tmp_path / "model", bf16_training)

    written = load_file(tmp_path / "model" / "model.safetensors")
    assert {tensor.dtype for tensor in written.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype="auto")
    assert reloaded.dtype == torch.bfloat16
    expected = model.state_dict()
    for name, value in reloaded.state_dict().items():
        # round-to-nearest of the fp32 master, exactly what .to(bfloat16) gives
        assert torch.equal(value, expected[name].to(torch.bfloat16)), name
