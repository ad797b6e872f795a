"""Our sampler beside transformers' own, same prompts, same settings, one invocation.

    python benchmarks/sampler_throughput.py                       # batch 8/32, 256 new tokens (the main job's)
    python benchmarks/sampler_throughput.py --batches 8 --new-tokens 128 --impls ours generate_batch generate

The embedded SmolLM2-135M-Instruct on the main job's prompts: the compact testbed's guided DRIFT
prompts (multi-turn), rendered with the chat template exactly as launch/sample.py renders them, each
prompt drawn twice (sample index 0 and 1). Temperature 0.7, top-p 0.9, the checkpoint's stop tokens.
A configuration samples max(4, 2 x batch) prompts, so continuous batching refills rows and the
static batches of generate() wait for their longest reply.

  ours          the HF backend's generate function, built as launch/sample.py builds it
                (drift.sampler.process.hf_generate_fn with the engine sampler.engine=auto picks)
  ours_bf16     the same with sampler.dtype=bfloat16 (weights and KV cache in bf16)
  ours_loop     sampler.engine=loop: the plain loop over the HF forward that ours replaced
  generate      model.generate(do_sample=True, ...) on left-padded batches of the same prompts,
                longest first (as ours orders them), the default dynamic cache
  generate_batch  transformers' continuous batching (model.generate_batch: a paged KV cache, requests
                scheduled into the batch as rows free up), at most `batch` requests at once, its
                cache sized to them (the default sizing measured 6 tok/s here); one seed for the
                whole batch: transformers has no per-request seed, so a reply depends on its batch-mates
  generate_batch_bf16  the same with bf16 weights

Each row also says whether the implementation keeps the sampler's guarantees: a seed of its own for
every request, and the same reply for a prompt sampled alone as inside the batch (checked on the
first prompt, 32 tokens).

Tokens/s counts finished tokens: every generated token up to and including its stop token.
Each configuration runs in a fresh subprocess, so its peak RSS is its own. The same run measures
this machine's memory read bandwidth, and from it the decode bound: one step reads every weight
once, so steps/s <= bandwidth / weight bytes, tokens/s <= batch x that (KV-cache reads ignored).
Writes benchmarks/results/sampler_throughput_<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
IMPLS = ("ours", "ours_bf16", "ours_loop", "generate", "generate_batch", "generate_batch_bf16")
SEED = 42


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def benchmark_prompts(tokenizer, count: int) -> tuple[list[tuple[int, ...]], list[int]]:
    """The main job's guided prompts as launch/sample.py renders them, twice each; and their seeds."""
    from drift.data import DataConfig, load_records
    from drift.methods import GUIDED, method_named
    from drift.sampler.process import build_requests, sample_seed

    records = load_records(DataConfig(name="testbed_compact"))
    rows = [request.as_row() for request in method_named("drift").sample_requests(records, "feedback_only")
            if request.as_row()["prompt_id"].endswith(GUIDED)]
    requests, rejects = build_requests(rows, tokenizer, num_samples=2, max_prompt_length=1024, prompt_format="chat_template")
    assert not rejects, rejects
    # interleave sample indices 0 and 1 so that a small count still spans many prompts
    requests = sorted(requests, key=lambda r: (r.sample_index, rows.index(next(x for x in rows if x["prompt_id"] == r.prompt_id))))
    chosen = requests[:count]
    return [r.prompt_ids for r in chosen], [sample_seed(SEED, r.prompt_id, r.sample_index, 0) for r in chosen]


def finished_length(tokens: list[int], stops: set[int]) -> int:
    for index, token in enumerate(tokens):
        if token in stops:
            return index + 1
    return len(tokens)


def run_generate(model, prompts, *, batch: int, new_tokens: int, stop_ids: list[int], pad_id: int) -> int:
    import torch

    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    tokens = 0
    for start in range(0, len(order), batch):
        chunk = [prompts[i] for i in order[start:start + batch]]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, prompt in enumerate(chunk):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, top_p=0.9, top_k=0,
                                 max_new_tokens=new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id)
        for row in out[:, width:].tolist():
            tokens += finished_length(row, set(stop_ids))
    return tokens


