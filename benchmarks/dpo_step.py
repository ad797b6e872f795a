"""The same DPO run through our trainer and through TRL, side by side, in one invocation.

    python benchmarks/dpo_step.py                     # SmolLM2-135M, 32 pairs, batch 4, max length 512
    python benchmarks/dpo_step.py --variants ours_fp32 ours_bf16 trl_precompute_accum --pairs 16
    python benchmarks/dpo_step.py --model random:<folder with SmolLM2's config.json and tokenizer>

Same seeded word-salad pairs (~180-word prompts, ~140-word responses), same model, batch, max
length, optimizer (RMSprop, lr 5e-7, linear schedule, warmup 0.1), beta 0.1, no NLL term, one
epoch. Each variant runs in a fresh subprocess so its peak RSS is its own. A variant's precision is
its suffix (``_fp32``, ``_bf16``: bf16 compute, fp32 master weights, for ours (on a bf16 copy of the
weights, drift.compute_weights) and for TRL alike (HF Trainer's ``bf16=True``, autocast)); without one, ours takes ``--precision`` and TRL
runs bf16 on a GPU and fp32 on a CPU; ``_ckpt`` runs ours with gradient checkpointing
(model.gradient_checkpointing=true: each layer's activations recomputed in backward). Reports pairs/s and
tokens/s (median step after the first), peak memory, reference forwards and time, the final loss,
and padding share; prints a table and writes benchmarks/results/dpo_step_<device>.json. Where the
embedded model cannot be installed (a GPU node without network), ``--model random:<folder>`` runs
seeded random weights in its shape (drift.model.RANDOM_PREFIX): the same shapes and FLOPs, so the
speed and memory figures hold; the losses mean nothing, and the report says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = (
    "the of and to in is was for on that with as by at from his her they this which or had an be are not but "
    "have one all were when there can more if out so said what up its about into than them only other new some "
    "time could these two may then do first any my now such like our over man me even most made after also did "
    "many before must through back years where much your way well down should because each just those people "
    "how too little state good very make world still own see men work long get here between both life being under "
    "never day same another know while last might us great old year off come since against go came right used take "
    "three river garden engine theory market winter silver letter window number system paper music"
).split()
VARIANTS = ("ours", "ours_fp32", "ours_bf16", "ours_fp32_ckpt", "ours_bf16_ckpt", "ours_torchrun2", "trl", "trl_precompute", "trl_precompute_accum",
            "trl_bf16", "trl_precompute_bf16", "trl_precompute_accum_bf16", "trl_liger")
# what `python benchmarks/dpo_step.py` runs on a CPU: ours and TRL's variants in both precisions
CPU_DEFAULT = ("ours_fp32", "ours_bf16", "trl", "trl_precompute", "trl_precompute_accum", "trl_precompute_accum_bf16")


def variant_precision(variant: str, requested: str) -> str:
    """fp32 or bf16 from the variant's name (``ours_bf16``, ``ours_bf16_ckpt``), else ``requested`` (--precision)."""
    for suffix in ("fp32", "bf16"):
        if f"_{suffix}" in variant:
            return suffix
    return requested


def variant_checkpointing(variant: str, requested: bool) -> bool:
    """Ours with gradient checkpointing: a ``_ckpt`` variant, or every one of ours under --gradient-checkpointing."""
    return variant.endswith("_ckpt") or requested
OUR_SEED = 42  # trainer.seed


