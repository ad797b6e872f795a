"""Per-token log-prob throughput, forward + backward: ours against naive and the peers.

    python benchmarks/logprob_throughput.py                   # CPU defaults: N=2048, H=896, V in {49152, 151936}
    python benchmarks/logprob_throughput.py --n 512 2048 8192 --h 896 5120 --v 49152 151936 --variants naive chunked

Every variant computes log p(target) for N tokens from hidden [N, H] and an lm_head weight [V, H]
and back-propagates a fixed random upstream gradient into both, all drawn on the device itself (a
seeded generator there: no host-to-device copy). Each timed run happens in a fresh
subprocess, so its peak memory is its own: on CPU the peak RSS above the RSS after the inputs were
built, on GPU the CUDA allocator's peak above what the inputs hold. "transient" is that peak minus
the hidden and weight gradient buffers every method must return. The --repeat rounds interleave
the variants (naive, trl, ..., then again), so a burst of load from other work on a shared
machine lands on all of them alike; the median is reported, with the load average per run.
Errors are max abs differences from an fp64 reference on the first --error-tokens tokens
(log-probs and their hidden gradients; a token's hidden gradient depends on its own row only,
so a slice is exact). Writes benchmarks/results/logprob_throughput_<device>.json, prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

VARIANTS = ("naive", "trl", "liger", "checkpointed", "chunked", "triton", "flash_attn")
DEFAULT_VARIANTS = ("naive", "trl", "liger", "chunked", "triton", "flash_attn")
OURS = ("chunked", "triton", "flash_attn")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# dense bf16 tensor-core peaks (TFLOP/s) by device name, for the fraction-of-peak column
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}
# matmul FLOPs each variant really executes for forward + backward, in units of N*H*V: the logits
# are 2, the hidden and weight gradients 2 each. Ours and the checkpointed variant recompute the
# logits in backward (8); naive and TRL keep them (6). Liger's fused linear cross-entropy computes
# the gradients inside its forward (6) only for a mean or sum loss; per-token log-probs need
# reduction="none", and there liger-kernel 0.8.5 defers them to backward and recomputes the logits
# (ops/fused_linear_cross_entropy.py: `ctx.defer_grads = reduction == "none" and needs_grad`, the
# forward runs with compute_gradients=False, and backward calls fused_linear_cross_entropy_forward
# again with compute_gradients=True): 2 + 2 + 2 + 2 = 8.
EXECUTED_FLOPS_PER_NHV = {"naive": 6, "trl": 6, "liger": 8, "checkpointed": 8, "chunked": 8, "triton": 8, "flash_attn": 8}


# ---- the variants: each maps (hidden, weight, targets) to log-probs with autograd ----


def _naive(hidden, weight, targets):
    # what peers do: full logits, upcast to fp32, log_softmax, gather
    logits = hidden @ weight.t()
    return torch.log_softmax(logits.float(), dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)


def _trl(hidden, weight, targets):
    from trl.trainer.utils import selective_log_softmax

    return selective_log_softmax(hidden @ weight.t(), targets)


def _liger(hidden, weight, targets):
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    return -LigerFusedLinearCrossEntropyLoss(reduction="none")(weight, hidden, targets)


def _checkpointed(hidden, weight, targets, chunk_tokens=256):
    # the obvious memory fix: 256-token chunks of full-vocab logits, recomputed in backward
    def chunk_logps(hidden_chunk, target_chunk):
        return _naive(hidden_chunk, weight, target_chunk)

    pieces = [
        torch.utils.checkpoint.checkpoint(
            chunk_logps, hidden[i : i + chunk_tokens], targets[i : i + chunk_tokens], use_reentrant=False
        )
        for i in range(0, hidden.shape[0], chunk_tokens)
    ]
    return torch.cat(pieces)


def _ours(impl):
    def run(hidden, weight, targets):
        from drift.kernels import token_logprobs

        return token_logprobs(hidden, weight, targets, impl=impl)

    return run


RUNNERS = {"naive": _naive, "trl": _trl, "liger": _liger, "checkpointed": _checkpointed}
RUNNERS.update({impl: _ours(impl) for impl in OURS})


def _unavailable_reason(variant: str, device: torch.device, dtype: torch.dtype) -> str | None:
    import importlib.util

    if variant in OURS:
        from drift.kernels import unavailable_reason

        return unavailable_reason(variant, device, dtype)
    package = {"trl": "trl", "liger": "liger_kernel"}.get(variant)
    if package and importlib.util.find_spec(package) is None:
        return f"{package} is not installed (pip install 'drift[dev]')"
    return None


# ---- the worker: one variant, one shape, in its own process ----


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _fp64_errors(logps, grad_hidden, hidden, weight, targets, grad_logps, n_tokens):
    hidden64 = hidden[:n_tokens].detach().double().requires_grad_()
    logits = hidden64 @ weight.detach().double().t()
    expected = torch.log_softmax(logits, dim=-1).gather(1, targets[:n_tokens].unsqueeze(1)).squeeze(1)
    (expected_grad,) = torch.autograd.grad(expected, hidden64, grad_logps[:n_tokens].double())
    return (
        (logps[:n_tokens].double() - expected).abs().max().item(),
        (grad_hidden[:n_tokens].double() - expected_grad).abs().max().item(),
    )


def worker(spec: dict) -> dict:
    """One timed forward+backward of one variant on one shape (and, if asked, its errors)."""
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    n_tokens, hidden_size, vocab = spec["n"], spec["h"], spec["v"]
    reason = _unavailable_reason(spec["variant"], device, dtype)
    if reason is not None:
        return dict(status="not runnable", reason=reason)
    runner = RUNNERS[spec["variant"]]
    # drawn on the device, in their dtype and in place: no host-to-device copy of a multi-GB weight,
    # and no temporary that raises the RSS high-water mark (CPU) before the baseline is taken
    generator = torch.Generator(device=device).manual_seed(0)
    on_device = dict(device=device, generator=generator)
    hidden = torch.randn(n_tokens, hidden_size, dtype=dtype, **on_device).requires_grad_()
    weight = torch.randn(vocab, hidden_size, dtype=dtype, **on_device)
    weight = weight.mul_(2.0 / hidden_size**0.5).requires_grad_()  # logits ~ N(0, 4)
    targets = torch.randint(0, vocab, (n_tokens,), **on_device)
    grad_logps = torch.randn(n_tokens, **on_device)
    try:
        # warm-up: imports, lazy library init and kernel compilation stay out of the timing; on CPU a
        # 16-token slice is enough, on GPU the full shape is needed for its compiled kernels
        warm = slice(None) if device.type == "cuda" else slice(0, 16)
        runner(hidden[warm].detach().requires_grad_(), weight, targets[warm]).backward(grad_logps[warm])
    except Exception as error:  # a peer that cannot run here is reported, not fatal
        return dict(status="not runnable", reason=f"{type(error).__name__}: {error}"[:400])
    weight.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline, max_rss_before = _rss_bytes(), _max_rss_bytes()
    start = time.perf_counter()
    logps = runner(hidden, weight, targets)
    logps.backward(grad_logps)
    _sync(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak_extra = torch.cuda.max_memory_allocated() - baseline
    else:
        max_rss_after = _max_rss_bytes()
        # if the run never rose above an earlier high-water mark its peak is unknown (null)
        peak_extra = max_rss_after - baseline if max_rss_after > max_rss_before else None
    grad_bytes = sum(t.grad.numel() * t.grad.element_size() for t in (hidden, weight))
    result = dict(status="ok", seconds=seconds, peak_extra_bytes=peak_extra, grad_buffer_bytes=grad_bytes)
    if spec["error_tokens"]:
        n_checked = spec["error_tokens"]
        errors = _fp64_errors(logps.detach(), hidden.grad, hidden, weight, targets, grad_logps, n_checked)
        result.update(max_abs_err_logps=errors[0], max_abs_err_grad_hidden=errors[1])
    return result


# ---- the driver ----


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with open("/proc/cpuinfo") as cpuinfo:
        models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    return f"{models[0] if models else platform.processor()}, {torch.get_num_threads()} threads"


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def _run_worker(spec: dict) -> dict:
    load = os.getloadavg()[0]
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    completed = subprocess.run(command, capture_output=True, text=True)
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        return dict(status="failed", reason=" | ".join(tail)[:400])
    return dict(json.loads(lines[-1]), load_average_1min=round(load, 2))


def _summarise(variant: str, shape: dict, runs: list[dict]) -> dict:
    """One row per (shape, variant): the median time and the largest peak over its runs."""
    row = dict(variant=variant, **shape)
    failed = next((run for run in runs if run["status"] != "ok"), None)
    if failed:
        return dict(row, status=failed["status"], reason=failed["reason"])
    seconds = [run["seconds"] for run in runs]
    peaks = [run["peak_extra_bytes"] for run in runs if run["peak_extra_bytes"] is not None]
    peak = max(peaks) if peaks else None
    median = statistics.median(seconds)
    row.update(
        status="ok",
        seconds_median=median,
        seconds=seconds,
        load_average_1min=[run["load_average_1min"] for run in runs],
        tokens_per_second=shape["n"] / median,
        peak_extra_bytes=peak,
        grad_buffer_bytes=runs[0]["grad_buffer_bytes"],
        transient_bytes=None if peak is None else peak - runs[0]["grad_buffer_bytes"],
        max_abs_err_logps=runs[0]["max_abs_err_logps"],
        max_abs_err_grad_hidden=runs[0]["max_abs_err_grad_hidden"],
    )
    if shape["device_type"] == "cuda":
        nhv = shape["n"] * shape["h"] * shape["v"]
        # the rate of the FLOPs the variant executes (recomputation included), and of the 6*N*H*V
        # the problem needs (the same yardstick for every variant: a throughput)
        row["tflops"] = EXECUTED_FLOPS_PER_NHV[variant] * nhv / median / 1e12
        row["tflops_model"] = 6 * nhv / median / 1e12
    return row


def _measure_shape(shape: dict, args) -> list[dict]:
    runs = {variant: [] for variant in args.variants}
    for round_index in range(args.repeat):
        for variant in args.variants:
            if runs[variant] and runs[variant][-1]["status"] != "ok":
                continue  # not runnable here: once is enough to say why
            error_tokens = args.error_tokens if round_index == 0 else 0
            run = _run_worker(dict(shape, device=args.device, variant=variant, error_tokens=error_tokens))
            runs[variant].append(run)
            outcome = f"{run['seconds']:.2f} s" if run["status"] == "ok" else run["status"]
            label = f"N={shape['n']} H={shape['h']} V={shape['v']} {variant} round {round_index + 1}"
            print(f"  {label}: {outcome}", file=sys.stderr, flush=True)
    return [_summarise(variant, shape, variant_runs) for variant, variant_runs in runs.items()]


def _compare_with_baselines(results: list[dict], peak_tflops: float | None) -> None:
    """Adds, to each of our rows, its ratios against naive (and Liger, and the GPU's peak)."""
    by_key = {(r["n"], r["h"], r["v"], r["variant"]): r for r in results if r["status"] == "ok"}
    for row in results:
        if row["variant"] not in OURS or row["status"] != "ok":
            continue
        naive = by_key.get((row["n"], row["h"], row["v"], "naive"))
        if naive:
            row["time_vs_naive"] = row["seconds_median"] / naive["seconds_median"]
            if row["transient_bytes"] is not None and naive["transient_bytes"]:
                row["transient_vs_naive"] = row["transient_bytes"] / naive["transient_bytes"]
        liger = by_key.get((row["n"], row["h"], row["v"], "liger"))
        if liger:
            row["throughput_vs_liger"] = liger["seconds_median"] / row["seconds_median"]
        if peak_tflops and "tflops" in row:
            row["fraction_of_bf16_peak"] = row["tflops"] / peak_tflops


def _gb(value) -> str:
    return "-" if value is None else f"{value / 1e9:.2f}"


def _print_table(results: list[dict]) -> None:
    print(
        f"{'N':>5} {'H':>5} {'V':>7} {'variant':<13} {'s':>7} {'tok/s':>8} {'peak GB':>7} {'trans GB':>8} "
        f"{'err logp':>8} {'err dh':>8} {'xnaive t':>8} {'xnaive m':>8} {'TFLOP/s':>7} {'model':>5}"
    )
    for r in results:
        if r["status"] != "ok":
            print(f"{r['n']:>5} {r['h']:>5} {r['v']:>7} {r['variant']:<13} {r['status']}: {r['reason'][:90]}")
            continue
        ratio_t = f"{r['time_vs_naive']:.2f}" if "time_vs_naive" in r else "-"
        ratio_m = f"{r['transient_vs_naive']:.3f}" if "transient_vs_naive" in r else "-"
        tflops = f"{r['tflops']:.0f}" if "tflops" in r else "-"
        tflops_model = f"{r['tflops_model']:.0f}" if "tflops_model" in r else "-"
        print(
            f"{r['n']:>5} {r['h']:>5} {r['v']:>7} {r['variant']:<13} {r['seconds_median']:>7.2f} "
            f"{r['tokens_per_second']:>8.0f} {_gb(r['peak_extra_bytes']):>7} {_gb(r['transient_bytes']):>8} {r['max_abs_err_logps']:>8.1e} "
            f"{r['max_abs_err_grad_hidden']:>8.1e} {ratio_t:>8} {ratio_m:>8} {tflops:>7} {tflops_model:>5}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", help="tokens (default 2048 on CPU; 512 2048 8192 on GPU)")
    parser.add_argument("--h", type=int, nargs="+", help="hidden size (default 896 on CPU; 896 5120 on GPU)")
    parser.add_argument("--v", type=int, nargs="+", default=[49152, 151936], help="vocab sizes")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per variant; the median is reported")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", help="float32 or bfloat16 (default float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--error-tokens", type=int, default=256, help="tokens checked against the fp64 reference")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, when not in the built-in table")
    parser.add_argument("--out", type=Path, help="JSON path (default results/logprob_throughput_<device>.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    n_values = args.n or ([512, 2048, 8192] if on_gpu else [2048])
    h_values = args.h or ([896, 5120] if on_gpu else [896])
    description = _device_description(device)
    peak_tflops = args.peak_tflops or (_peak_tflops(description) if on_gpu else None)
    load_start = os.getloadavg()
    results = []
    for vocab in args.v:
        for hidden_size in h_values:
            for n_tokens in n_values:
                shape = dict(n=n_tokens, h=hidden_size, v=vocab, dtype=dtype, device_type=device.type)
                results.extend(_measure_shape(shape, args))
    _compare_with_baselines(results, peak_tflops)
    _print_table(results)
    report = dict(
        device=description,
        device_type=device.type,
        dtype=dtype,
        torch=torch.__version__,
        liger_kernel=_version("liger-kernel"),
        repeat=args.repeat,
        load_average_start=[round(x, 2) for x in load_start],
        load_average_end=[round(x, 2) for x in os.getloadavg()],
        bf16_peak_tflops=peak_tflops,
        tflops=("tflops: the FLOPs each variant executes (EXECUTED_FLOPS_PER_NHV x N*H*V: recomputation counted) per "
                "second; tflops_model: 6*N*H*V per second for every variant"),
        memory=(
            "CUDA allocator peak above the inputs"
            if on_gpu
            else "peak RSS of a fresh subprocess above its RSS after building the inputs"
        ),
        transient="peak extra memory minus the hidden and weight gradient buffers",
        errors=f"max abs error vs an fp64 reference on the first {args.error_tokens} tokens: log-probs and d hidden",
        results=results,
    )
    device_slug = re.sub(r"[^a-z0-9]+", "_", description.lower()).strip("_") if on_gpu else "cpu"
    out = args.out or RESULTS_DIR / f"logprob_throughput_{device_slug}.json"
    from drift.io import write_json_atomic

    write_json_atomic(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