def run_generate_batch(model, prompts, *, batch: int, new_tokens: int, stop_ids: list[int], pad_id: int,
                       seed: int = SEED) -> list[list[int]]:
    """transformers' continuous batching; the replies (up to and including a stop token) in prompt order."""
    import torch
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    page = 256
    pages_per_request = -(-(max(map(len, prompts)) + new_tokens) // page)
    generation = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=new_tokens,
                                  eos_token_id=stop_ids, pad_token_id=pad_id)
    cache = ContinuousBatchingConfig(max_requests_per_batch=batch, page_size=page, num_blocks=batch * pages_per_request,
                                     seed=seed)
    with torch.no_grad():
        outputs = model.generate_batch(inputs=[list(p) for p in prompts], generation_config=generation,
                                       continuous_batching_config=cache, progress_bar=False)
    replies = [outputs[f"req_{index}"].generated_tokens for index in range(len(prompts))]
    return [row[:finished_length(row, set(stop_ids))] for row in replies]


def alone_and_in_batch(sample_first, prompts, seeds) -> bool:
    """Whether the first prompt's reply is the same sampled alone as inside the batch (same seed)."""
    return sample_first([prompts[0]], [seeds[0]]) == sample_first(prompts, seeds)


class Quiet:
    """No progress bar."""

    def expect(self, samples):
        pass

    def advance(self, samples, tokens):
        pass


