"""The sampler process (launch/sample.py): samples, rejects and report on disk, reproducible in-process,
and a killed sampler leaves no samples file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from drift.config import SamplerConfig
from drift.console import ON_TERMINAL
from drift.data.prompts import render_prompt_ids
from drift.fingerprint import fingerprint
from drift.model import build_byte_tokenizer
from drift.sampler.process import (
    REJECTS_FILE,
    REPORT_FILE,
    SAMPLES_FILE,
    checkpoint_fingerprint,
    run_sampler,
    sample_seed,
)

# fixtures, shared with the in-process sampler tests: the tiny checkpoint, one torch thread
from tests.unit.sampler.test_sampling import ROW_KEYS, SCRIPT, checkpoint, one_thread, read_jsonl, write_prompts  # noqa: F401, F811

SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def sampler_command(checkpoint: Path, prompts: Path, out_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(SCRIPT), f"checkpoint={checkpoint}", f"prompts={prompts}", f"out_dir={out_dir}",
            "sampler=hf", "max_prompt_length=128", "prompt_format=chat_template", "device=cpu", *overrides]


def test_sampler_process_writes_samples_exits_and_a_rerun_reproduces_them(checkpoint, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 5, long_prompt=True)
    out_dir = tmp_path / "sample"
    # a tiny random model rarely stops within 10 tokens: keep its cut replies (sampler.truncated=keep)
    overrides = ["sampler.seed=3", "sampler.max_new_tokens=10", "sampler.num_samples=2", "sampler.batch_size=4",
                 "sampler.truncated=keep"]
    result = subprocess.run(sampler_command(checkpoint, prompts, out_dir, *overrides), capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env=SUBPROCESS_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([SAMPLES_FILE, REJECTS_FILE, REPORT_FILE])

    samples = read_jsonl(out_dir / SAMPLES_FILE)
    assert [(s["prompt_id"], s["sample_index"]) for s in samples] == [
        (f"case-{i}#guided", index) for i in range(5) for index in (0, 1)]
    tokenizer = build_byte_tokenizer()
    weights = checkpoint_fingerprint(checkpoint)
    messages = {row["prompt_id"]: row["messages"] for row in read_jsonl(prompts)}
    for sample in samples:
        assert set(sample) == ROW_KEYS
        ids, _ = render_prompt_ids(messages[sample["prompt_id"]], tokenizer, max_prompt_tokens=128, keep_last=1)
        assert sample["prompt_hash"] == fingerprint(np.asarray(ids, dtype=np.int64), length=64)
        assert sample["seed"] == sample_seed(3, sample["prompt_id"], sample["sample_index"], sample["attempts"] - 1)
        assert sample["checkpoint_fingerprint"] == weights and sample["backend"] == "hf"
        assert sample["text"] and sample["text"] == sample["text"].strip() and "<|" not in sample["text"]
        assert sample["finish_reason"] in ("eos", "length") and 1 <= sample["num_tokens"] <= 10
    # two samples of one prompt are two draws
    assert samples[0]["text"] != samples[1]["text"]
    rejects = read_jsonl(out_dir / REJECTS_FILE)
    assert [(r["prompt_id"], r["sample_index"], r["reason"]) for r in rejects] == [
        ("too-long#original", 0, "prompt_too_long"), ("too-long#original", 1, "prompt_too_long")]
    assert "over the budget of 128 tokens" in rejects[0]["detail"]
    report = json.loads((out_dir / REPORT_FILE).read_text())
    assert report["samples"] == 10 and report["requested_samples"] == 12 and report["backend"] == "hf"
    assert report["tokens_per_second"] > 0 and report["checkpoint_fingerprint"] == weights

    # a rerun with the same seeds, in-process this time, samples the same replies
    rerun = tmp_path / "rerun"
    run_sampler(checkpoint, prompts, rerun, SamplerConfig(seed=3, max_new_tokens=10, num_samples=2, batch_size=4,
                                                          truncated="keep"),
                max_prompt_length=128, prompt_format="chat_template", device="cpu", progress_bar=False)
    assert read_jsonl(rerun / SAMPLES_FILE) == samples


def test_a_killed_sampler_leaves_no_samples_file(checkpoint, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 48)
    out_dir = tmp_path / "sample"
    out_dir.mkdir()
    # a complete samples file from an earlier run must not pass for this run's
    (out_dir / SAMPLES_FILE).write_text('{"prompt_id": "stale"}\n')
    process = subprocess.Popen(
        sampler_command(checkpoint, prompts, out_dir, "sampler.max_new_tokens=400", "sampler.batch_size=4"),
        # bars show only where a person watches: this pipe stands in for a terminal, since the bar's
        # rate is the sign that generation has started
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**SUBPROCESS_ENV, ON_TERMINAL: "1"},
    )
    generating = threading.Event()

    def watch_progress_bar():
        seen = ""
        while char := process.stderr.read(1):
            seen = seen[-200:] + char
            if "tok/s" in seen:  # the bar's rate appears once the first of 48 samples is done
                generating.set()

    watcher = threading.Thread(target=watch_progress_bar, daemon=True)
    watcher.start()
    try:
        assert generating.wait(timeout=90), "the sampler never showed its progress bar"
        assert process.poll() is None, "the sampler finished before it could be killed; give it more work"
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        watcher.join(timeout=10)
        process.stderr.close()
    assert not (out_dir / SAMPLES_FILE).exists()
    assert not [p.name for p in out_dir.iterdir() if SAMPLES_FILE in p.name]
