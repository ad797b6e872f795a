"""The whole pipeline on a tiny model under torchrun (2 processes, gloo): warm start + 2 DRIFT
iterations; killed in iteration 2's training and rerun, it ends with the same weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "model=tiny", "method=drift", "method.warmstart_epochs=1", "method.iterations=2", "sampler.max_new_tokens=8", "sampler.truncated=keep",
    "trainer.max_length=3072", "trainer.max_prompt_length=2048", "trainer.lr=1e-3", "trainer.per_device_batch_size=2",
    "trainer.save_every_steps=1", "logging.wandb_mode=disabled", "logging.progress_bar=false", "run_name=pipe",
]


def _pipeline(output_dir: Path, kill: str = "") -> subprocess.CompletedProcess:
    """The pipeline under torchrun; kill="STAGE:STEP" SIGKILLs every rank after that step's checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    entry = ["tests/kill_after_checkpoint.py", kill, "launch/train.py"] if kill else ["launch/train.py"]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *entry,
        *OVERRIDES, f"output_dir={output_dir}",
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_pipeline_under_torchrun_resumes_after_a_kill_in_iteration_two(tmp_path):
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    first = _pipeline(uninterrupted)
    assert first.returncode == 0, first.stderr[-3000:]
    run = uninterrupted / "pipe"
    for stage in ("iter_0/train", "iter_1/sample", "iter_1/pairs", "iter_1/train", "iter_2/sample", "iter_2/pairs", "iter_2/train"):
        assert (run / stage / "done").exists(), stage
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["stages"]) == ["warmstart", "iter_1", "iter_2"]
    # DRIFT pairs: the chosen side is the iteration's sample, the rejected side the real DSAT reply
    samples = {json.loads(l)["prompt_id"]: json.loads(l)["text"] for l in (run / "iter_2/sample/samples.jsonl").read_text().splitlines()}
    pairs = [json.loads(l) for l in (run / "iter_2/pairs/pairs.jsonl").read_text().splitlines()]
    assert pairs and all(pair["chosen"] == samples[pair["pair_id"].split(":")[0] + "#guided"] for pair in pairs)

    killed = _pipeline(resumed, kill="iter_2:3")
    assert killed.returncode != 0
    partial = resumed / "pipe"
    assert (partial / "iter_2/train/checkpoint/trainer_state.json").exists()
    assert not (partial / "iter_2/train/done").exists()
    finished_before = {stage: (partial / stage / "done").stat().st_mtime_ns for stage in ("iter_0/train", "iter_2/sample")}
    again = _pipeline(resumed)
    assert again.returncode == 0, again.stderr[-3000:]

    expected = load_file(run / "iter_2/train/model/model.safetensors")
    actual = load_file(partial / "iter_2/train/model/model.safetensors")
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    # the rerun did not redo finished stages, and the sampler reproduced the same samples
    assert {stage: (partial / stage / "done").stat().st_mtime_ns for stage in finished_before} == finished_before
    assert (partial / "iter_2/sample/samples.jsonl").read_text() == (run / "iter_2/sample/samples.jsonl").read_text()
