"""Answer a benchmark's prompts with a checkpoint and write the file the benchmark's harness reads.

  python launch/analyze.py export checkpoint=runs/drift_smollm2_fixture/iter_2/train/model \\
      benchmark=alpaca_eval prompts=alpaca_eval.json [out=DIR] [generator=NAME] [limit=N] \\
      [max_prompt_length=1024] [prompt_format=chat_template] [device=auto] [trust_remote_code=false] \\
      [sampler.backend=hf|vllm] [sampler.max_new_tokens=512 sampler.temperature=0.7 ...]

(the keys and their defaults: ExportConfig below)

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

import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from drift.checks import Device, PromptFormat, SamplerBackend, check, check_choice, choices
from drift.config import ModelConfig, SamplerConfig
from drift.data.files import SchemaError
from drift.data.records import Rejected
from drift.eval.benchmarks import (
    BENCHMARKS,
    default_generator,
    output_file_name,
    output_rows,
    read_benchmark,
    sampler_rows,
)
from drift.io import DONE, mark_done, write_json_atomic, write_jsonl_atomic

USAGE = (f"python launch/analyze.py export checkpoint=PATH benchmark={'|'.join(BENCHMARKS)} "
         f"prompts=FILE [out=DIR] [generator=NAME] [limit=N] [max_prompt_length=N] [prompt_format={'|'.join(choices(PromptFormat))}] "
         f"[device={'|'.join(choices(Device))}] [trust_remote_code=false] [sampler.backend={'|'.join(choices(SamplerBackend))}] "
         "[sampler.KEY=VALUE ...]")
HARNESS_COMMANDS = {
    "alpaca_eval": "alpaca_eval evaluate --model_outputs {file}   # tatsu-lab/alpaca_eval, AlpacaEval 2 by default",
    "wildbench": ("python src/eval.py --action eval --mode score --local_result_file {file} ...   "
                  "# allenai/WildBench, or copy to result_dirs/wild_bench_v2/"),
    "advbench": "score `output` against `goal` with your refusal / harm classifier (AdvBench ships no scorer)",
    "toxigen": "classify `prediction` with toxigen_roberta (open-instruct eval/toxigen scoring; it adds is_toxic)",
}


class ExportError(ValueError):
    """Bad arguments or inputs; the message names the input and the fix."""


# ---- the command's config -----------------------------------------------------------------------


@dataclass
class ExportConfig:
    # required: an HF folder with *.safetensors weights (or embedded:smollm2), one of BENCHMARKS,
    # and the benchmark's published prompts file
    checkpoint: Optional[str] = None
    benchmark: Optional[str] = None
    prompts: Optional[str] = None
    # default: exports/<generator>/<benchmark>
    out: Optional[str] = None
    # the model's name in the harness's file; default: the run and stage of the checkpoint
    generator: Optional[str] = None
    # the first N prompts; null: all
    limit: Optional[int] = None
    max_prompt_length: int = 1024
    prompt_format: str = "chat_template"  # PromptFormat
    device: str = "auto"  # Device
    trust_remote_code: bool = False
    # an export is scored by its harness as written: a reply cut at max_new_tokens is still the
    # model's answer (sampler.truncated=drop would leave it empty), unless the user says otherwise
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(truncated="keep"))

    def validate(self) -> None:
        for key in ("checkpoint", "benchmark", "prompts"):
            check(bool(getattr(self, key)), f"missing {key}=...; usage: {USAGE}")
        check(self.benchmark in BENCHMARKS, f"benchmark must be one of {', '.join(BENCHMARKS)}, got {self.benchmark!r}")
        check(self.limit is None or self.limit >= 1, f"limit must be >= 1, got {self.limit}")
        check(self.max_prompt_length >= 1, f"max_prompt_length must be >= 1, got {self.max_prompt_length}")
        check_choice("prompt_format", self.prompt_format, PromptFormat)
        check_choice("device", self.device, Device)
        self.sampler.validate()
        check(self.sampler.num_samples == 1,
              f"an export writes one reply per prompt; sampler.num_samples must be 1, got {self.sampler.num_samples}")


CONFIG = ExportConfig


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


def sample(checkpoint: str, prompt_rows: list[dict], out_dir: Path, cfg: ExportConfig) -> dict:
    from drift.sampler.client import SamplingJob
    from drift.sampler.client import sample as run_sampling

    return run_sampling(SamplingJob(
        checkpoint, tuple(prompt_rows), out_dir, cfg.sampler, max_prompt_length=cfg.max_prompt_length,
        prompt_format=cfg.prompt_format, device=cfg.device, trust_remote_code=cfg.trust_remote_code,
    ), label="export").report


def run_export(cfg: ExportConfig) -> dict:
    from drift.io import read_jsonl
    from drift.model import load_tokenizer

    started = time.perf_counter()
    benchmark, prompts_path = cfg.benchmark, Path(cfg.prompts)
    checkpoint = resolve_checkpoint(cfg.checkpoint)
    generator = cfg.generator or default_generator(checkpoint)
    out_dir = Path(cfg.out or Path("exports") / generator / benchmark)
    output_path = out_dir / output_file_name(benchmark, generator)
    try:
        items, rejects = read_benchmark(benchmark, prompts_path, limit=cfg.limit)
    except (SchemaError, FileNotFoundError) as error:
        raise ExportError(str(error)) from None
    if not items:
        raise ExportError(f"{prompts_path}: no usable rows ({len(rejects)} rejected); nothing to export")
    # a killed export must not leave an earlier run's files looking finished
    for stale in (out_dir / DONE, output_path):
        stale.unlink(missing_ok=True)

    tokenizer = load_tokenizer(ModelConfig(name="policy", name_or_path=checkpoint, trust_remote_code=cfg.trust_remote_code),
                               source=checkpoint)
    model_inputs, truncated = render_prompts(items, tokenizer, max_prompt_length=cfg.max_prompt_length,
                                             prompt_format=cfg.prompt_format)
    sampling = sample(checkpoint, sampler_rows(items), out_dir / "sample", cfg)

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
        "limit": cfg.limit,
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
        write_json_atomic(output_path, rows)
    write_jsonl_atomic(out_dir / "rejects.jsonl", [asdict(r) for r in all_rejects])
    write_json_atomic(out_dir / "export_report.json", report)
    mark_done(out_dir, {"rows_written": len(rows), "rejected": len(all_rejects)})
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


def run(cfg: ExportConfig) -> int:
    try:
        report = run_export(cfg)
    except (ExportError, RuntimeError) as error:
        print(f"export: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0