def word_salad_pairs(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."

    return [
        {
            "prompt": words(rng.randint(160, 200)),
            "chosen": words(rng.randint(120, 160)),
            "rejected": words(rng.randint(120, 160)),
        }
        for _ in range(count)
    ]


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---- our trainer ----------------------------------------------------------------------------


def _our_config(args, out: Path):
    from drift.config import Config, LoggingConfig, MethodConfig, ModelConfig, TrainerConfig

    return Config(
        model=ModelConfig(name="smollm2", name_or_path=args.model, gradient_checkpointing=variant_checkpointing(args.variant, args.gradient_checkpointing)),
        method=MethodConfig(name="warmstart", beta=0.1, rpo_alpha=0.0, warmstart_epochs=1),
        trainer=TrainerConfig(
            lr=5e-7, per_device_batch_size=args.batch // args.world, max_length=args.max_length,
            max_prompt_length=3 * args.max_length // 4, precision=variant_precision(args.variant, args.precision),
            logprob_impl=args.logprob_impl, max_tokens_per_forward=args.max_tokens_per_forward,
        ),
        logging=LoggingConfig(wandb_mode="disabled", progress_bar=False),
        run_name="bench",
        output_dir=str(out),
    )


def run_ours(args, out: Path) -> dict:
    from drift.data.records import PreferencePair
    from drift.io import read_done, read_jsonl
    from drift.model import load_tokenizer, resolve_source
    from drift.parallel import init_runtime
    from drift.tokenize import tokenize_pairs
    from drift.train import Stage, train_stage

    config = _our_config(args, out)
    runtime = init_runtime(config.trainer.device, config.trainer.precision)
    if runtime.is_main:
        resolve_source(config.model)
    if runtime.distributed:
        import torch.distributed as dist

        dist.barrier()
    tokenizer = load_tokenizer(config.model)
    raw = word_salad_pairs(args.pairs, args.seed)
    pairs = [
        PreferencePair(f"p{i}", ({"role": "user", "content": r["prompt"]},), r["chosen"], r["rejected"]) for i, r in enumerate(raw)
    ]
    tokenized, rejects, _ = tokenize_pairs(pairs, tokenizer, max_length=args.max_length, max_prompt_length=3 * args.max_length // 4)
    assert not rejects, rejects
    stage = Stage("bench", out / "stage", tokenized, None, None, 1, out / "cache")
    started = time.perf_counter()
    train_stage(config, runtime, stage, tokenizer)
    total = time.perf_counter() - started
    result = {"rank": runtime.rank, "peak_rss_bytes": peak_rss_bytes(), "wall_seconds": total}
    if runtime.is_main:
        history = read_jsonl(stage.folder / "metrics.jsonl")
        done = read_done(stage.folder)
        result.update(
            step_seconds=[r["seconds"] for r in history],
            step_tokens=[r["tokens"] for r in history],
            step_pairs=[r["pairs"] for r in history],
            padding_share=sum(r["padding_share"] * r["tokens"] for r in history) / sum(r["tokens"] for r in history),
            final_loss=history[-1]["loss"],
            losses=[r["loss"] for r in history],
            reference_sequences=done["reference_sequences"],
            reference_seconds=done["reference_seconds"],
        )
        result.update(_reference_reuse(args, config, runtime, tokenizer, tokenized, out))
    if runtime.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    return result


def _reference_reuse(args, config, runtime, tokenizer, tokenized, out: Path) -> dict:
    """Two 'iterations' with method.reference=initial: new chosen sides, the same DSAT rejected sides.

    Counts the reference forwards each one runs: the DSAT sides are computed once for the run.
    """
    if runtime.distributed:
        return {}
    from drift.io import read_done
    from drift.model import resolve_source
    from drift.tokenize import TokenizedPair, TokenSequence
    from drift.train import Stage, train_stage

    initial = resolve_source(config.model)
    subset = tokenized[: config.trainer.per_device_batch_size]
    counts = []
    for iteration in (1, 2):
        # a fresh "sample" per iteration: the chosen response shifted by the iteration number
        fresh = [
            TokenizedPair(p.pair_id, TokenSequence(p.chosen.prompt_ids, p.chosen.response_ids[iteration:]), p.rejected)
            for p in subset
        ]
        stage = Stage(f"iter_{iteration}", out / f"reuse_{iteration}", fresh, initial, initial, 1, out / "reuse_cache")
        train_stage(config, runtime, stage, tokenizer)
        counts.append(read_done(stage.folder)["reference_sequences"])
    return {"reference_sequences_per_iteration_initial_reference": counts}


# ---- TRL ------------------------------------------------------------------------------------


def run_trl(args, out: Path, *, precompute: bool, liger: bool, accum: int = 1, bf16: bool | None = None) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from drift.config import ModelConfig
    from drift.model import resolve_source
    from drift.train import epoch_order

    source = resolve_source(ModelConfig(name_or_path=args.model))
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    raw = word_salad_pairs(args.pairs, args.seed)
    # our trainer's epoch order, fed to TRL sequentially: both see the same pairs at every step,
    # so their losses can be compared step by step
    raw = [raw[i] for i in epoch_order(len(raw), OUR_SEED, 0)]
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in raw
        ]
    )
    step_seconds: list[float] = []
    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks.setdefault("train_begin", time.perf_counter())

        def on_step_begin(self, *a, **k):
            marks["step"] = time.perf_counter()
            marks.setdefault("first_step", marks["step"])

        def on_step_end(self, *a, **k):
            step_seconds.append(time.perf_counter() - marks["step"])

    config = DPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=args.batch // accum, gradient_accumulation_steps=accum,
        max_length=args.max_length, train_sampling_strategy="sequential",
        learning_rate=5e-7, optim="rmsprop", lr_scheduler_type="linear", beta=0.1,
        # same warmup as ours: ceil(0.1 * total steps)
        warmup_steps=math.ceil(0.1 * math.ceil(args.pairs / args.batch)),
        num_train_epochs=1, precompute_ref_log_probs=precompute, use_liger_kernel=liger, report_to=[],
        save_strategy="no", logging_steps=1, seed=OUR_SEED, use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() if bf16 is None else bf16, dataloader_num_workers=0,
    )
    # TRL precomputes the reference log-probs while the trainer is built: time that call
    precompute_seconds = []
    original_precompute = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *a, **k):
        begun = time.perf_counter()
        result = original_precompute(self, *a, **k)
        precompute_seconds.append(time.perf_counter() - begun)
        return result

    DPOTrainer._precompute_ref_logps = timed_precompute
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Timer()])
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    tokens_per_pair = _trl_tokens_per_pair(tokenizer, raw, args.max_length)
    return {
        "rank": 0,
        "peak_rss_bytes": peak_rss_bytes(),
        "wall_seconds": total,
        "step_seconds": step_seconds,
        "step_pairs": [args.batch] * len(step_seconds),
        "step_tokens": [int(tokens_per_pair * args.batch)] * len(step_seconds),
        "final_loss": losses[-1] if losses else None,
        "losses": losses,
        # without the precompute pass the reference runs on every step
        "reference_seconds": sum(precompute_seconds) if precompute else None,
        "reference_sequences": 2 * args.pairs if precompute else 2 * args.batch * len(step_seconds),
    }


