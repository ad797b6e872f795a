"""The one sampler client: a process per run, one reuse rule (weights, prompts, settings)."""

import dataclasses
import json
from pathlib import Path

import pytest

from drift.config import SamplerConfig
from drift.sampler.client import DONE, SamplingJob, request_key, sample, sampler_command


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


def rows(count: int) -> tuple[dict, ...]:
    return tuple({"prompt_id": f"p{i}", "keep_last": 1, "messages": [{"role": "user", "content": f"item {i}"}]}
                 for i in range(count))


def job(checkpoint, out_dir, **sampler) -> SamplingJob:
    settings = SamplerConfig(max_new_tokens=6, batch_size=2, truncated="keep", **sampler)
    return SamplingJob(str(checkpoint), rows(3), out_dir, settings, max_prompt_length=64, device="cpu")


def test_a_finished_request_is_reused_and_any_change_samples_again(checkpoint, tmp_path):
    first = sample(job(checkpoint, tmp_path / "s"))
    assert not first.reused and [r["prompt_id"] for r in first.samples] == ["p0", "p1", "p2"]
    marker = json.loads((tmp_path / "s" / DONE).read_text())
    assert marker["key"] == request_key(job(checkpoint, tmp_path / "s")).record()
    again = sample(job(checkpoint, tmp_path / "s"))
    assert again.reused and again.samples == first.samples and again.report == first.report
    # another setting, other prompts: sampled again (and the marker now names the new request)
    other_seed = sample(job(checkpoint, tmp_path / "s", seed=7))
    assert not other_seed.reused and other_seed.samples != first.samples
    fewer = sample(dataclasses.replace(job(checkpoint, tmp_path / "s", seed=7), prompts=rows(2)))
    assert not fewer.reused and len(fewer.samples) == 2


def test_the_identity_covers_weights_prompts_and_every_setting(checkpoint, tmp_path):
    base = request_key(job(checkpoint, tmp_path))
    assert request_key(job(checkpoint, tmp_path / "elsewhere")) == base  # the folder is not part of it
    assert request_key(job(checkpoint, tmp_path, temperature=0.5)) != base
    assert request_key(dataclasses.replace(job(checkpoint, tmp_path), prompt_format="raw_text")) != base
    changed = tmp_path / "changed"
    changed.mkdir()
    for path in checkpoint.iterdir():
        (changed / path.name).write_bytes(path.read_bytes())
    assert request_key(job(changed, tmp_path)) == base  # same bytes, same weights
    weights = next(changed.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert request_key(job(changed, tmp_path)).inputs["checkpoint"] != base.inputs["checkpoint"]


def test_every_sampler_setting_reaches_the_process_command(checkpoint, tmp_path):
    command = sampler_command(job(checkpoint, tmp_path, dtype="bfloat16"), tmp_path / "prompts.jsonl")
    for field in dataclasses.fields(SamplerConfig):
        if field.name != "backend":
            assert any(word.startswith(f"sampler.{field.name}=") for word in command), field.name
    assert "sampler=hf" in command and "sampler.dtype='bfloat16'" in command
