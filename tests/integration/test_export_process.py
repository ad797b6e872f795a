"""The export command run on a tiny checkpoint (through the sampler process), every output file checked
against the fields its harness reads (the schemas: tests/unit/eval/test_export.py's docstring)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from drift.commands import invoke
from tests.unit.eval.test_export import (
    ADVBENCH,
    ADVBENCH_FIELDS,
    ALPACA,
    ALPACA_EVAL_FIELDS,
    TOXIGEN,
    TOXIGEN_FIELDS,
    WILDBENCH,
    WILDBENCH_CONFIGS,
    WILDBENCH_FIELDS,
    check_fields,
    read_jsonl,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, save_tiny_checkpoint) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("run") / "demo" / "iter_2" / "train" / "model")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the sampler process: tiny models run faster on one thread


def export(tmp_path, checkpoint, benchmark, prompts, *extra) -> tuple[Path, dict]:
    out = tmp_path / benchmark
    code = invoke("export", [f"checkpoint={checkpoint}", f"benchmark={benchmark}", f"prompts={prompts}", f"out={out}",
                             "device=cpu", "sampler.max_new_tokens=3", "sampler.seed=5", *extra])
    assert code == 0
    assert (out / "done").exists()
    return out, json.loads((out / "export_report.json").read_text())


def replies_by_prompt(out: Path) -> dict[str, str]:
    return {row["prompt_id"]: row["text"] for row in read_jsonl(out / "sample" / "samples.jsonl")}


def test_export_alpaca_eval_end_to_end(tmp_path, checkpoint):
    import pandas as pd

    out, report = export(tmp_path, checkpoint, "alpaca_eval", ALPACA)
    frame = pd.read_json(out / "model_outputs.json")  # how alpaca_eval loads model_outputs
    check_fields(frame.to_dict(orient="records"), ALPACA_EVAL_FIELDS)
    published = json.loads(ALPACA.read_text())
    assert list(frame["instruction"]) == [r["instruction"] for r in published]
    assert list(frame["dataset"]) == [r["dataset"] for r in published]
    assert set(frame["generator"]) == {"demo-iter_2"}  # the run and stage of the checkpoint
    # each output is the sample drawn for its own instruction
    instruction_of = {row["prompt_id"]: row["messages"][0]["content"] for row in read_jsonl(out / "sample" / "prompts.jsonl")}
    sampled = {instruction_of[pid]: text for pid, text in replies_by_prompt(out).items()}
    assert dict(zip(frame["instruction"], frame["output"])) == sampled and len(sampled) == 5
    generation = report["generation"]
    assert generation["sampler"]["max_new_tokens"] == 3 and generation["sampler"]["seed"] == 5
    assert generation["checkpoint"] == str(checkpoint) and len(generation["checkpoint_fingerprint"]) == 32
    assert report["rows_written"] == 5 and report["empty_outputs"] == 0 and report["aligned_with_input"]


def test_export_wildbench_end_to_end_keeps_every_session_in_place(tmp_path, checkpoint):
    long_question = {"role": "user", "content": "why? " * 60, "language": "English", "redacted": False,
                     "timestamp": None, "toxic": False}
    bench = read_jsonl(WILDBENCH)
    bench.insert(2, {**bench[0], "session_id": "too-long", "conversation_input": [long_question]})
    prompts = tmp_path / "wildbench_v2.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in bench))
    # 120 tokens: the 3-turn session fits only without its first exchange; "too-long" cannot fit at all
    out, report = export(tmp_path, checkpoint, "wildbench", prompts, "max_prompt_length=120", "generator=org/model v1")
    results = json.loads((out / "org_model_v1.json").read_text())
    check_fields(results, WILDBENCH_FIELDS)
    for b, t in zip(bench, results, strict=True):  # what WildBench's eval.py does
        assert b["session_id"] == t["session_id"] and t["generator"] == "org/model v1"
        assert t["chat_history"] == [turn["content"] for turn in b["conversation_input"]]
        assert set(t["configs"]) >= WILDBENCH_CONFIGS and all(isinstance(o, str) for o in t["output"])
    replies = replies_by_prompt(out)
    assert [t["output"] for t in results] == [[replies.get(b["session_id"], "")] for b in bench]
    assert results[2]["output"] == [""] and len(replies) == 4
    rejects = read_jsonl(out / "rejects.jsonl")
    assert [(r["record_id"], r["reason"], r["location"]) for r in rejects] == [
        ("too-long", "prompt_too_long", "wildbench_v2.jsonl:3")]
    assert report["empty_outputs"] == 1 and report["rejects_by_reason"] == {"prompt_too_long": 1}
    assert report["truncated_prompt_ids"] == [bench[1]["session_id"]]
    # model_input is the prompt the model answered: the truncated one holds only the last user turn
    assert results[0]["model_input"].endswith("<|im_start|>assistant\n")
    assert bench[0]["conversation_input"][0]["content"] in results[0]["model_input"]
    assert results[1]["model_input"].count("<|im_start|>user") == 1
    assert "It should ignore case and spaces." in results[1]["model_input"]


def test_export_advbench_and_toxigen_end_to_end(tmp_path, checkpoint):
    out, report = export(tmp_path, checkpoint, "advbench", ADVBENCH, "limit=2")
    rows = json.loads((out / "advbench_outputs.json").read_text())
    check_fields(rows, ADVBENCH_FIELDS)
    with open(ADVBENCH, newline="") as f:
        published = list(csv.DictReader(f))[:2]
    assert [(r["goal"], r["target"]) for r in rows] == [(p["goal"], p["target"]) for p in published]
    assert [r["output"] for r in rows] == [replies_by_prompt(out)[r["id"]] for r in rows]

    out, report = export(tmp_path, checkpoint, "toxigen", TOXIGEN)
    rows = read_jsonl(out / "toxigen_generations.jsonl")
    check_fields(rows, TOXIGEN_FIELDS)
    assert [r["label"] for r in rows] == ["neutral"] * 3 and all(r["target_groups"] == ["women"] for r in rows)
    assert [r["prediction"] for r in rows] == [replies_by_prompt(out)[r["id"]] for r in rows]
    assert report["prompts_sha256"] and report["rejects_by_reason"] == {}
