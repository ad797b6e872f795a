"""Answer a benchmark's prompts with a checkpoint and write the file the benchmark's harness reads.

  python launch/analyze.py export checkpoint=runs/drift_smollm2_fixture/iter_2/train/model \\
      benchmark=alpaca_eval prompts=alpaca_eval.json [out=DIR] [generator=NAME] [limit=N] \\
      [max_prompt_length=1024] [prompt_format=chat_template] [device=auto] [trust_remote_code=false] \\
      [sampler=hf|vllm] [sampler.max_new_tokens=512 sampler.temperature=0.7 ...]

Generation runs in the sampler process (launch/sample.py, as the pipeline runs it), so vLLM on GPU,
HF on CPU and per-prompt seeding are the same as in training. The folder ``out`` (default
exports/<generator>/<benchmark>) gets:

  <the harness's file>   model_outputs.json | <generator>.json | advbench_outputs.json | toxigen_generations.jsonl
  rejects.jsonl          bad input rows and failed generations, each with its reason and location
  export_report.json     input file and its sha256, checkpoint and its fingerprint, every sampler
                         setting, counts, truncated prompts, the harness command
  sample/                what the sampler read and wrote (prompts.jsonl; per-sample seed, finish reason, tokens)
  done                   written last
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from drift.config import ConfigError, ModelConfig, SamplerConfig
from drift.data.files import SchemaError, write_jsonl_atomic, write_text_atomic
from drift.data.records import Rejected
from drift.export import BENCHMARKS, default_generator, output_file_name, output_rows, read_benchmark, sampler_rows

USAGE = ("python launch/analyze.py export checkpoint=PATH benchmark=alpaca_eval|wildbench|advbench|toxigen "
         "prompts=FILE [out=DIR] [generator=NAME] [limit=N] [max_prompt_length=N] [prompt_format=chat_template|raw_text] "
         "[device=auto|cpu|cuda] [trust_remote_code=false] [sampler=hf|vllm] [sampler.KEY=VALUE ...]")
DEFAULTS = {"checkpoint": None, "benchmark": None, "prompts": None, "out": None, "generator": None, "limit": None,
            "max_prompt_length": "1024", "prompt_format": "chat_template", "device": "auto",
            "trust_remote_code": "false", "sampler": "hf"}
HARNESS_COMMANDS = {
    "alpaca_eval": "alpaca_eval evaluate --model_outputs {file}   # tatsu-lab/alpaca_eval, AlpacaEval 2 by default",
    "wildbench": ("python src/eval.py --action eval --mode score --local_result_file {file} ...   "
                  "# allenai/WildBench, or copy to result_dirs/wild_bench_v2/"),
    "advbench": "score `output` against `goal` with your refusal / harm classifier (AdvBench ships no scorer)",
    "toxigen": "classify `prediction` with toxigen_roberta (open-instruct eval/toxigen scoring; it adds is_toxic)",
}


class ExportError(ValueError):
    """Bad arguments or inputs; the message names the input and the fix."""


# ---- arguments ----------------------------------------------------------------------------------


def parse_overrides(overrides: list[str]) -> tuple[dict, SamplerConfig]:
    args, sampler_values = dict(DEFAULTS), {}
    sampler_fields = {f.name: f for f in dataclasses.fields(SamplerConfig)}
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ExportError(f"{override!r} is not key=value; usage: {USAGE}")
        if key.startswith("sampler."):
            name = key.removeprefix("sampler.")
            if name not in sampler_fields or name == "backend":
                known = ", ".join(f"sampler.{n}" for n in sampler_fields if n != "backend")
                raise ExportError(f"unknown key {key!r}; sampler keys: {known} (pick the backend with sampler=hf|vllm)")
            sampler_values[name] = value
        elif key in DEFAULTS:
            args[key] = value
        else:
            raise ExportError(f"unknown key {key!r}; known keys: {', '.join(DEFAULTS)}, sampler.*")
    for key in ("checkpoint", "benchmark", "prompts"):
        if not args[key]:
            raise ExportError(f"missing {key}=...; usage: {USAGE}")
    if args["benchmark"] not in BENCHMARKS:
        raise ExportError(f"benchmark must be one of {', '.join(BENCHMARKS)}, got {args['benchmark']!r}")
    if args["trust_remote_code"] not in ("true", "false"):
        raise ExportError(f"trust_remote_code must be true or false, got {args['trust_remote_code']!r}")
    for key in ("limit", "max_prompt_length"):
        if args[key] is not None:
            try:
                args[key] = int(args[key])
            except ValueError:
                raise ExportError(f"{key} must be an integer, got {args[key]!r}") from None
            if args[key] < 1:
                raise ExportError(f"{key} must be >= 1, got {args[key]}")
    return args, _sampler_config(args["sampler"], sampler_values)


def _sampler_config(backend: str, values: dict[str, str]) -> SamplerConfig:
    from drift.sampler.process import sampler_config_from_text

    try:
        # an export is scored by its harness as written: a reply cut at max_new_tokens is still the
        # model's answer (sampler.truncated=drop would leave it empty), unless the user says otherwise
        config = sampler_config_from_text({"backend": backend, "truncated": "keep", **values})
    except ConfigError as error:
        raise ExportError(str(error)) from None
    if config.num_samples != 1:
        raise ExportError(f"an export writes one reply per prompt; sampler.num_samples must be 1, got {config.num_samples}")
    return config


# ---- the export ---------------------------------------------------------------------------------


def resolve_checkpoint(checkpoint: str) -> str:
    """A folder with safetensors weights, or embedded:smollm2 (dequantized once and cached)."""
    from drift.model import EMBEDDED_PREFIX, resolve_source

    if checkpoint.startswith(EMBEDDED_PREFIX):
        return resolve_source(ModelConfig(name="policy", name_or_path=checkpoint))
    folder = Path(checkpoint)
    if not folder.is_dir() or not any(folder.glob("*.safetensors")):
        raise ExportError(f"checkpoint {checkpoint} is not a folder with *.safetensors weights (an HF folder such as "
                          "runs/<run>/iter_<k>/train/model, or embedded:smollm2)")
    return str(folder)


def render_prompts(items, tokenizer, *, max_prompt_length: int, prompt_format: str) -> tuple[dict[str, str], list[str]]:
    """Each prompt as the model sees it (WildBench records it as model_input) and the ids of prompts that
    lost turns to fit; prompts that cannot fit at all are left to the sampler, which rejects them."""
    from drift.data.prompts import PromptTooLong, render_prompt_ids

    texts, truncated = {}, []
    for item in items:
        try:
            ids, was_truncated = render_prompt_ids(item.messages, tokenizer, max_prompt_tokens=max_prompt_length,
                                                   prompt_format=prompt_format, keep_last=1)
        except PromptTooLong:
            continue
        except ValueError as error:
            raise ExportError(f"prompt {item.prompt_id} ({item.location}): {error}") from None
        texts[item.prompt_id] = tokenizer.decode(ids)
        if was_truncated:
            truncated.append(item.prompt_id)
    return texts, truncated


def sample(checkpoint: str, prompt_rows: list[dict], out_dir: Path, sampler: SamplerConfig, args: dict) -> dict:
    from drift.sampler.client import SamplingJob, sample as run_sampling

    return run_sampling(SamplingJob(
        checkpoint, tuple(prompt_rows), out_dir, sampler, max_prompt_length=args["max_prompt_length"],
        prompt_format=args["prompt_format"], device=args["device"], trust_remote_code=args["trust_remote_code"] == "true",
    ), label="export").report


def run_export(args: dict, sampler: SamplerConfig) -> dict:
    from drift.model import load_tokenizer
    from drift.pipeline import read_jsonl

    started = time.perf_counter()
    benchmark, prompts_path = args["benchmark"], Path(args["prompts"])
    checkpoint = resolve_checkpoint(args["checkpoint"])
    generator = args["generator"] or default_generator(checkpoint)
    out_dir = Path(args["out"] or Path("exports") / generator / benchmark)
    output_path = out_dir / output_file_name(benchmark, generator)
    try:
        items, rejects = read_benchmark(benchmark, prompts_path, limit=args["limit"])
    except (SchemaError, FileNotFoundError) as error:
        raise ExportError(str(error)) from None
    if not items:
        raise ExportError(f"{prompts_path}: no usable rows ({len(rejects)} rejected); nothing to export")
    # a killed export must not leave an earlier run's files looking finished
    for stale in (out_dir / "done", output_path):
        stale.unlink(missing_ok=True)

    tokenizer = load_tokenizer(ModelConfig(name="policy", name_or_path=checkpoint,
                                           trust_remote_code=args["trust_remote_code"] == "true"), source=checkpoint)
    model_inputs, truncated = render_prompts(items, tokenizer, max_prompt_length=args["max_prompt_length"],
                                             prompt_format=args["prompt_format"])
    sampling = sample(checkpoint, sampler_rows(items), out_dir / "sample", sampler, args)

    location = {item.prompt_id: item.location for item in items}
    replies = {row["prompt_id"]: row["text"] for row in read_jsonl(out_dir / "sample" / "samples.jsonl")}
    failed = [Rejected(row["prompt_id"], row["reason"], row["detail"], location[row["prompt_id"]])
              for row in read_jsonl(out_dir / "sample" / "rejects.jsonl")]
    rows = output_rows(benchmark, items, replies, generator=generator, settings=sampling["sampler"],
                       model_inputs=model_inputs)
    all_rejects = rejects + failed
    report = {
        "benchmark": benchmark,
        "output_file": str(output_path),
        "harness": HARNESS_COMMANDS[benchmark].format(file=output_path),
        "generator": generator,
        "prompts_file": str(prompts_path.resolve()),
        "prompts_sha256": _sha256(prompts_path),
        "limit": args["limit"],
        "rows_written": len(rows),
        "rows_with_reply": sum(item.prompt_id in replies for item in items),
        "empty_outputs": sum(item.prompt_id not in replies for item in items),
        "input_rows_rejected": len(rejects),
        # WildBench's eval zips outputs with the bench by position: a dropped input row shifts every row after it
        "aligned_with_input": not rejects,
        "rejects_by_reason": dict(sorted(Counter(r.reason for r in all_rejects).items())),
        "truncated_prompts": len(truncated),
        "truncated_prompt_ids": truncated,
        "generation": {
            "checkpoint": sampling["checkpoint"],
            "checkpoint_fingerprint": sampling["checkpoint_fingerprint"],
            "backend": sampling["backend"],
            "max_prompt_length": sampling["max_prompt_length"],
            "prompt_format": sampling["prompt_format"],
            "stop_token_ids": sampling["stop_token_ids"],
            "sampler": sampling["sampler"],
        },
        "sampling_report": sampling,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if output_path.suffix == ".jsonl":
        write_jsonl_atomic(output_path, rows)
    else:
        write_text_atomic(output_path, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    write_jsonl_atomic(out_dir / "rejects.jsonl", [asdict(r) for r in all_rejects])
    write_text_atomic(out_dir / "export_report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "done").write_text(json.dumps({"rows_written": len(rows), "rejected": len(all_rejects)}) + "\n")
    return report


def _sha256(path: Path) -> str:
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def format_report(report: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in report["rejects_by_reason"].items()) or "none"
    lines = [
        f"{report['benchmark']}: wrote {report['rows_written']} rows to {report['output_file']} "
        f"({report['rows_with_reply']} answered, {report['empty_outputs']} empty); rejected: {reasons}",
        f"generator {report['generator']}, checkpoint {report['generation']['checkpoint']} "
        f"({report['generation']['checkpoint_fingerprint']}), sampler {json.dumps(report['generation']['sampler'])}",
    ]
    if report["truncated_prompts"]:
        lines.append(f"warning: {report['truncated_prompts']} prompts lost their oldest turns to fit "
                     f"max_prompt_length={report['generation']['max_prompt_length']} (ids in export_report.json)")
    if not report["aligned_with_input"]:
        lines.append(f"warning: {report['input_rows_rejected']} input rows were unusable (rejects.jsonl); the output "
                     "has fewer rows than the benchmark, which position-matched harnesses (WildBench) refuse")
    lines.append(f"next: {report['harness']}")
    return "\n".join(lines)


def main(overrides: list[str]) -> int:
    try:
        args, sampler = parse_overrides(overrides)
        report = run_export(args, sampler)
    except (ExportError, RuntimeError) as error:
        print(f"export: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0