def _trl_tokens_per_pair(tokenizer, raw, max_length) -> float:
    total = 0
    for r in raw:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True)
        for side in ("chosen", "rejected"):
            total += min(max_length, len(tokenizer(prompt + r[side] + "<|im_end|>", add_special_tokens=False)["input_ids"]))
    return total / len(raw)


# ---- padding --------------------------------------------------------------------------------


def padding_report(args) -> dict:
    """Padding share of the step's batches, ours (packed) beside one right-padded row per sequence.

    On the synthetic pairs and on the fixture's warm-start pairs, batches in our epoch order.
    """
    from drift.config import ModelConfig
    from drift.data import load_records
    from drift.data.config import DataConfig
    from drift.data.records import PreferencePair
    from drift.model import load_tokenizer
    from drift.tokenize import collate_sequences, tokenize_pairs
    from drift.train import epoch_order

    tokenizer = load_tokenizer(ModelConfig(name_or_path=args.model))
    synthetic = [
        PreferencePair(f"p{i}", ({"role": "user", "content": r["prompt"]},), r["chosen"], r["rejected"])
        for i, r in enumerate(word_salad_pairs(args.pairs, args.seed))
    ]
    report = {}
    for name, pairs in (("synthetic", synthetic), ("fixture", load_records(DataConfig(name="fixture")).seed_pairs)):
        tokenized, _, _ = tokenize_pairs(pairs, tokenizer, max_length=args.max_length, max_prompt_length=3 * args.max_length // 4)
        order = epoch_order(len(tokenized), OUR_SEED, 0)
        row = {"pairs": len(tokenized)}
        for layout, packed in (("ours_packed", True), ("padded_rows", False)):
            real = padding = 0
            for start in range(0, len(order), args.batch):
                step = [tokenized[i] for i in order[start : start + args.batch]]
                batch = collate_sequences([p.chosen for p in step] + [p.rejected for p in step], tokenizer.pad_token_id, packed=packed)
                real, padding = real + batch.num_tokens, padding + batch.num_padding
            row[f"{layout}_padding_share"] = padding / (real + padding)
        report[name] = row
    return report


# ---- orchestration --------------------------------------------------------------------------


def child(args) -> None:
    out = Path(args.out_dir)
    if args.variant.startswith("ours"):
        result = run_ours(args, out)
    else:
        suffix = variant_precision(args.variant, "")
        result = run_trl(
            args, out, precompute=args.variant.startswith("trl_precompute"), liger=args.variant == "trl_liger",
            accum=args.batch if args.variant.startswith("trl_precompute_accum") else 1,
            bf16={"bf16": True, "fp32": False}.get(suffix),
        )
    from drift.io import write_json_atomic

    write_json_atomic(out / f"result_rank{result['rank']}.json", result, indent=None)


def launch(variant: str, args) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"dpo_step_{variant}_"))
    base = [
        str(Path(__file__).resolve()), "--child", "--variant", variant, "--out-dir", str(out), "--pairs", str(args.pairs),
        "--batch", str(args.batch), "--max-length", str(args.max_length), "--seed", str(args.seed), "--model", args.model,
        "--logprob-impl", args.logprob_impl, "--max-tokens-per-forward", str(args.max_tokens_per_forward),
        "--precision", args.precision, *(["--gradient-checkpointing"] if args.gradient_checkpointing else []),
    ]
    if variant == "ours_torchrun2":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *base, "--world", "2"]
    else:
        command = [sys.executable, *base]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if variant == "ours_torchrun2":
        env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-1500:]
        return {"variant": variant, "error": f"exit {proc.returncode}: {tail}"}
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("result_rank*.json"))]
    main = next(r for r in ranks if r["rank"] == 0)
    timed = main["step_seconds"][1:] or main["step_seconds"]  # drop the warm-up step
    median_seconds = statistics.median(timed)
    index = main["step_seconds"].index(timed[len(timed) // 2]) if timed else 0
    pairs_per_step = statistics.median(main["step_pairs"])
    tokens_per_step = statistics.median(main["step_tokens"])
    import torch

    trl_default = "bf16" if torch.cuda.is_available() else "fp32"
    return {
        "variant": variant,
        "precision": variant_precision(variant, args.precision if variant.startswith("ours") else trl_default),
        "gradient_checkpointing": variant.startswith("ours") and variant_checkpointing(variant, args.gradient_checkpointing),
        "steps": len(main["step_seconds"]),
        "median_step_seconds": median_seconds,
        "pairs_per_second": pairs_per_step / median_seconds,
        "tokens_per_second": tokens_per_step / median_seconds,
        "peak_rss_gb": max(r["peak_rss_bytes"] for r in ranks) / 1e9,
        "peak_rss_gb_all_processes": sum(r["peak_rss_bytes"] for r in ranks) / 1e9,
        "reference_sequences": main.get("reference_sequences"),
        "reference_seconds": main.get("reference_seconds"),
        "final_loss": main.get("final_loss"),
        "losses": main.get("losses"),
        "padding_share": main.get("padding_share"),
        "reference_sequences_per_iteration_initial_reference": main.get("reference_sequences_per_iteration_initial_reference"),
        "process_seconds": time.perf_counter() - started,
        "_index": index,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=None, choices=VARIANTS,
                        help=f"default: every variant on a GPU; on a CPU {' '.join(CPU_DEFAULT)}")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="global batch (pairs per optimizer step)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="embedded:smollm2",
                        help="a model source as model.name_or_path takes it; random:<folder> for seeded random weights in its shape")
    parser.add_argument("--logprob-impl", default="auto")
    parser.add_argument(
        "--precision", default="auto", choices=("auto", "bf16", "fp32"),
        help="ours: trainer.precision (auto: bf16 on GPU, fp32 on CPU); TRL runs bf16 on GPU either way",
    )
    parser.add_argument(
        "--max-tokens-per-forward", type=int, default=1024,
        help="ours: trainer.max_tokens_per_forward (the step's pairs split over forwards of at most this many tokens; 0: one forward)",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="ours: model.gradient_checkpointing=true (less activation memory, the forward run twice)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/dpo_step_<device>.json)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    return parser


def model_weights(model: str) -> str:
    """Prepares the model once, before any variant starts (the embedded one dequantized, random
    weights built and cached), and says what its weights are; exits with a sentence if it cannot."""
    from drift.config import ModelConfig
    from drift.model import RANDOM_PREFIX, RANDOM_WEIGHTS_NOTE, resolve_source

    try:
        resolve_source(ModelConfig(name_or_path=model))
    except (RuntimeError, OSError, ValueError) as error:
        sys.exit(f"dpo_step.py: --model {model}: {error}")
    return f"random weights ({RANDOM_WEIGHTS_NOTE})" if model.startswith(RANDOM_PREFIX) else "trained weights"


def main() -> None:
    args = build_parser().parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        child(args)
        return

    import torch

    weights = model_weights(args.model)
    print(f"model {args.model}: {weights}", flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.variants is None:
        args.variants = list(VARIANTS) if device == "cuda" else list(CPU_DEFAULT)
    if device == "cpu" and "trl_liger" in args.variants:
        args.variants.remove("trl_liger")
        liger_note = "not run: Liger's Triton kernels need a GPU (they do not run on CPU, even under TRITON_INTERPRET)"
    else:
        liger_note = None
    rows = []
    for variant in args.variants:
        print(f"running {variant} ...", flush=True)
        rows.append(launch(variant, args))
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("losses", "_index")}), flush=True)
    if liger_note:
        rows.append({"variant": "trl_liger", "error": liger_note})

    trl_rows = [r for r in rows if r["variant"].startswith("trl") and "error" not in r]
    # TRL's best variant in pairs/s, whatever its precision: the one each of ours is held against
    best_trl = max(trl_rows, key=lambda r: r["pairs_per_second"]) if trl_rows else None
    for r in rows:
        if "error" in r or best_trl is None:
            continue
        r["speed_vs_trl_best"] = r["pairs_per_second"] / best_trl["pairs_per_second"]
        r["memory_vs_trl_best"] = r["peak_rss_gb"] / best_trl["peak_rss_gb"]
        same = [t for t in trl_rows if t["precision"] == r["precision"] and t.get("losses")]
        if r["variant"].startswith("ours") and same and r.get("losses"):
            # every TRL variant trains the same pairs in the same order: its per-step losses are ours to match
            r["max_loss_difference_vs_trl"] = max(abs(a - b) for t in same for a, b in zip(r["losses"], t["losses"]))
    print(f"\n{args.model}: {weights}" + (f"; TRL's best: {best_trl['variant']}" if best_trl else ""))
    print(f"{'variant':<26} {'s/step':>7} {'pairs/s':>8} {'tok/s':>7} {'peak RSS GB':>11} {'ref seqs':>8} {'ref s':>6} "
          f"{'final loss':>10} {'vs TRL best':>11} {'RSS vs best':>11} {'max |Δloss| vs TRL':>18}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<26} {r['error'][:100]}")
            continue
        ratio = f"{r['speed_vs_trl_best']:.2f}x" if best_trl else "-"
        memory = f"{r['memory_vs_trl_best']:.2f}x" if best_trl else "-"
        loss = f"{r['max_loss_difference_vs_trl']:.1e}" if r.get("max_loss_difference_vs_trl") is not None else "-"
        ref_s = f"{r['reference_seconds']:.1f}" if r.get("reference_seconds") is not None else "-"
        print(
            f"{r['variant']:<26} {r['median_step_seconds']:>7.2f} {r['pairs_per_second']:>8.3f} {r['tokens_per_second']:>7.0f} "
            f"{r['peak_rss_gb']:>11.2f} {r['reference_sequences']:>8} {ref_s:>6} {r['final_loss']:>10.5f} {ratio:>11} "
            f"{memory:>11} {loss:>18}"
        )
    for r in rows:
        if r.get("padding_share") is not None:
            print(f"{r['variant']}: padding share {100 * r['padding_share']:.2f}% of tokens")
        if r.get("reference_sequences_per_iteration_initial_reference"):
            print(f"{r['variant']}: reference forwards per iteration with method.reference=initial: "
                  f"{r['reference_sequences_per_iteration_initial_reference']}")
    padding = padding_report(args)
    for name, row in padding.items():
        print(
            f"padding on the {name} pairs ({row['pairs']}): ours {100 * row['ours_packed_padding_share']:.2f}% of tokens, "
            f"one padded row per sequence {100 * row['padded_rows_padding_share']:.1f}%"
        )
    report = {
        "benchmark": "dpo_step",
        "padding": padding,
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(),
        "best_trl_variant": best_trl["variant"] if best_trl else None,
        "settings": {k: getattr(args, k) for k in ("pairs", "batch", "max_length", "seed", "model", "logprob_impl",
                                                   "max_tokens_per_forward", "precision", "gradient_checkpointing")},
        "weights": weights,
        "rows": [{k: v for k, v in r.items() if k != "_index"} for r in rows],
    }
    path = Path(args.out or ROOT / "benchmarks" / "results" / f"dpo_step_{device}.json")
    from drift.io import write_json_atomic

    write_json_atomic(path, report)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
