"""The one way to sample: ``sample(SamplingJob(...))`` starts launch/sample.py as its own OS process.

The pipeline (each iteration's positives), the coverage analysis, the benchmark exports and the
testbed report all sample through this function, with one reuse rule: a folder whose ``done``
marker holds the same request -- the checkpoint's weights fingerprint, the prompts' sha256, every
sampler setting, the prompt budget and format -- is reused as it is; anything else is sampled
again. The sampler stays a separate process (it holds the accelerator alone while it runs); its
outputs and the marker are written through temp files and renames.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from drift.config import SamplerConfig
from drift.io import DONE, jsonl_text, mark_done, read_done, read_jsonl, write_text_atomic

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


def request_identity(job: SamplingJob, text: str | None = None) -> dict:
    """What makes two sampler runs the same run (the reuse rule's key)."""
    from drift.sampler.process import checkpoint_fingerprint

    return {
        "checkpoint_fingerprint": checkpoint_fingerprint(job.checkpoint),
        "prompts_sha256": hashlib.sha256((text if text is not None else jsonl_text(job.prompts)).encode()).hexdigest(),
        "sampler": dataclasses.asdict(job.sampler),
        "max_prompt_length": job.max_prompt_length,
        "prompt_format": job.prompt_format,
    }


def sampler_command(job: SamplingJob, prompts_path: Path) -> list[str]:
    sampler = job.sampler
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


def finished_request(folder: Path) -> dict | None:
    """The request recorded by a finished run in ``folder``, or None."""
    if not (Path(folder) / "samples.jsonl").is_file():
        return None
    try:
        return (read_done(folder) or {}).get("request")
    except (json.JSONDecodeError, AttributeError):
        return None


def sample(job: SamplingJob, *, label: str = "sampler") -> SamplingResult:
    """Sample ``job`` in its own process, or reuse the finished run of the same request."""
    out_dir = Path(job.out_dir)
    text = jsonl_text(job.prompts)
    request = request_identity(job, text)
    if finished_request(out_dir) == request:
        print(f"{label}: reusing the samples in {out_dir} (same weights, prompts and settings)", flush=True)
        return SamplingResult(read_samples(out_dir), read_done(out_dir)["report"], reused=True)
    (out_dir / DONE).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts_path = out_dir / "prompts.jsonl"
    write_text_atomic(prompts_path, text)
    command = sampler_command(job, prompts_path)
    result = subprocess.run(command)
    if result.returncode != 0:
        raise RuntimeError(
            f"the sampler process failed on {job.checkpoint} (exit {result.returncode}); its message is above; "
            f"command: {' '.join(command)}"
        )
    report = json.loads((out_dir / "sampling_report.json").read_text())
    mark_done(out_dir, {"request": request, "report": report})
    return SamplingResult(read_samples(out_dir), report, reused=False)
