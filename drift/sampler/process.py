"""The sampler: load a saved policy, generate one reply per (prompt, sample index), write them, exit.

It runs as its own OS process (launch/sample.py), started by the pipeline between iterations, so
the trainer and the sampler never hold the GPU at once. Nothing is written until every sample is
done: samples.jsonl, rejects.jsonl and sampling_report.json each go through a temp file + rename,
so a killed sampler leaves no partial samples file behind.

Reproducible: every draw is seeded by (sampler.seed, prompt_id, sample_index, attempt), never by
a global RNG, so a sample does not depend on which other prompts share its batch or on their order.
Exact reruns also need the same hardware, versions and sampler.batch_size: on GPU, bf16 kernels
may round differently with the batch's shape. vLLM runs with deterministic scheduling
(VLLM_ENABLE_V1_MULTIPROCESSING=0 unless set otherwise), as its reproducibility notes ask.

Backends:
  hf    a small batched sampling loop over an HF model (left-padded prefill, KV-cache decode,
        temperature, top-p, one torch.Generator per row); CPU or one GPU.
  vllm  vLLM's offline engine (the `gpu` extra): tensor parallel within a group of
        `sampler.tensor_parallel_size` GPUs and data parallel across groups, one independent
        engine process per group over a shard of the requests.

An empty (or EOS-only) reply is sampled again with the next attempt's seed, at most
`sampler.max_retries` times, then quarantined in rejects.jsonl with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from drift.backends import resolve_sampler
from drift.config import ConfigError, ModelConfig, SamplerConfig, validate_sampler_run
from drift.fingerprint import FileContents, fingerprint
from drift.io import jsonl_lines, write_json_atomic, write_jsonl_atomic
from drift.sampler.engine import (
    DecoderWeights,
    Generation,
    engine_unsupported_reason,
    generate_continuous,
    sample_next_tokens,
)

SAMPLES_FILE = "samples.jsonl"
REJECTS_FILE = "rejects.jsonl"
REPORT_FILE = "sampling_report.json"
OUTPUT_FILES = (SAMPLES_FILE, REJECTS_FILE, REPORT_FILE)
VLLM_MISSING = "sampler=vllm needs vLLM (the gpu extra): bash launch/setup_env.sh --gpu"
VLLM_SHARD_PREFIX = ".vllm_shard_rank"  # a data-parallel engine's results, merged then removed


class PromptFileError(ValueError):
    """The prompts file is not in the shape the sampler reads; the message names the line."""


@dataclass(frozen=True)
class Request:
    """One reply to sample: a rendered prompt and which of its samples this is."""

    prompt_id: str
    sample_index: int
    prompt_ids: tuple[int, ...]
    prompt_hash: str


# ---- configuration ------------------------------------------------------------------------------


def sampler_config_from_dict(values: dict) -> SamplerConfig:
    """sampler.<key> values (a run's saved config, say) -> a typed, validated config."""
    from drift.compose import structured

    return structured(values, SamplerConfig, key_prefix="sampler")


# ---- identities: checkpoint, prompt, seed -------------------------------------------------------


def checkpoint_fingerprint(folder: str | os.PathLike) -> str:
    """Content hash of the checkpoint's *.safetensors files: the same whichever backend loads them."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"checkpoint {folder} has no *.safetensors weight files; the sampler loads safetensors only")
    return fingerprint([FileContents(path) for path in files])


def prompt_hash(prompt_ids: Sequence[int]) -> str:
    """sha256 of the rendered prompt's token ids (as int64, like drift.tokenize's sequence keys)."""
    return fingerprint(np.asarray(prompt_ids, dtype=np.int64), length=64)


def sample_seed(seed: int, prompt_id: str, sample_index: int, attempt: int) -> int:
    """A 31-bit seed of its own for every draw: fits torch, numpy and vLLM alike."""
    digest = hashlib.sha256(f"{seed}\x00{prompt_id}\x00{sample_index}\x00{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def stop_token_ids(tokenizer, checkpoint: str | os.PathLike) -> list[int]:
    """The tokenizer's EOS plus the checkpoint's generation_config EOS ids (Qwen's <|im_end|> and
    <|endoftext|>, Gemma's <end_of_turn>). Ids from generation_config that are not special tokens
    are ignored: a config written from defaults (eos_token_id=2 on a byte vocabulary) would
    otherwise stop replies at an ordinary character."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    path = Path(checkpoint) / "generation_config.json"
    if path.exists():
        configured = json.loads(path.read_text()).get("eos_token_id")
        configured = configured if isinstance(configured, list) else [configured]
        ids |= {i for i in configured if isinstance(i, int) and i < len(tokenizer)
                and tokenizer.decode([i], skip_special_tokens=True) == ""}
    if not ids:
        raise ValueError(f"the tokenizer of {checkpoint} has no eos token and its generation_config names none")
    return sorted(ids)


# ---- inputs -------------------------------------------------------------------------------------


def read_prompt_rows(path: str | os.PathLike) -> list[dict]:
    """Rows {"prompt_id", "messages", "keep_last"[, "num_samples"]}, checked before anything is loaded."""
    path = Path(path)
    rows, seen = [], set()
    for line in jsonl_lines(path.read_text(encoding="utf-8")):
        where, row, problem = f"{path.name}:{line.number}", line.value, line.problem()
        if problem is not None:
            raise PromptFileError(f"{where}: {problem}")
        missing = [key for key in ("prompt_id", "messages", "keep_last") if key not in row]
        if missing:
            raise PromptFileError(f"{where}: missing {', '.join(missing)}; a row is "
                                  '{"prompt_id": str, "messages": [{"role", "content"}...], "keep_last": int}')
        if row["prompt_id"] in seen:
            raise PromptFileError(f"{where}: prompt_id {row['prompt_id']!r} appears twice")
        if not row["messages"] or not all({"role", "content"} <= set(m) for m in row["messages"]):
            raise PromptFileError(f"{where}: messages must be a non-empty list of {{role, content}}")
        seen.add(row["prompt_id"])
        rows.append(row)
    return rows


def build_requests(rows: list[dict], tokenizer, *, num_samples: int, max_prompt_length: int,
                   prompt_format: str) -> tuple[list[Request], list[dict]]:
    """Render each prompt once (dropping the oldest turns to fit); a prompt that cannot fit is
    rejected for every one of its sample indices, so each (prompt_id, sample_index) ends up in
    exactly one of samples.jsonl and rejects.jsonl."""
    from drift.data.prompts import PromptTooLong, render_prompt_ids

    requests, rejects = [], []
    for row in rows:
        count = int(row.get("num_samples", num_samples))
        try:
            ids, _ = render_prompt_ids(row["messages"], tokenizer, max_prompt_tokens=max_prompt_length,
                                       prompt_format=prompt_format, keep_last=int(row["keep_last"]))
        except PromptTooLong as error:
            rejects += [reject_row(row["prompt_id"], index, "prompt_too_long", str(error)) for index in range(count)]
            continue
        except ValueError as error:
            raise PromptFileError(f"prompt {row['prompt_id']!r}: {error}") from error
        digest = prompt_hash(ids)
        requests += [Request(row["prompt_id"], index, tuple(ids), digest) for index in range(count)]
    return requests, rejects


def reject_row(prompt_id: str, sample_index: int, reason: str, detail: str) -> dict:
    return {"prompt_id": prompt_id, "sample_index": sample_index, "reason": reason, "detail": detail}


# ---- retries: the same for every backend --------------------------------------------------------

GenerateFn = Callable[[list[tuple[int, ...]], list[int]], list[Generation]]


def sample_with_retries(generate: GenerateFn, requests: list[Request], tokenizer, *, seed: int, max_retries: int,
                        stamp: dict, seeded: bool = True, truncated: str = "drop") -> tuple[list[dict], list[dict], int]:
    """Sample every request; resample empty replies with the next attempt's seed, then quarantine.

    A reply cut at max_new_tokens is not a finished reply. ``truncated`` says what happens to it:
    ``drop`` quarantines it at once (reason ``truncated``), ``resample`` draws it again with the
    next attempt's seed like an empty one (then quarantines it), ``keep`` keeps it with
    finish_reason ``length`` (the paper code's behaviour; the trainer then gives it no
    end-of-turn token).

    Returns (sample rows, reject rows, tokens generated over all attempts). ``stamp`` holds the
    fields every row carries (backend, checkpoint fingerprint); ``seeded=False`` (vLLM's per_batch
    seed mode) records no per-draw seed, since the backend did not use one.
    """
    pending: list[tuple[Request, Generation | None]] = [(request, None) for request in requests]
    rows, rejects, tokens = [], [], 0

    def quarantine(request: Request, generation: Generation, attempts: int) -> None:
        if generation.finish_reason == "length" and tokenizer.decode(list(generation.token_ids), skip_special_tokens=True).strip():
            rejects.append(reject_row(request.prompt_id, request.sample_index, "truncated",
                                      f"the reply was cut at max_new_tokens={generation.generated_tokens} after {attempts} "
                                      f"attempt(s) (sampler.truncated={truncated}); raise sampler.max_new_tokens to finish it"))
        else:
            rejects.append(reject_row(request.prompt_id, request.sample_index, "empty_output",
                                      f"the reply was empty after {attempts} attempt(s); the last one generated "
                                      f"{generation.generated_tokens} token(s) and ended by {generation.finish_reason}"))

    for attempt in range(max_retries + 1):
        if not pending:
            break
        seeds = [sample_seed(seed, r.prompt_id, r.sample_index, attempt) for r, _ in pending]
        generations = generate([r.prompt_ids for r, _ in pending], seeds)
        again = []
        for (request, _), draw_seed, generation in zip(pending, seeds, generations, strict=True):
            tokens += generation.generated_tokens
            text = tokenizer.decode(list(generation.token_ids), skip_special_tokens=True).strip()
            cut = generation.finish_reason == "length" and truncated != "keep"
            if not text or cut:
                if text and truncated == "drop":
                    quarantine(request, generation, attempt + 1)
                else:
                    again.append((request, generation))
                continue
            rows.append({
                "prompt_id": request.prompt_id,
                "sample_index": request.sample_index,
                "text": text,
                "num_tokens": len(generation.token_ids),
                "finish_reason": generation.finish_reason,
                "seed": draw_seed if seeded else None,
                **stamp,
                "prompt_hash": request.prompt_hash,
                "attempts": attempt + 1,
            })
        pending = again
    for request, generation in pending:
        quarantine(request, generation, max_retries + 1)
    return rows, rejects, tokens


class Progress:
    """A tqdm bar over samples whose postfix is the generation rate in tokens/s."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        from drift.console import progress_wanted

        self.bar = tqdm(total=total, desc="sampling", unit="sample", disable=not progress_wanted(enabled), dynamic_ncols=True)
        self.tokens, self.planned, self.started = 0, 0, time.perf_counter()

    def expect(self, samples: int) -> None:
        """Samples about to be generated: the first attempt's (already in the total), then each retry's."""
        self.planned += samples
        if self.planned > self.bar.total:
            self.bar.total = self.planned
            self.bar.refresh()

    def advance(self, samples: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.update(samples)
        self.bar.set_postfix_str(f"{self.tokens / max(time.perf_counter() - self.started, 1e-9):.1f} tok/s")

    def close(self) -> None:
        self.bar.close()


# ---- HF backend ---------------------------------------------------------------------------------


@torch.no_grad()
def hf_generate_batch(model, prompts: list[Sequence[int]], seeds: list[int], *, temperature: float, top_p: float,
                      max_new_tokens: int, stop_ids: Sequence[int], pad_id: int) -> list[Generation]:
    """Sample one reply per prompt: left-padded prefill, then KV-cache decode, one generator per row."""
    device = next(model.parameters()).device
    batch, width = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids):] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    # positions count real tokens only, so a prompt sees the same positions whatever its padding
    positions = (attention.cumsum(dim=-1) - 1).clamp(min=0)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)

    # transformers 5.2x calls the KV cache `cache`; earlier versions call it `past_key_values`
    cache_key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1)
    next_position = positions[:, -1:] + 1
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    steps = []
    for step in range(max_new_tokens):
        uniforms = torch.stack([torch.rand((), generator=g) for g in generators])
        tokens = sample_next_tokens(out.logits[:, -1], uniforms, temperature=temperature, top_p=top_p)
        tokens = tokens.masked_fill(finished, pad_id)
        steps.append(tokens)
        finished |= torch.isin(tokens, stops)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        attention = torch.cat([attention, torch.ones((batch, 1), dtype=attention.dtype, device=device)], dim=1)
        out = model(input_ids=tokens[:, None], attention_mask=attention, position_ids=next_position,
                    use_cache=True, **{cache_key: getattr(out, cache_key)})
        next_position = next_position + 1
    return [cut_at_stop(row, stop_ids) for row in torch.stack(steps, dim=1).tolist()]


def cut_at_stop(token_ids: Sequence[int], stop_ids: Sequence[int]) -> Generation:
    """The reply up to its first stop token; without one, the generation ran out of length."""
    stops = set(stop_ids)
    for index, token in enumerate(token_ids):
        if token in stops:
            return Generation(tuple(token_ids[:index]), "eos", index + 1)
    return Generation(tuple(token_ids), "length", len(token_ids))


def hf_generate_fn(model, cfg: SamplerConfig, stop_ids: Sequence[int], pad_id: int, progress: Progress,
                   engine: str = "loop") -> GenerateFn:
    """The HF backend's generate: ``static`` is the continuous-batching engine
    (drift.sampler.engine), ``loop`` the plain loop over the HF forward in static batches of
    sampler.batch_size. Longest prompts first in both (an out-of-memory error shows at once)."""

    weights: list[DecoderWeights] = []  # packed on the first call, reused by the retries

    def generate_static(prompts: list[tuple[int, ...]], seeds: list[int]) -> list[Generation]:
        progress.expect(len(prompts))
        if not weights:
            weights.append(DecoderWeights(model, rows_hint=cfg.batch_size))
        return generate_continuous(
            weights[0], prompts, seeds, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
            stop_ids=stop_ids, batch_size=cfg.batch_size, on_finish=lambda g: progress.advance(1, g.generated_tokens),
        )

    def generate_loop(prompts: list[tuple[int, ...]], seeds: list[int]) -> list[Generation]:
        progress.expect(len(prompts))
        order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
        results: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), cfg.batch_size):
            chunk = order[start:start + cfg.batch_size]
            generations = hf_generate_batch(
                model, [prompts[i] for i in chunk], [seeds[i] for i in chunk], temperature=cfg.temperature,
                top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, stop_ids=stop_ids, pad_id=pad_id,
            )
            for index, generation in zip(chunk, generations):
                results[index] = generation
            progress.advance(len(chunk), sum(g.generated_tokens for g in generations))
        return results  # type: ignore[return-value]

    return generate_static if engine == "static" else generate_loop


def choose_engine(model, requested: str) -> tuple[str, str | None]:
    """(engine that runs, why not the static one). ``auto`` falls back to the loop, ``static`` refuses."""
    reason = engine_unsupported_reason(model)
    if requested == "loop":
        return "loop", "sampler.engine=loop"
    if reason is not None and requested == "static":
        raise ConfigError(f"sampler.engine=static cannot run this model ({reason}); use sampler.engine=auto or loop")
    return ("loop", reason) if reason is not None else ("static", None)


def sampling_dtype(requested: str, use_cuda: bool) -> torch.dtype:
    from drift.backends import resolve_sampler_dtype

    return getattr(torch, resolve_sampler_dtype(requested, use_cuda))


def _run_hf(checkpoint: str, requests: list[Request], tokenizer, cfg: SamplerConfig, stop_ids: list[int], *,
            device: str, trust_remote_code: bool, stamp: dict, progress_bar: bool) -> tuple[list[dict], list[dict], int, dict]:
    from drift.model import load_model

    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is visible; use device=cpu")
    target = torch.device("cuda" if use_cuda else "cpu")
    dtype = sampling_dtype(cfg.dtype, use_cuda)
    model_cfg = ModelConfig(name="policy", name_or_path=checkpoint, trust_remote_code=trust_remote_code)
    load_started = time.perf_counter()
    model = load_model(model_cfg, dtype=dtype, seed=cfg.seed).to(target).eval()
    load_seconds = time.perf_counter() - load_started
    engine, fallback_reason = choose_engine(model, cfg.engine)
    if engine == "loop" and cfg.engine == "auto":
        # on stderr: the client keeps the process's stdout to itself unless it fails
        print(f"sampler: the static engine does not run this model ({fallback_reason}); using the plain loop",
              file=sys.stderr, flush=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    progress = Progress(len(requests), progress_bar)
    try:
        generate = hf_generate_fn(model, cfg, stop_ids, pad_id, progress, engine)
        rows, rejects, tokens = sample_with_retries(generate, requests, tokenizer, seed=cfg.seed, max_retries=cfg.max_retries,
                                                    stamp=stamp, truncated=cfg.truncated)
    finally:
        progress.close()
    return rows, rejects, tokens, {"device": str(target), "dtype": str(dtype).removeprefix("torch."),
                                   "engine": engine, "load_seconds": load_seconds}


# ---- vLLM backend -------------------------------------------------------------------------------


def require_vllm() -> None:
    """Fail before anything is loaded; vLLM itself is imported only where an engine starts."""
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(VLLM_MISSING)


def import_vllm():
    try:
        import vllm
    except ImportError as error:
        raise ImportError(f"{VLLM_MISSING} ({error})") from error
    return vllm


def vllm_requests(prompts: list[Sequence[int]], seeds: list[int], cfg: SamplerConfig,
                  stop_ids: Sequence[int]) -> tuple[list[dict], list[dict]]:
    """vLLM prompts ({"prompt_token_ids": ...}, a TokensPrompt) and SamplingParams kwargs, one
    request per (prompt, sample index) with n=1.

    sampler.vllm_seed_mode=per_request gives each request its own seed: reproducible and
    independent of batch-mates, but a seeded request carries its own torch.Generator, and vLLM's
    sampler then leaves its fused top-p kernel (FlashInfer) for the PyTorch path and draws each
    seeded row's noise in a Python loop over the batch. per_batch sends no seed: the engine's seed
    (vllm.LLM(seed=sampler.seed)) drives one generator for the whole batch, the fast path; a rerun
    with the same requests in the same order reproduces, but a sample depends on its batch-mates."""
    prompt_dicts = [{"prompt_token_ids": list(ids)} for ids in prompts]
    per_request = cfg.vllm_seed_mode == "per_request"
    params = [
        {
            "n": 1,
            **({"seed": seed} if per_request else {}),
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": cfg.max_new_tokens,
            "stop_token_ids": list(stop_ids),
            "skip_special_tokens": True,
        }
        for seed in seeds
    ]
    return prompt_dicts, params


def generation_from_vllm(token_ids: Sequence[int], finish_reason: str | None, stop_ids: Sequence[int]) -> Generation:
    """A vLLM CompletionOutput as a Generation: the stop token dropped, "stop" read as "eos"."""
    if finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM finished a request with {finish_reason!r}; expected 'stop' or 'length'")
    ids = list(token_ids)
    if finish_reason == "length":
        return Generation(tuple(ids), "length", len(ids))
    reply = ids[:-1] if ids and ids[-1] in set(stop_ids) else ids
    return Generation(tuple(reply), "eos", len(reply) + 1)


def vllm_engine_kwargs(checkpoint: str, cfg: SamplerConfig, *, max_model_len: int, trust_remote_code: bool) -> dict:
    """Arguments of vllm.LLM for one engine (one data-parallel group)."""
    return {
        "model": checkpoint,
        "tokenizer": checkpoint,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "trust_remote_code": trust_remote_code,
        "dtype": "bfloat16",
        "max_model_len": max_model_len,
        "seed": cfg.seed,
    }


def check_gpu_memory(cfg: SamplerConfig, free_and_total: Callable[[], tuple[int, int]] | None = None) -> None:
    """vLLM reserves gpu_memory_utilization x total memory at start and fails deep inside its
    profiler when less is free (a trainer still holding the GPU, say): say so before it loads."""
    free, total = (free_and_total or torch.cuda.mem_get_info)()
    wanted = cfg.gpu_memory_utilization * total
    if free < wanted:
        raise RuntimeError(
            f"sampler.gpu_memory_utilization={cfg.gpu_memory_utilization} asks vLLM for {wanted / 2**30:.1f} GiB but only "
            f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB are free on this GPU: lower sampler.gpu_memory_utilization "
            f"below {free / total:.2f}, or free the GPU (is a trainer process still running on it?)"
        )


def visible_gpu_ids() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu for gpu in listed.split(",") if gpu.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def data_parallel_groups(gpu_ids: list[str], tensor_parallel_size: int) -> list[list[str]]:
    """Split the node's GPUs into groups of tensor_parallel_size; one engine per group.

    data_parallel_size = visible GPUs // tensor_parallel_size; GPUs left over are not used.
    """
    if len(gpu_ids) < tensor_parallel_size:
        raise RuntimeError(f"sampler.tensor_parallel_size={tensor_parallel_size} but {len(gpu_ids)} GPU(s) are visible")
    count = len(gpu_ids) // tensor_parallel_size
    return [gpu_ids[i * tensor_parallel_size:(i + 1) * tensor_parallel_size] for i in range(count)]


def _vllm_shard(checkpoint: str, requests: list[Request], cfg: SamplerConfig, stop_ids: list[int], *,
                max_model_len: int, trust_remote_code: bool, stamp: dict, show_progress: bool) -> tuple[list[dict], list[dict], int, float]:
    """One engine over its share of the requests, the retries included; also returns its load time."""
    from drift.model import load_tokenizer

    # deterministic scheduling, so that a rerun reproduces (vLLM's reproducibility notes); this
    # process exists only to sample, so vLLM reseeding its global RNGs harms nothing
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    vllm = import_vllm()
    tokenizer = load_tokenizer(ModelConfig(name="policy", name_or_path=checkpoint, trust_remote_code=trust_remote_code),
                               source=checkpoint)
    check_gpu_memory(cfg)
    load_started = time.perf_counter()
    llm = vllm.LLM(**vllm_engine_kwargs(checkpoint, cfg, max_model_len=max_model_len, trust_remote_code=trust_remote_code))
    load_seconds = time.perf_counter() - load_started

    def generate(prompts: list[tuple[int, ...]], seeds: list[int]) -> list[Generation]:
        prompt_dicts, params = vllm_requests(prompts, seeds, cfg, stop_ids)
        # vLLM's own bar shows the rate in tokens/s; outputs come back in the order of the prompts
        outputs = llm.generate(prompt_dicts, [vllm.SamplingParams(**p) for p in params], use_tqdm=show_progress)
        return [generation_from_vllm(o.outputs[0].token_ids, o.outputs[0].finish_reason, stop_ids) for o in outputs]

    rows, rejects, tokens = sample_with_retries(generate, requests, tokenizer, seed=cfg.seed, max_retries=cfg.max_retries,
                                                stamp=stamp, seeded=cfg.vllm_seed_mode == "per_request", truncated=cfg.truncated)
    return rows, rejects, tokens, load_seconds


def _vllm_worker(gpu_ids: list[str], result_path: str, arguments: dict) -> None:
    # must precede any CUDA use in this (spawned) process: the engine sees only its group's GPUs
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    rows, rejects, tokens, load_seconds = _vllm_shard(**arguments)
    write_json_atomic(result_path, {"rows": rows, "rejects": rejects, "tokens": tokens, "load_seconds": load_seconds},
                      indent=None)


def _run_vllm(checkpoint: str, requests: list[Request], cfg: SamplerConfig, stop_ids: list[int], *,
              max_model_len: int, trust_remote_code: bool, stamp: dict, progress_bar: bool,
              scratch: Path) -> tuple[list[dict], list[dict], int, dict]:
    groups = data_parallel_groups(visible_gpu_ids(), cfg.tensor_parallel_size)
    layout = {"data_parallel_size": len(groups), "tensor_parallel_size": cfg.tensor_parallel_size}
    common = dict(checkpoint=checkpoint, cfg=cfg, stop_ids=stop_ids, max_model_len=max_model_len,
                  trust_remote_code=trust_remote_code, stamp=stamp)
    if len(groups) == 1:
        rows, rejects, tokens, load_seconds = _vllm_shard(requests=requests, show_progress=progress_bar, **common)
        return rows, rejects, tokens, {**layout, "load_seconds": load_seconds}

    import multiprocessing

    # longest first, dealt round-robin: each engine gets a similar share of the work
    ordered = sorted(requests, key=lambda r: -len(r.prompt_ids))
    context = multiprocessing.get_context("spawn")
    workers = []
    for rank, gpu_ids in enumerate(groups):
        shard = ordered[rank::len(groups)]
        if not shard:
            continue
        result_path = scratch / f"{VLLM_SHARD_PREFIX}{rank}.json"
        arguments = dict(requests=shard, show_progress=progress_bar and rank == 0, **common)
        worker = context.Process(target=_vllm_worker, args=(gpu_ids, str(result_path), arguments))
        worker.start()
        workers.append((rank, worker, result_path))
    for _, worker, _ in workers:
        worker.join()
    failed = [f"rank {rank} (GPUs {','.join(groups[rank])}): exit code {worker.exitcode}"
              for rank, worker, _ in workers if worker.exitcode != 0]
    if failed:
        raise RuntimeError(f"vLLM data-parallel engines failed ({'; '.join(failed)}); their tracebacks are printed above")
    rows, rejects, tokens, load_seconds = [], [], 0, 0.0
    for _rank, _worker, result_path in workers:
        shard = json.loads(result_path.read_text())
        result_path.unlink()
        rows += shard["rows"]
        rejects += shard["rejects"]
        tokens += shard["tokens"]
        # the engines load side by side: the slowest one is the time lost to loading
        load_seconds = max(load_seconds, shard["load_seconds"])
    return rows, rejects, tokens, {**layout, "load_seconds": load_seconds}


# ---- the sampler run ----------------------------------------------------------------------------


def run_sampler(checkpoint: str | os.PathLike, prompts_path: str | os.PathLike, out_dir: str | os.PathLike,
                sampler_cfg: SamplerConfig, *, max_prompt_length: int, prompt_format: str, device: str = "auto",
                trust_remote_code: bool = False, progress_bar: bool = True) -> dict:
    """Sample every prompt of ``prompts_path`` from ``checkpoint``; write samples.jsonl,
    rejects.jsonl and sampling_report.json into ``out_dir`` at the end. Returns the report."""
    from drift.model import load_tokenizer

    started = time.perf_counter()
    validate_sampler_run(sampler_cfg, max_prompt_length=max_prompt_length, prompt_format=prompt_format, device=device)
    sampler_cfg, _ = resolve_sampler(sampler_cfg, device)
    if sampler_cfg.backend == "vllm":
        require_vllm()
    checkpoint, out_dir = str(checkpoint), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # outputs of an earlier run must not pass for this run's if this one is killed
    for stale in [out_dir / name for name in OUTPUT_FILES] + list(out_dir.glob(f"{VLLM_SHARD_PREFIX}*")):
        stale.unlink(missing_ok=True)

    rows = read_prompt_rows(prompts_path)
    fingerprint = checkpoint_fingerprint(checkpoint)
    tokenizer = load_tokenizer(ModelConfig(name="policy", name_or_path=checkpoint, trust_remote_code=trust_remote_code),
                               source=checkpoint)
    requests, rejects = build_requests(rows, tokenizer, num_samples=sampler_cfg.num_samples,
                                       max_prompt_length=max_prompt_length, prompt_format=prompt_format)
    requested = len(requests) + len(rejects)
    stop_ids = stop_token_ids(tokenizer, checkpoint)
    stamp = {"backend": sampler_cfg.backend, "checkpoint_fingerprint": fingerprint}
    print(f"sampler: {len(requests)} samples for {len(rows)} prompts ({len(rejects)} too long), backend={sampler_cfg.backend}, "
          f"checkpoint {checkpoint} ({fingerprint})", flush=True)

    backend_started = time.perf_counter()
    if sampler_cfg.backend == "hf":
        samples, empty, tokens, details = _run_hf(checkpoint, requests, tokenizer, sampler_cfg, stop_ids, device=device,
                                                  trust_remote_code=trust_remote_code, stamp=stamp, progress_bar=progress_bar)
    else:
        samples, empty, tokens, details = _run_vllm(
            checkpoint, requests, sampler_cfg, stop_ids, max_model_len=max_prompt_length + sampler_cfg.max_new_tokens,
            trust_remote_code=trust_remote_code, stamp=stamp, progress_bar=progress_bar, scratch=out_dir,
        )
    generation_seconds = time.perf_counter() - backend_started - details["load_seconds"]
    details["load_seconds"] = round(details["load_seconds"], 3)

    # file order: the prompts file's order, then sample index
    position = {row["prompt_id"]: index for index, row in enumerate(rows)}
    by_prompt = lambda row: (position[row["prompt_id"]], row["sample_index"])  # noqa: E731
    samples.sort(key=by_prompt)
    rejects = sorted(rejects + empty, key=by_prompt)
    report = {
        "backend": sampler_cfg.backend,
        "checkpoint": checkpoint,
        "checkpoint_fingerprint": fingerprint,
        "prompts": len(rows),
        "requested_samples": requested,
        "samples": len(samples),
        "rejected": len(rejects),
        "rejects_by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
        "retried_samples": sum(row["attempts"] > 1 for row in samples),
        "truncated_kept": sum(row["finish_reason"] == "length" for row in samples),
        "generated_tokens": tokens,
        "generation_seconds": round(generation_seconds, 3),
        "tokens_per_second": round(tokens / max(generation_seconds, 1e-9), 1),
        "seconds": round(time.perf_counter() - started, 3),
        "stop_token_ids": stop_ids,
        "max_prompt_length": max_prompt_length,
        "prompt_format": prompt_format,
        "sampler": dataclasses.asdict(sampler_cfg),
        **details,
    }
    write_jsonl_atomic(out_dir / REJECTS_FILE, rejects)
    write_jsonl_atomic(out_dir / SAMPLES_FILE, samples)
    write_json_atomic(out_dir / REPORT_FILE, report)
    return report


def format_report(report: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in report["rejects_by_reason"].items()) or "none"
    return (f"sampled {report['samples']} of {report['requested_samples']} replies for {report['prompts']} prompts "
            f"({report['backend']}), {report['generated_tokens']} tokens in {report['generation_seconds']:.1f} s "
            f"({report['tokens_per_second']:.1f} tokens/s); rejected: {reasons}")
