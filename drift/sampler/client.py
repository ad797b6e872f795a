"""The one way to sample: ``sample(SamplingJob(...))`` starts launch/sample.py as its own OS process.

The pipeline (each iteration's positives), the coverage analysis, the benchmark exports and the
testbed report all sample through this function. Its reuse rule is the stage contract's
(drift.stages): the request's key -- inputs: the checkpoint's weights and the prompts, by their
fingerprints; settings: every sampler setting, the prompt budget and format, and whatever the caller
adds in ``described_by`` -- is recorded in the folder's ``done`` marker; a folder whose marker
holds the same key is reused as it is, anything else is sampled again. The sampler stays a
separate process (it holds the accelerator alone while it runs); its outputs and the marker are
written through temp files and renames.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drift.config import SamplerConfig
from drift.fingerprint import fingerprint
from drift.io import DONE, jsonl_text, read_done, read_jsonl, write_text_atomic
from drift.stages import StageKey, finish, is_finished, start

SAMPLER_SCRIPT = Path(__file__).resolve().parent.parent.parent / "launch" / "sample.py"


@dataclass(frozen=True)
class SamplingJob:
    """Everything a sampler run depends on."""

    checkpoint: str  # an HF folder with *.safetensors weights and its tokenizer
    prompts: tuple[dict, ...]  # rows {"prompt_id", "messages", "keep_last"[, "num_samples"]}
    out_dir: Path
    sampler: SamplerConfig
    max_prompt_length: int
    prompt_format: str = "chat_template"
    device: str = "auto"
    trust_remote_code: bool = False
    # settings of the caller that shaped the prompts (data.guidance, say): recorded in the key, so
    # that a refusal to reuse the folder can name them
    described_by: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SamplingResult:
    samples: list[dict]  # the rows of samples.jsonl
    report: dict  # sampling_report.json
    reused: bool  # True when a finished run of the same request was found


def hydra_override(key: str, value) -> str:
    """key=value for a Hydra command line; strings and paths are quoted (a sweep folder holds '=' and ',')."""
    if isinstance(value, (str, Path)):
        escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
        return f"{key}='{escaped}'"
    if value is None:
        return f"{key}=null"
    return f"{key}={value}"


def request_key(job: SamplingJob, checkpoint_fingerprint: str | None = None) -> StageKey:
    """What makes two sampler runs the same run (the reuse rule's key); ``checkpoint_fingerprint``
    when the caller already knows it (a finished stage recorded it), else it is computed."""
    if checkpoint_fingerprint is None:
        from drift.sampler.process import checkpoint_fingerprint as weights_of

        checkpoint_fingerprint = weights_of(job.checkpoint)
    from drift.backends import resolve_sampler

    # the backend that runs, not "auto": a folder sampled by vLLM is not the HF sampler's
    resolved = resolve_sampler(job.sampler, job.device)[0]
    sampler = {f"sampler.{name}": value for name, value in dataclasses.asdict(resolved).items()}
    return StageKey(
        inputs={"checkpoint": checkpoint_fingerprint, "prompts": fingerprint(job.prompts)},
        settings={**sampler, "max_prompt_length": job.max_prompt_length, "prompt_format": job.prompt_format,
                  **job.described_by},
    )


def sampler_command(job: SamplingJob, prompts_path: Path) -> list[str]:
    from drift.backends import resolve_sampler

    sampler = resolve_sampler(job.sampler, job.device)[0]
    return [
        sys.executable, str(SAMPLER_SCRIPT),
        hydra_override("checkpoint", job.checkpoint), hydra_override("prompts", prompts_path),
        hydra_override("out_dir", job.out_dir), hydra_override("max_prompt_length", job.max_prompt_length),
        hydra_override("prompt_format", job.prompt_format), hydra_override("trust_remote_code", job.trust_remote_code),
        hydra_override("device", job.device), f"sampler={sampler.backend}",
        *[hydra_override(f"sampler.{f.name}", getattr(sampler, f.name)) for f in dataclasses.fields(sampler) if f.name != "backend"],
    ]


def read_samples(folder: Path) -> list[dict]:
    return read_jsonl(Path(folder) / "samples.jsonl")


def sample(job: SamplingJob, *, label: str = "sampler", checkpoint_fingerprint: str | None = None,
           quiet: bool = False) -> SamplingResult:
    """Sample ``job`` in its own process, or reuse the finished run of the same request.
    ``checkpoint_fingerprint``: the checkpoint's, when a finished stage recorded it. Prints one line, the
    report (``quiet``: none, the caller says what happened); the process's own lines only when it fails."""
    out_dir = Path(job.out_dir)
    key = request_key(job, checkpoint_fingerprint)
    if is_finished(out_dir, key) and (out_dir / "samples.jsonl").is_file():
        if not quiet:
            print(f"{label}: reusing the samples in {out_dir} (same weights, prompts and settings)", flush=True)
        return SamplingResult(read_samples(out_dir), read_done(out_dir)["report"], reused=True)
    (out_dir / DONE).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    start(out_dir, key)
    prompts_path = out_dir / "prompts.jsonl"
    write_text_atomic(prompts_path, jsonl_text(job.prompts))
    command = sampler_command(job, prompts_path)
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout)
        raise RuntimeError(
            f"the sampler process failed on {job.checkpoint} (exit {result.returncode}); its message is above; "
            f"command: {' '.join(command)}"
        )
    report = json.loads((out_dir / "sampling_report.json").read_text())
    finish(out_dir, key, fingerprint(read_jsonl(out_dir / "samples.jsonl")), {"report": report})
    if not quiet:
        from drift.sampler.process import format_report

        print(f"{label}: {format_report(report)}", flush=True)
    return SamplingResult(read_samples(out_dir), report, reused=False)
