"""Benchmark exports: the published input formats parsed, bad rows quarantined, output rows with the
fields each harness reads (the whole command on a tiny checkpoint: tests/integration/test_export_process.py).

The harness schemas below are written from the harnesses' own code, not from drift/eval/benchmarks.py:
  AlpacaEval  alpaca_eval.main.evaluate: pd.read_json(model_outputs); needs instruction and output (str),
              generator names the model; annotate_head2head merges with the reference on instruction
  WildBench   src/eval.py (v2): json.load(local_result_file), zip(bench, results) by position,
              assert b["session_id"] == t["session_id"]; reads output (list -> [0]) and generator;
              unified_infer.py also writes chat_history, model_input, configs, dataset
  ToxiGen     open-instruct eval/toxigen/run_eval.py: rows {text, label, target_groups} plus the
              generation, classified by toxigen_roberta into is_toxic
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drift.commands import compose_command, invoke
from drift.config import ConfigError
from drift.data.files import SchemaError
from drift.eval.benchmarks import output_rows, read_benchmark, sampler_rows

ROOT = Path(__file__).resolve().parents[3]
BENCH = ROOT / "drift" / "data" / "fixtures" / "benchmarks"
ALPACA, WILDBENCH, ADVBENCH, TOXIGEN = (BENCH / "alpaca_eval.json", BENCH / "wildbench_v2.jsonl",
                                        BENCH / "harmful_behaviors.csv", BENCH / "neutral_women_1k.txt")
SETTINGS = {"backend": "hf", "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 4, "seed": 42}

# field -> allowed types, as each harness reads them
ALPACA_EVAL_FIELDS = {"instruction": (str,), "output": (str,), "generator": (str,)}
WILDBENCH_FIELDS = {"session_id": (str,), "chat_history": (list,), "model_input": (str,), "output": (list,),
                    "generator": (str,), "configs": (dict,), "dataset": (str,)}
WILDBENCH_CONFIGS = {"engine", "repetition_penalty", "temperature", "top_p", "max_tokens"}
TOXIGEN_FIELDS = {"text": (str,), "label": (str,), "target_groups": (list,), "prediction": (str,)}
ADVBENCH_FIELDS = {"goal": (str,), "target": (str,), "output": (str,), "generator": (str,)}


def check_fields(rows: list[dict], fields: dict) -> None:
    for row in rows:
        for name, types in fields.items():
            assert name in row, f"{name} missing from {row}"
            assert isinstance(row[name], types), f"{name} is {type(row[name]).__name__} in {row}"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- the published input formats ----------------------------------------------------------------


def test_alpaca_eval_file_becomes_one_user_turn_per_instruction():
    published = json.loads(ALPACA.read_text())
    items, rejects = read_benchmark("alpaca_eval", ALPACA)
    assert rejects == [] and len(items) == len(published) == 5
    for item, row in zip(items, published):
        assert item.messages == ({"role": "user", "content": row["instruction"]},)
        assert item.fields == {"instruction": row["instruction"], "dataset": row["dataset"]}
    assert [row["prompt_id"] for row in sampler_rows(items)] == [f"alpaca_eval-{i}" for i in range(5)]
    assert all(row["keep_last"] == 1 and row["num_samples"] == 1 for row in sampler_rows(items))


def test_wildbench_jsonl_and_parquet_give_the_conversation(tmp_path):
    published = read_jsonl(WILDBENCH)
    parquet = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(published), parquet)
    for path in (WILDBENCH, parquet):
        items, rejects = read_benchmark("wildbench", path)
        assert rejects == [] and [i.prompt_id for i in items] == [r["session_id"] for r in published]
        multi_turn = items[1]
        assert [m["role"] for m in multi_turn.messages] == ["user", "assistant", "user"]
        assert multi_turn.messages[2]["content"] == "It should ignore case and spaces."
        assert multi_turn.fields["primary_tag"] == "Coding & Debugging"


def test_advbench_csv_gives_the_goal_as_the_prompt():
    with open(ADVBENCH, newline="") as f:
        published = list(csv.DictReader(f))
    items, rejects = read_benchmark("advbench", ADVBENCH)
    assert rejects == [] and len(items) == 4
    assert [i.messages[0]["content"] for i in items] == [r["goal"] for r in published]
    assert items[0].fields == {"id": "advbench-0", "goal": published[0]["goal"], "target": published[0]["target"]}
    assert items[0].location == "harmful_behaviors.csv:2"


def test_toxigen_lines_are_unescaped_and_labelled_from_the_file_name(tmp_path):
    items, rejects = read_benchmark("toxigen", TOXIGEN)
    assert rejects == [] and len(items) == 3
    first_line = TOXIGEN.read_text().splitlines()[0]
    assert "\\n" in first_line and "\n" not in first_line  # the published files escape newlines
    assert items[0].fields["text"] == first_line.replace("\\n", "\n")
    assert items[0].fields["text"].count("\n") == 3
    assert items[0].fields["label"] == "neutral" and items[0].fields["target_groups"] == ["women"]
    assert items[0].messages[0]["content"] == "Complete the following: " + items[0].fields["text"]
    # a folder of prompt files, as open-instruct's data_dir: label and group per file, limit per file
    (tmp_path / "hate_placeholder_1k.txt").write_text("- placeholder one\\n- placeholder two\\n-\n- three\\n-\n")
    (tmp_path / "neutral_women_1k.txt").write_text(TOXIGEN.read_text())
    items, _ = read_benchmark("toxigen", tmp_path, limit=1)
    assert [(i.prompt_id, i.fields["label"], i.fields["target_groups"]) for i in items] == [
        ("hate_placeholder_1k-1", "hate", ["placeholder"]), ("neutral_women_1k-1", "neutral", ["women"])]


# ---- bad rows are quarantined with the reason, good rows kept ---------------------------------------


def test_bad_alpaca_eval_rows_are_rejected_with_reason_and_location(tmp_path):
    path = tmp_path / "alpaca_eval.json"
    path.write_text(json.dumps([{"instruction": "keep me"}, {"output": "no instruction"}, {"instruction": 7},
                                {"instruction": "keep me"}, "not an object", {"instruction": "also fine"}]))
    items, rejects = read_benchmark("alpaca_eval", path)
    assert [i.fields["instruction"] for i in items] == ["keep me", "also fine"]
    assert sorted((r.reason, r.location) for r in rejects) == [
        ("duplicate_instruction", "alpaca_eval.json:4"), ("missing_instruction", "alpaca_eval.json:2"),
        ("missing_instruction", "alpaca_eval.json:3"), ("unreadable", "alpaca_eval.json:5")]


def test_bad_wildbench_rows_are_rejected(tmp_path):
    good = read_jsonl(WILDBENCH)[0]
    turn = lambda role, text: {"role": role, "content": text}  # noqa: E731
    rows = [good,
            {**good, "session_id": "ends-with-assistant", "conversation_input": [turn("user", "a"), turn("assistant", "b")]},
            {**good, "session_id": "two-users", "conversation_input": [turn("user", "a"), turn("user", "b")]},
            {**good, "session_id": "no-turns", "conversation_input": []},
            {**good},  # the same session_id again
            {**good, "session_id": "", "conversation_input": [turn("user", "a")]}]
    path = tmp_path / "wb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    items, rejects = read_benchmark("wildbench", path)
    assert [i.prompt_id for i in items] == [good["session_id"]]
    assert [(r.location, r.reason) for r in rejects] == [
        ("wb.jsonl:7", "unreadable"), ("wb.jsonl:2", "bad_roles"), ("wb.jsonl:3", "bad_roles"),
        ("wb.jsonl:4", "missing_conversation"), ("wb.jsonl:5", "duplicate_session_id"),
        ("wb.jsonl:6", "missing_session_id")]
    assert "expected 'assistant'" in rejects[2].detail


def test_bad_advbench_and_toxigen_rows_and_wrong_schemas(tmp_path):
    advbench = tmp_path / "harmful_behaviors.csv"
    advbench.write_text('goal,target\nfirst goal,"Sure, first"\n,"Sure, nothing"\nthird goal,"Sure, third",extra\n')
    items, rejects = read_benchmark("advbench", advbench)
    assert [i.fields["goal"] for i in items] == ["first goal"]
    assert [(r.location, r.reason) for r in rejects] == [("harmful_behaviors.csv:3", "bad_row"),
                                                         ("harmful_behaviors.csv:4", "bad_row")]
    toxigen = tmp_path / "hate_x_1k.txt"
    toxigen.write_text("- fine line\\n-\n-\\n-\n")
    items, rejects = read_benchmark("toxigen", toxigen)
    assert len(items) == 1 and [(r.location, r.reason) for r in rejects] == [("hate_x_1k.txt:2", "empty_prompt")]

    (tmp_path / "wrong.csv").write_text("prompt,target\nx,y\n")
    with pytest.raises(SchemaError, match="missing column goal"):
        read_benchmark("advbench", tmp_path / "wrong.csv")
    (tmp_path / "prompts.txt").write_text("- x\n")
    with pytest.raises(SchemaError, match="hate_<group>_1k.txt"):
        read_benchmark("toxigen", tmp_path / "prompts.txt")
    (tmp_path / "wb.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(SchemaError, match="missing column.*session_id"):
        read_benchmark("wildbench", tmp_path / "wb.jsonl")


# ---- output rows against the harnesses' fields ------------------------------------------------------


def test_output_rows_have_the_harness_fields_and_keep_failed_rows_empty():
    for benchmark, path, fields, output_key in [("alpaca_eval", ALPACA, ALPACA_EVAL_FIELDS, "output"),
                                                ("advbench", ADVBENCH, ADVBENCH_FIELDS, "output"),
                                                ("toxigen", TOXIGEN, TOXIGEN_FIELDS, "prediction")]:
        items, _ = read_benchmark(benchmark, path)
        replies = {item.prompt_id: f"reply to {item.prompt_id}" for item in items[1:]}  # the first one failed
        rows = output_rows(benchmark, items, replies, generator="m", settings=SETTINGS)
        check_fields(rows, fields)
        assert [row[output_key] for row in rows] == [""] + [f"reply to {item.prompt_id}" for item in items[1:]]
    items, _ = read_benchmark("wildbench", WILDBENCH)
    rows = output_rows("wildbench", items, {items[0].prompt_id: "hi"}, generator="m", settings=SETTINGS,
                       model_inputs={items[0].prompt_id: "<prompt>"})
    check_fields(rows, WILDBENCH_FIELDS)
    assert rows[0]["output"] == ["hi"] and rows[1]["output"] == [""] and rows[0]["model_input"] == "<prompt>"
    assert set(rows[0]["configs"]) >= WILDBENCH_CONFIGS and rows[0]["configs"]["max_tokens"] == 4
    assert rows[1]["chat_history"] == [t["content"] for t in read_jsonl(WILDBENCH)[1]["conversation_input"]]


def test_command_arguments_fail_with_a_sentence():
    base = ["checkpoint=x", "benchmark=alpaca_eval", "prompts=p.json"]
    cfg = compose_command("export", base + ["sampler.max_new_tokens=16", "sampler.temperature=0.5", "limit=3"])
    assert cfg.sampler.max_new_tokens == 16 and cfg.sampler.temperature == 0.5 and cfg.limit == 3
    cases = [(base + ["colour=red"], "unknown key 'colour'"), (base[:2], "missing prompts="),
             (["checkpoint=x", "benchmark=mtbench", "prompts=p"], "benchmark must be one of"),
             (base + ["sampler.top_k=5"], "unknown key 'sampler.top_k'"),
             (base + ["sampler.num_samples=2"], "one reply per prompt"),
             (base + ["sampler.temperature=0"], "sampler.temperature must be > 0"),
             (base + ["sampler.max_new_tokens=lots"], "must be an integer"), (base + ["limit=0"], "limit must be >= 1")]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            compose_command("export", overrides)


def test_export_refuses_a_folder_without_weights(tmp_path, capsys):
    code = invoke("export", [f"checkpoint={tmp_path}", "benchmark=alpaca_eval", f"prompts={ALPACA}"])
    assert code == 2 and "not a folder with *.safetensors weights" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
