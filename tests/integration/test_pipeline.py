"""The whole pipeline on a tiny model under torchrun (2 processes, gloo): warm start + 2 DRIFT
iterations + the held-out evaluation; killed in iteration 2's training and rerun, it ends with the
same weights. The same finished folder then meets the stage contract from the command line: a
changed setting, a backend this machine lacks, a data file in the wrong format are each refused in
one sentence before any work, and the folder stays byte for byte as it was; a kill inside the
evaluation and a rerun give the same results."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "model=tiny", "data=fixture", "method=drift", "method.warmstart_epochs=1", "method.iterations=2", "sampler.max_new_tokens=8", "sampler.truncated=keep",
    "trainer.max_length=3072", "trainer.max_prompt_length=2048", "trainer.lr=1e-3", "trainer.per_device_batch_size=2",
    "trainer.save_every_steps=1", "logging.wandb_mode=disabled", "logging.progress_bar=false",
    "eval.stages=last", "eval.max_new_tokens=8",
]


def _launch(run: Path, *extra: str, nproc: int = 2, wrapper: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """launch/train.py with the test's overrides into the folder ``run``, under torchrun (nproc > 1) or
    alone; ``wrapper``: a script that runs it (kill_after_checkpoint.py STAGE:STEP, kill_during_evaluation.py).
    The runs of one test share an output_dir, so the held-out samples of a checkpoint are drawn once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runner = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)] if nproc > 1 else [sys.executable]
    command = [*runner, *wrapper, "launch/train.py", *OVERRIDES, f"eval.heldout={run.parents[1] / 'heldout.jsonl'}",
               f"output_dir={run.parent}", f"run_name={run.name}", *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) -> the sha256 of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and one killed in iteration 2's training and rerun (from the first's warm start)."""
    root = tmp_path_factory.mktemp("pipeline")
    heldout = (ROOT / "drift/data/fixtures/testbed_heldout.jsonl").read_text().splitlines()
    (root / "heldout.jsonl").write_text("\n".join(heldout[:3]) + "\n")
    run, partial = root / "out" / "pipe", root / "out" / "resumed"
    first = _launch(run)
    assert first.returncode == 0, first.stderr[-3000:]
    # the resumed run starts from the first run's warm start (linked, not trained again): what is
    # tested here is a kill in iteration 2, and a warm start shared under torchrun on the way
    shared = f"method.warmstart_from={run}"
    killed = _launch(partial, shared, wrapper=("tests/kill_after_checkpoint.py", "iter_2:3"))
    assert killed.returncode != 0
    assert (partial / "iter_2/train/checkpoint/trainer_state.json").exists()
    assert not (partial / "iter_2/train/done").exists()
    finished_before = {stage: (partial / stage / "done").stat().st_mtime_ns for stage in ("iter_0/train", "iter_2/sample")}
    again = _launch(partial, shared)
    assert again.returncode == 0, again.stderr[-3000:]
    return run, partial, finished_before


def test_pipeline_under_torchrun_resumes_after_a_kill_in_iteration_two(runs):
    run, partial, finished_before = runs
    for stage in ("iter_0/train", "iter_1/sample", "iter_1/pairs", "iter_1/train", "iter_2/sample", "iter_2/pairs", "iter_2/train"):
        assert (run / stage / "done").exists(), stage
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["stages"]) == ["warmstart", "iter_1", "iter_2"]
    assert list(summary["heldout"]) == ["iter_2"] and summary["heldout"]["iter_2"]["prompts"] == 3
    # DRIFT pairs: the chosen side is the iteration's sample, the rejected side the real DSAT reply
    samples = {json.loads(line)["prompt_id"]: json.loads(line)["text"] for line in (run / "iter_2/sample/samples.jsonl").read_text().splitlines()}
    pairs = [json.loads(line) for line in (run / "iter_2/pairs/pairs.jsonl").read_text().splitlines()]
    assert pairs and all(pair["chosen"] == samples[pair["pair_id"].split(":")[0] + "#guided"] for pair in pairs)

    expected = load_file(run / "iter_2/train/model/model.safetensors")
    actual = load_file(partial / "iter_2/train/model/model.safetensors")
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    # the rerun did not redo finished stages, and the sampler reproduced the same samples
    assert {stage: (partial / stage / "done").stat().st_mtime_ns for stage in finished_before} == finished_before
    assert (partial / "iter_2/sample/samples.jsonl").read_text() == (run / "iter_2/sample/samples.jsonl").read_text()


@pytest.mark.parametrize("overrides, names", [
    (("method.beta=0.5", "trainer.lr=1e-4"), ("stage iter_0/train", "method.beta: 0.1 there, 0.5 here",
                                             "trainer.lr: 0.001 there, 0.0001 here", "resume=retrain", "run_name")),
    (("sampler=vllm", "trainer.device=cpu"), ("sampler=vllm", "trainer.device=cpu")),
    (("data=drift_jsonl", "data.path=data.csv"), ("data.path=", "unsupported file type '.csv'")),
])
def test_a_finished_folder_is_left_as_it_was_by_a_command_it_refuses(runs, tmp_path, overrides, names):
    run, _, _ = runs
    before = _tree(run)
    overrides = [o.replace("data.csv", str(tmp_path / "data.csv")) for o in overrides]
    (tmp_path / "data.csv").write_text("prompt,rejected\nhi,there\n")
    started = time.perf_counter()
    refused = _launch(run, *overrides, nproc=1)
    seconds = time.perf_counter() - started
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: "), refused.stderr[-2000:]
    assert all(name in lines[0] for name in names), lines[0]
    assert "Traceback" not in refused.stderr + refused.stdout
    assert seconds < 5, f"refused after {seconds:.1f} s"
    assert _tree(run) == before


def test_a_kill_inside_the_evaluation_and_a_rerun_give_the_same_results(runs):
    run, _, _ = runs
    copy = run.parent / "evaluated_again"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "evaluate")
    (copy / "summary.json").unlink()
    killed = _launch(copy, nproc=1, wrapper=("tests/kill_during_evaluation.py",))
    assert killed.returncode != 0
    assert not (copy / "evaluate" / "done").exists() and (copy / "evaluate" / "stage.json").exists()
    again = _launch(copy, nproc=1)
    assert again.returncode == 0, again.stderr[-3000:]

    def scores(folder: Path) -> dict:
        """The results, less where the checkpoint sits (the copy is elsewhere)."""
        results = json.loads((folder / "evaluate" / "heldout.json").read_text())
        return {name: {key: value for key, value in result.items() if key != "checkpoint"} for name, result in results.items()}

    assert scores(copy) == scores(run)