def worker(impl: str, batch: int, new_tokens: int) -> dict:
    import torch

    from drift.config import ModelConfig, SamplerConfig
    from drift.model import ensure_embedded_smollm2, load_model, load_tokenizer
    from drift.sampler.process import choose_engine, hf_generate_fn, stop_token_ids

    torch.manual_seed(SEED)
    checkpoint = str(ensure_embedded_smollm2())
    model_cfg = ModelConfig(name="smollm2", name_or_path=checkpoint)
    tokenizer = load_tokenizer(model_cfg, source=checkpoint)
    dtype = torch.bfloat16 if impl.endswith("_bf16") else torch.float32
    model = load_model(model_cfg, dtype=dtype, seed=SEED, source=checkpoint).eval()
    model.config.use_cache = True
    prompts, seeds = benchmark_prompts(tokenizer, max(4, 2 * batch))
    stop_ids = stop_token_ids(tokenizer, checkpoint)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    engine = None
    started = time.perf_counter()
    if impl == "generate":
        tokens = run_generate(model, prompts, batch=batch, new_tokens=new_tokens, stop_ids=stop_ids, pad_id=pad_id)
        cut = None
    elif impl.startswith("generate_batch"):
        replies = run_generate_batch(model, prompts, batch=batch, new_tokens=new_tokens, stop_ids=stop_ids, pad_id=pad_id)
        tokens = sum(map(len, replies))
        cut = sum(not reply or reply[-1] not in stop_ids for reply in replies)
    else:
        cfg = SamplerConfig(max_new_tokens=new_tokens, batch_size=batch, engine="loop" if impl == "ours_loop" else "auto")
        engine, _ = choose_engine(model, cfg.engine)
        generations = hf_generate_fn(model, cfg, stop_ids, pad_id, Quiet(), engine)(prompts, seeds)
        tokens = sum(g.generated_tokens for g in generations)
        cut = sum(g.finish_reason == "length" for g in generations)
    seconds = time.perf_counter() - started
    if impl.startswith("generate_batch"):
        # one seed for the whole batch (ContinuousBatchingConfig.seed): what the first reply is depends on the others
        same_alone = alone_and_in_batch(lambda ps, _: run_generate_batch(model, ps, batch=batch, new_tokens=32, stop_ids=stop_ids,
                                                                         pad_id=pad_id)[0], prompts, seeds)
        per_request_seeds = False
    elif impl == "generate":
        same_alone, per_request_seeds = None, False
    else:
        short = SamplerConfig(max_new_tokens=32, batch_size=batch, engine=cfg.engine)
        same_alone = alone_and_in_batch(lambda ps, ss: hf_generate_fn(model, short, stop_ids, pad_id, Quiet(), engine)(ps, ss)[0].token_ids,
                                        prompts, seeds)
        per_request_seeds = True
    return {"impl": impl, "engine": engine, "batch": batch, "new_tokens": new_tokens, "prompts": len(prompts),
            "per_request_seeds": per_request_seeds, "same_reply_alone_and_in_batch": same_alone,
            "prompt_tokens_min": min(map(len, prompts)), "prompt_tokens_max": max(map(len, prompts)),
            "finished_tokens": tokens, "cut_replies": cut, "seconds": round(seconds, 2),
            "tokens_per_second": round(tokens / seconds, 1), "peak_rss_gb": round(peak_rss_bytes() / 1e9, 2),
            "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def read_bandwidth_gbps() -> float:
    """Bytes/s of a sum over 1 GB of fp32 (well past the caches), best of 5, all threads."""
    import torch

    data = torch.randn(250_000_000)
    data.sum()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[256])
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=["ours", "ours_bf16", "generate_batch", "generate_batch_bf16"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "BATCH", "NEW_TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, batch, new_tokens = args.worker
        print(json.dumps(worker(impl, int(batch), int(new_tokens))))
        return

    import torch

    bandwidth = read_bandwidth_gbps()
    print(f"memory read bandwidth: {bandwidth:.1f} GB/s ({torch.get_num_threads()} threads)", flush=True)
    results = []
    for new_tokens in args.new_tokens:
        for batch in args.batches:
            for impl in args.impls:
                command = [sys.executable, __file__, "--worker", impl, str(batch), str(new_tokens)]
                done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{impl} batch {batch} new_tokens {new_tokens} failed")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                steps_bound = bandwidth * 1e9 / row.pop("weight_bytes")
                row["bound_tokens_per_second"] = round(steps_bound * batch, 1)
                results.append(row)
                print(f"{impl:<10} batch {batch:>2} new {new_tokens:>3}: {row['tokens_per_second']:>7.1f} tok/s "
                      f"({row['finished_tokens']} tokens in {row['seconds']:.1f} s, peak RSS {row['peak_rss_gb']:.2f} GB, "
                      f"bound {row['bound_tokens_per_second']:.0f} tok/s)", flush=True)

    def rate(impl, batch, new_tokens):
        return next((r["tokens_per_second"] for r in results
                     if (r["impl"], r["batch"], r["new_tokens"]) == (impl, batch, new_tokens)), None)

    # the peer a user would try first: transformers' continuous batching, else its generate()
    peer = next((impl for impl in ("generate_batch", "generate") if impl in args.impls), None)
    print(f"\n{'new':>4} {'batch':>5} " + " ".join(f"{impl:>10}" for impl in args.impls)
          + (f"   ours/{peer}  ours_bf16/{peer}" if peer else ""))
    speedups = []
    for new_tokens in args.new_tokens:
        for batch in args.batches:
            cells = [rate(impl, batch, new_tokens) for impl in args.impls]
            base = rate(peer, batch, new_tokens) if peer else None
            ratios = [f"{rate(i, batch, new_tokens) / base:>6.2f}x" if base and rate(i, batch, new_tokens) else "     -"
                      for i in ("ours", "ours_bf16")]
            speedups.append({"batch": batch, "new_tokens": new_tokens, "peer": peer,
                             **{f"{i}_over_{peer}": round(rate(i, batch, new_tokens) / base, 2)
                                for i in ("ours", "ours_bf16", "ours_loop") if base and rate(i, batch, new_tokens)}})
            print(f"{new_tokens:>4} {batch:>5} " + " ".join(f"{c:>10.1f}" if c else f"{'-':>10}" for c in cells)
                  + "   " + "        ".join(ratios))
    from drift.io import write_text_atomic

    out = args.out or ROOT / "benchmarks" / "results" / "sampler_throughput_cpu.json"
    write_text_atomic(out, json.dumps({
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "memory_read_bandwidth_gbps": round(bandwidth, 1),
        "settings": {"model": "SmolLM2-135M-Instruct (embedded)", "temperature": 0.7, "top_p": 0.9,
                     "prompts": "compact testbed guided DRIFT prompts (the main job's), chat template, 2 samples each, "
                                "max(4, 2 x batch) per run"},
        "results": results, "speedups": speedups,
    }, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
