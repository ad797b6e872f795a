"""The main job with adapters, `python launch/train.py model.lora.rank=16`, on the tiny model: warm start
and two DRIFT iterations train one adapter. The final model/ is a plain HF folder that transformers
loads, its adapter/ a PEFT folder that PEFT loads on the base, and the two give the same logits; each
iteration's reference log-probs (the policy at its start: base + the adapter so far) are those of the
previous stage's merged model run as plain weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "model=tiny", "data=fixture", "model.lora.rank=16", "method=drift", "method.warmstart_epochs=1", "method.iterations=2",
    "sampler.max_new_tokens=8", "sampler.truncated=keep", "trainer.max_length=3072", "trainer.max_prompt_length=2048",
    "trainer.lr=1e-3", "trainer.per_device_batch_size=2", "eval.stages=none",
    # fp32: the comparisons below are exact to fp32 rounding (in bf16 the frozen base is its bf16 rounding)
    "trainer.precision=fp32", "logging.wandb_mode=disabled",
    "logging.progress_bar=false", "run_name=lora",
]


def _main_job(output_dir: Path, *extra: str, kill: str = "") -> subprocess.CompletedProcess:
    """The main job; kill="STAGE:STEP" SIGKILLs it right after that step's checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    entry = ["tests/kill_after_checkpoint.py", kill, "launch/train.py"] if kill else ["launch/train.py"]
    return subprocess.run([sys.executable, *entry, *OVERRIDES, *extra, f"output_dir={output_dir}"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("lora_main_job")
    result = _main_job(output_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir / "lora"


def test_main_job_with_lora_hands_off_a_plain_model_and_a_peft_adapter_with_the_same_logits(lora_run):
    run = lora_run
    final = run / "iter_2" / "train" / "model"
    assert json.loads((run / "summary.json").read_text())["model"] == str(final)

    import peft
    from transformers import AutoModelForCausalLM

    # model/ is a plain HF folder: no adapter in it, loaded by transformers alone
    assert not (final / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(final).eval()
    # adapter/ is a PEFT folder naming its base: the run's initial model, the same for every stage
    bases = {json.loads((run / stage / "train" / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
             for stage in ("iter_0", "iter_1", "iter_2")}
    assert bases == {str(run / "initial_model")}
    base = AutoModelForCausalLM.from_pretrained(run / "initial_model")
    adapted = peft.PeftModel.from_pretrained(base, run / "iter_2" / "train" / "adapter").eval()
    ids = torch.randint(3, 250, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain_logits, adapter_logits = plain(ids).logits, adapted(ids).logits
    torch.testing.assert_close(adapter_logits, plain_logits, atol=2e-5, rtol=1e-5)
    with torch.no_grad(), adapted.disable_adapter():
        base_logits = adapted(ids).logits
    assert (base_logits - plain_logits).abs().max() > 1e-3  # the adapter changed the model

    # every stage trained the adapter on: the three stages' adapters all differ
    adapters = [load_file(run / stage / "train" / "adapter" / "adapter_model.safetensors") for stage in ("iter_0", "iter_1", "iter_2")]
    for earlier, later in zip(adapters, adapters[1:]):
        assert sorted(earlier) == sorted(later)
        assert any(not torch.equal(earlier[name], later[name]) for name in earlier)

    # iteration 2's reference (iteration_start) ran base + iteration 1's adapter: its cached log-probs
    # are those of iteration 1's merged model/ as plain weights, through the full-weight path
    from drift.config import ModelConfig
    from drift.data.records import pair_from_row
    from drift.io import read_done, read_jsonl
    from drift.model import load_tokenizer
    from drift.parallel import SequenceLogprobModel, init_runtime
    from drift.reference import ReferenceCache, compute_sequence_logps
    from drift.tokenize import tokenize_pairs

    tokenizer = load_tokenizer(ModelConfig(name="tiny", name_or_path="tiny:llama"), source=str(run / "initial_model"))
    pairs = [pair_from_row(row) for row in read_jsonl(run / "iter_2" / "pairs" / "pairs.jsonl")]
    tokenized, _, _ = tokenize_pairs(pairs, tokenizer, max_length=3072, max_prompt_length=2048, prompt_format="chat_template")
    sequences = [sequence for pair in tokenized for sequence in (pair.chosen, pair.rejected)]
    fingerprint = read_done(run / "iter_2" / "train")["reference_fingerprint"]
    cached = json.loads(ReferenceCache(run / "reference_cache", fingerprint, torch.float32).path.read_text())  # fp32 run
    previous = SequenceLogprobModel(AutoModelForCausalLM.from_pretrained(run / "iter_1" / "train" / "model"), "chunked")
    recomputed = compute_sequence_logps(previous, sequences, init_runtime("cpu", "fp32"), batch_size=4,
                                        pad_id=tokenizer.pad_token_id)
    assert sorted(recomputed) == sorted(sequence.key for sequence in sequences)
    for key, value in recomputed.items():
        assert abs(cached[key] - value) <= 1e-4 * max(1.0, abs(value)), key


def test_a_lora_run_killed_mid_iteration_resumes_to_the_same_adapter_and_model(lora_run, tmp_path):
    # the resumable checkpoint holds the frozen base's shards, the adapter and the adapter's optimizer state
    killed = _main_job(tmp_path, "trainer.save_every_steps=1", kill="iter_1:3")
    assert killed.returncode != 0
    partial = tmp_path / "lora"
    assert (partial / "iter_1/train/checkpoint/trainer_state.json").exists() and not (partial / "iter_1/train/done").exists()
    again = _main_job(tmp_path, "trainer.save_every_steps=1")
    assert again.returncode == 0, again.stderr[-3000:]
    for file in ("adapter/adapter_model.safetensors", "model/model.safetensors"):
        expected, actual = load_file(lora_run / "iter_2/train" / file), load_file(partial / "iter_2/train" / file)
        assert sorted(expected) == sorted(actual)
        for name in expected:
            assert torch.equal(expected[name], actual[name]), (file, name)
