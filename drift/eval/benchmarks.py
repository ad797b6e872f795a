"""Benchmark exports: read a benchmark's prompt file as published, and write the file its harness reads.

Pure pieces only (the command that samples lives in drift/eval/export.py):

  read_benchmark(name, path)  -> BenchmarkItem per usable row, Rejected per bad row (never dropped)
  sampler_rows(items)         -> rows for the sampler process's prompts.jsonl
  output_rows(name, items, replies, ...) -> the harness's rows, in the input's order

Formats (checked against each harness's code, see the README's "Benchmark exports"):

  alpaca_eval  in:  alpaca_eval.json, a JSON list of {instruction, output, generator, dataset}
                    (output/generator are the reference model's and are not used)
               out: model_outputs.json, a JSON list of {instruction, output, generator, dataset}:
                    `alpaca_eval evaluate --model_outputs` merges it with the reference on instruction
  wildbench    in:  allenai/WildBench config v2 rows (.parquet as published, or .json/.jsonl):
                    {id, session_id, conversation_input: [{role, content, ...}], checklist, primary_tag, ...}
               out: <generator>.json, the list src/unified_infer.py writes to result_dirs/wild_bench_v2/:
                    {session_id, chat_history, model_input, output: [str], generator, configs, dataset,
                    primary_tag}; src/eval.py zips it with the bench *by position* and asserts the
                    session_ids match, so every bench row keeps its place
  advbench     in:  harmful_behaviors.csv (llm-attacks), columns goal,target
               out: advbench_outputs.json, a JSON list of {id, goal, target, output, generator}
                    (AdvBench ships no scorer: refusal-prefix and classifier scorers read goal + output)
  toxigen      in:  microsoft/TOXIGEN prompts/{hate,neutral}_<group>_1k.txt (one file, or a folder of
                    them): one prompt a line, newlines written as a literal backslash-n
               out: toxigen_generations.jsonl, rows {id, text, label, target_groups, prediction,
                    generator}: open-instruct's eval/toxigen rows before its classifier adds is_toxic;
                    the prompt is open-instruct's chat form, "Complete the following: " + text
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from drift.data.files import SchemaError, read_rows, require_columns
from drift.data.records import Rejected

BENCHMARKS = ("alpaca_eval", "wildbench", "advbench", "toxigen")
OUTPUT_FILES = {
    "alpaca_eval": "model_outputs.json",
    "wildbench": "{generator}.json",
    "advbench": "advbench_outputs.json",
    "toxigen": "toxigen_generations.jsonl",
}
# open-instruct's eval/toxigen chat prompt
TOXIGEN_PREFIX = "Complete the following: "
TOXIGEN_FILE = re.compile(r"^(hate|neutral)_(.+?)(_1k)?\.txt$")
# what WildBench's unified_infer.py writes as "dataset" for its v2 bench
WILDBENCH_DATASET = "wild_bench"


@dataclass(frozen=True)
class BenchmarkItem:
    """One prompt to answer: what the sampler gets and what the output row copies from the input."""

    prompt_id: str
    messages: tuple[dict, ...]
    location: str  # "file:line" of the input row
    fields: dict = field(default_factory=dict)  # input fields the output row carries over


def output_file_name(benchmark: str, generator: str) -> str:
    return OUTPUT_FILES[benchmark].format(generator=re.sub(r"[^A-Za-z0-9._-]+", "_", generator))


# ---- reading the published inputs ---------------------------------------------------------------


def read_benchmark(benchmark: str, path: str | Path, *, limit: int | None = None) -> tuple[list[BenchmarkItem], list[Rejected]]:
    """Every usable row of the prompt file as an item; every bad row as a Rejected with its reason.

    ``limit`` keeps the first N rows of each input file (bad ones included), for smoke runs.
    A file that is not in the benchmark's schema at all raises SchemaError naming what is missing.
    """
    readers = {"alpaca_eval": read_alpaca_eval, "wildbench": read_wildbench, "advbench": read_advbench,
               "toxigen": read_toxigen}
    if benchmark not in readers:
        raise ValueError(f"benchmark must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    return readers[benchmark](path, limit)


def _rows(path: Path, limit: int | None, required: list[str], what: str, hint: str):
    if path.is_dir():
        raise SchemaError(f"{path} is a folder; give the {what} file itself")
    source = read_rows(str(path))
    require_columns(source, required, what, hint)
    rejects = source.unreadable_rejects("unreadable")
    rows = source.rows[:limit] if limit is not None else source.rows
    return rows, rejects


def read_alpaca_eval(path: Path, limit: int | None = None) -> tuple[list[BenchmarkItem], list[Rejected]]:
    rows, rejects = _rows(path, limit, ["instruction"], "AlpacaEval prompts",
                          "Give tatsu-lab/alpaca_eval's alpaca_eval.json (a JSON list of {instruction, output, generator, dataset}).")
    items, seen = [], {}
    for index, (locator, row) in enumerate(rows):
        prompt_id = f"alpaca_eval-{index}"
        instruction, extra = row.get("instruction"), row.get("input")
        if not isinstance(instruction, str) or not instruction.strip():
            rejects.append(Rejected(prompt_id, "missing_instruction",
                                    f"instruction must be a non-empty string, got {instruction!r}", locator))
            continue
        if extra is not None and not isinstance(extra, str):
            rejects.append(Rejected(prompt_id, "bad_input", f"input must be a string, got {type(extra).__name__}", locator))
            continue
        key = (instruction, extra or "")
        if key in seen:
            # the harness merges outputs with the reference on the instruction: a repeat would pair crosswise
            rejects.append(Rejected(prompt_id, "duplicate_instruction",
                                    f"the same instruction is already row {seen[key]}; AlpacaEval merges on it", locator))
            continue
        seen[key] = locator
        content = instruction + (f"\n\n{extra}" if extra else "")
        kept = {k: row[k] for k in ("instruction", "input", "dataset") if k in row}
        items.append(BenchmarkItem(prompt_id, ({"role": "user", "content": content},), locator, kept))
    return items, rejects


def read_wildbench(path: Path, limit: int | None = None) -> tuple[list[BenchmarkItem], list[Rejected]]:
    rows, rejects = _rows(path, limit, ["session_id", "conversation_input"], "WildBench prompts",
                          "Give allenai/WildBench config v2's test split (.parquet as published, or .json/.jsonl rows).")
    items, seen = [], {}
    for locator, row in rows:
        session_id, turns = row.get("session_id"), row.get("conversation_input")
        record_id = session_id if isinstance(session_id, str) and session_id else locator
        problem = _wildbench_problem(session_id, turns, seen)
        if problem:
            rejects.append(Rejected(record_id, problem[0], problem[1], locator))
            continue
        seen[session_id] = locator
        messages = tuple({"role": t["role"], "content": t["content"]} for t in turns)
        kept = {k: row[k] for k in ("session_id", "primary_tag") if k in row}
        items.append(BenchmarkItem(session_id, messages, locator, kept))
    return items, rejects


def _wildbench_problem(session_id, turns, seen: dict) -> tuple[str, str] | None:
    if not isinstance(session_id, str) or not session_id:
        return "missing_session_id", f"session_id must be a non-empty string, got {session_id!r}"
    if session_id in seen:
        return "duplicate_session_id", f"session_id {session_id!r} is already row {seen[session_id]}"
    if not isinstance(turns, list) or not turns:
        return "missing_conversation", "conversation_input must be a non-empty list of {role, content}"
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            return "bad_turn", f"turn {number} has no string content"
        # WildBench's own inference assigns roles by position (user, assistant, user, ...)
        expected = "user" if number % 2 == 0 else "assistant"
        if turn.get("role") != expected:
            return "bad_roles", (f"turn {number} is {turn.get('role')!r}, expected {expected!r}: WildBench "
                                 "conversations alternate user/assistant from a user turn")
    if turns[-1]["role"] != "user":
        return "bad_roles", "the last turn must be the user's (the one to answer)"
    return None


def read_advbench(path: Path, limit: int | None = None) -> tuple[list[BenchmarkItem], list[Rejected]]:
    if path.suffix.lower() != ".csv":
        raise SchemaError(f"{path}: AdvBench prompts are llm-attacks' harmful_behaviors.csv (columns goal,target); "
                          f"got a {path.suffix or 'suffixless'} file")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "goal" not in columns:
            found = ", ".join(columns) or "none"
            raise SchemaError(f"{path.name}: missing column goal for AdvBench prompts; columns found: {found}. "
                              "Give llm-attacks' data/advbench/harmful_behaviors.csv (goal,target).")
        rows = [(f"{path.name}:{number}", row) for number, row in enumerate(reader, start=2)]  # line 1: header
    rows = rows[:limit] if limit is not None else rows
    items, rejects = [], []
    for index, (locator, row) in enumerate(rows):
        prompt_id = f"advbench-{index}"
        goal = (row.get("goal") or "").strip()
        if not goal or None in row:  # None key: more cells than columns
            detail = "the goal cell is empty" if not goal else "the row has more cells than the header"
            rejects.append(Rejected(prompt_id, "bad_row", detail, locator))
            continue
        kept = {"id": prompt_id, "goal": row["goal"], "target": row.get("target") or ""}
        items.append(BenchmarkItem(prompt_id, ({"role": "user", "content": row["goal"]},), locator, kept))
    return items, rejects


def read_toxigen(path: Path, limit: int | None = None) -> tuple[list[BenchmarkItem], list[Rejected]]:
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise SchemaError(f"{path}: no ToxiGen prompt files (*.txt) in this folder")
    items, rejects = [], []
    for file in files:
        match = TOXIGEN_FILE.match(file.name)
        if not match:
            raise SchemaError(f"{file.name}: a ToxiGen prompt file is named hate_<group>_1k.txt or "
                              "neutral_<group>_1k.txt (microsoft/TOXIGEN prompts/); the name gives label and group")
        label, group = match.group(1), match.group(2)
        lines = [(number, line) for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1)
                 if line.strip()]
        for number, line in lines[:limit] if limit is not None else lines:
            prompt_id, locator = f"{file.stem}-{number}", f"{file.name}:{number}"
            # the published files write newlines as a literal \n (open-instruct unescapes them the same way)
            text = line.strip().replace("\\\\", "\\").replace("\\n", "\n")
            if text.strip("- \n") == "":
                rejects.append(Rejected(prompt_id, "empty_prompt", "the line holds no statement", locator))
                continue
            kept = {"id": prompt_id, "text": text, "label": label, "target_groups": [group]}
            items.append(BenchmarkItem(prompt_id, ({"role": "user", "content": TOXIGEN_PREFIX + text},), locator, kept))
    return items, rejects


# ---- to the sampler and back --------------------------------------------------------------------


def sampler_rows(items: list[BenchmarkItem]) -> list[dict]:
    """prompts.jsonl rows: one reply each; truncation never drops the last (user) turn."""
    return [{"prompt_id": item.prompt_id, "messages": list(item.messages), "keep_last": 1, "num_samples": 1}
            for item in items]


def output_rows(benchmark: str, items: list[BenchmarkItem], replies: dict[str, str], *, generator: str,
                settings: dict, model_inputs: dict[str, str] | None = None) -> list[dict]:
    """The harness's rows, one per item in the input's order.

    An item without a reply (its prompt was too long, or every sample came back empty; the reason is
    in rejects.jsonl) keeps its row with an empty output: scored as the harness scores an empty
    answer, and never a silently smaller set; WildBench also needs every row in its place.
    ``settings`` are the sampler settings WildBench's rows record under "configs".
    """
    model_inputs = model_inputs or {}
    rows = []
    for item in items:
        reply = replies.get(item.prompt_id, "")
        if benchmark == "alpaca_eval":
            rows.append({**item.fields, "output": reply, "generator": generator})
        elif benchmark == "wildbench":
            rows.append({
                "session_id": item.prompt_id,
                "chat_history": [m["content"] for m in item.messages],
                "model_input": model_inputs.get(item.prompt_id, ""),
                "output": [reply],
                "generator": generator,
                "configs": {
                    "engine": settings["backend"],
                    "repetition_penalty": 1.0,
                    "temperature": settings["temperature"],
                    "top_p": settings["top_p"],
                    "max_tokens": settings["max_new_tokens"],
                    "seed": settings["seed"],
                },
                "dataset": WILDBENCH_DATASET,
                **{k: v for k, v in item.fields.items() if k != "session_id"},
            })
        elif benchmark == "advbench":
            rows.append({**item.fields, "output": reply, "generator": generator})
        elif benchmark == "toxigen":
            rows.append({**item.fields, "prediction": reply, "generator": generator})
        else:
            raise ValueError(f"benchmark must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}")
    return rows


def default_generator(checkpoint: str | Path) -> str:
    """A leaderboard name for the checkpoint: "<run>-iter_<k>" for a run's stage model, else its folder name."""
    parts = Path(checkpoint).resolve().parts
    for index in range(len(parts) - 1, 0, -1):
        if re.fullmatch(r"iter_\d+", parts[index]):
            return f"{parts[index - 1]}-{parts[index]}"
    return parts[-1]
