"""The paper's gradient bound, measured: per-pair gradients on a seeded sample of one iteration's pairs.

  python launch/analyze.py gradient_check run=runs/A iteration=k [sample=16] [seed=0] [tau=0.5]
                           [reference=PATH] [dtype=fp32|fp64] [device=auto|cpu|cuda] [out=DIR]

For each sampled pair i, with the policy at the END of iteration k and the reference that iteration
trained against (the paper's §5, Eq. 3-4):

  s_i = β·[(log π − log π_ref)(y⁺) − (log π − log π_ref)(y⁻)],   d_i = ∇θ[log π(y⁺|x) − log π(y⁻|x)]

(one backward per pair, over every trainable parameter), and for the mean DPO loss over the sample
L = mean_i −log σ(s_i), whose gradient is ∇L = −β·mean_i σ(−s_i)·d_i:

  measured      ‖∇L‖
  paper_bound   (β/4)·√Var(s)·√E‖d‖²           Proposition 1 (Eq. 9/10), Var over the sample (÷n)
  variance_bound  β·√Var(σ(−s))·√E‖d‖²         the step of its proof before "σ is 1/4-Lipschitz"
  mean_direction_term  β·E[σ(−s)]·‖E d‖         what the proof drops by assuming E[d] = 0

The proposition assumes y⁺ and y⁻ exchangeable under the policy (a SPIN fixed point), so E[d] = 0.
Without that assumption only measured ≤ variance_bound + mean_direction_term ≤ paper_bound +
mean_direction_term holds (exactly, on the sample). DRIFT's pairs are not exchangeable — the point of
the method — so measured above paper_bound is expected there; SPIN near its fixed point should sit
under it. Lemma 1 is reported too: E‖∇ℓ‖ = mean_i β·σ(−s_i)·‖d_i‖ ≥ β·τ·P(σ(−s) ≥ τ)·E[‖d‖ | σ(−s) ≥ τ].

The loss here is the paper's pure DPO loss: the trainer's NLL term (method.rpo_alpha) is left out,
and the metrics' grad_norm (a training batch, DPO + NLL, before the update) is not this number.

Off by default: a separate command, never run during training. Cost: one forward per sampled
sequence with the reference, one forward + backward per pair with the policy, and memory for the
model, one gradient and two parameter-sized accumulators.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch

from drift.analysis.dynamics import GRADIENT_CHECK_HEADER, GRADIENT_CHECK_RULE, AnalysisInputError, gradient_check_row
from drift.checks import Device, check, check_choice
from drift.config import MethodConfig, ModelConfig, TrainerConfig
from drift.data.config import DataConfig
from drift.io import read_done, read_jsonl, write_json_atomic, write_text_atomic

Dtype = Literal["fp32", "fp64"]
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


@dataclass
class GradientCheckConfig:
    run: Optional[str] = None  # the run folder (required)
    iteration: Optional[int] = None  # k: the policy at the end of iteration k (required)
    # pairs drawn (seeded) from the iteration's
    sample: int = 16
    seed: int = 0
    tau: float = 0.5
    # default: the model the iteration trained against
    reference: Optional[str] = None
    dtype: str = "fp32"  # Dtype
    device: str = "auto"  # Device
    # default: <run>/analysis/gradient_check/iter_<k>
    out: Optional[str] = None
    # the run's config.yaml, when it is not <run>/.hydra/config.yaml
    config: Optional[str] = None

    def validate(self) -> None:
        for key in ("run", "iteration"):
            check(getattr(self, key) not in (None, ""),
                  f"give {key}= (e.g. run=runs/drift_smollm2_fixture iteration=1)")
        check(self.sample >= 2, f"sample must be >= 2 (Var(s) needs two pairs), got {self.sample}")
        check(0 < self.tau <= 1, f"tau must be in (0, 1], got {self.tau}")
        check_choice("dtype", self.dtype, Dtype)
        check_choice("device", self.device, Device)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run) / "analysis" / "gradient_check" / f"iter_{self.iteration}"


CONFIG = GradientCheckConfig


# ---- pure numbers -------------------------------------------------------------------------------


def bound_terms(
    logits: list[float], d_sq_norms: list[float], weighted_d_sum_norm: float, d_sum_norm: float, beta: float, tau: float
) -> dict:
    """The bound's terms from per-pair s_i and ‖d_i‖², and the norms of Σσ(−s_i)d_i and Σd_i.

    Everything is over the sample's empirical distribution (means divide by n), where the
    Cauchy–Schwarz steps of the proof hold exactly.
    """
    n = len(logits)
    s = torch.tensor(logits, dtype=torch.float64)
    weights = torch.sigmoid(-s)
    d_norms = torch.tensor(d_sq_norms, dtype=torch.float64).sqrt()
    mean_d_sq = float(torch.tensor(d_sq_norms, dtype=torch.float64).mean())
    var_s = float(s.var(unbiased=False))
    var_weight = float(weights.var(unbiased=False))
    in_event = weights >= tau
    measured = beta * weighted_d_sum_norm / n
    paper_bound = beta / 4 * math.sqrt(var_s) * math.sqrt(mean_d_sq)
    mean_direction_term = beta * float(weights.mean()) * d_sum_norm / n
    return {
        "sample_size": n,
        "mean_s": float(s.mean()),
        "var_s": var_s,
        "mean_gradient_weight": float(weights.mean()),
        "var_gradient_weight": var_weight,
        "share_at_least_tau": float(in_event.double().mean()),
        "mean_sq_d_norm": mean_d_sq,
        "mean_d_norm": d_sum_norm / n,  # ‖E d‖
        "measured_grad_norm": measured,
        "paper_bound": paper_bound,
        "variance_bound": beta * math.sqrt(var_weight) * math.sqrt(mean_d_sq),
        "mean_direction_term": mean_direction_term,
        "general_bound": paper_bound + mean_direction_term,
        "paper_bound_holds": measured <= paper_bound,
        "mean_pair_grad_norm": float((beta * weights * d_norms).mean()),  # E‖∇ℓ‖
        "lemma1_lower_bound": float(beta * tau * (d_norms * in_event).sum() / n),  # β·τ·P(E)·E[‖d‖ | E]
    }


def sample_indices(count: int, sample: int, seed: int) -> list[int]:
    """A seeded sample (in file order) of ``sample`` indices out of ``count``; all of them if fewer."""
    return sorted(random.Random(seed).sample(range(count), min(sample, count)))


# ---- what the iteration trained on and against --------------------------------------------------


def load_run_config(run_dir: Path, config_path: Path | None = None):
    """The run's validated Config from the .hydra/config.yaml Hydra writes into every run folder."""
    from omegaconf import OmegaConf

    from drift.compose import structured
    from drift.config import Config, ConfigError

    path = config_path or run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        raise AnalysisInputError(
            f"gradient_check: {path} not found; the run's config tells which pairs, tokenizer settings and reference "
            f"it used. Pass config=PATH to the config.yaml of the command that made {run_dir}"
        )
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    try:
        return structured(raw, Config)
    except ConfigError as error:
        raise AnalysisInputError(f"gradient_check: {path}: {error}") from None


def initial_source(model_cfg: ModelConfig, run_dir: Path) -> str:
    from drift.model import TINY_PREFIX, resolve_source

    # tiny models are saved once into the run (drift.pipeline.initial_model_source)
    return str(run_dir / "initial_model") if model_cfg.name_or_path.startswith(TINY_PREFIX) else resolve_source(model_cfg)


def reference_source(model_cfg: ModelConfig, method_cfg: MethodConfig, run_dir: Path, iteration: int) -> str:
    """What drift.pipeline.run trained iteration k against."""
    initial = initial_source(model_cfg, run_dir)
    if iteration == 0 or method_cfg.reference == "initial":
        return initial
    previous = iteration - 1
    if previous == 0 and method_cfg.warmstart_epochs <= 0:
        return initial
    return str(run_dir / f"iter_{previous}" / "train" / "model")


def iteration_pairs(data_cfg: DataConfig, run_dir: Path, iteration: int):
    """The PreferencePairs iteration k trained on (runs older than iter_0/data/pairs.jsonl: the warm
    start's seed pairs are rebuilt from the data)."""
    from drift.data.records import pair_from_row

    path = run_dir / "iter_0" / "data" / "pairs.jsonl" if iteration == 0 else run_dir / f"iter_{iteration}" / "pairs" / "pairs.jsonl"
    if iteration == 0 and not path.exists():
        from drift.data import load_records

        return list(load_records(data_cfg).seed_pairs)
    if not path.exists():
        raise AnalysisInputError(f"gradient_check: {path} not found; iteration {iteration} has not built its pairs")
    return [pair_from_row(row) for row in read_jsonl(path)]


# ---- the measurement ----------------------------------------------------------------------------


def _logprob_model(model_cfg: ModelConfig, trainer: TrainerConfig, source: str, device: torch.device, vocab_size: int):
    """The checkpoint at ``source`` in fp32 (as the trainer loads it), wrapped as the trainer wraps it."""
    from drift.model import load_model
    from drift.parallel import SequenceLogprobModel

    causal_lm = load_model(model_cfg, dtype=torch.float32, seed=trainer.seed, source=source, vocab_size=vocab_size)
    model = SequenceLogprobModel(causal_lm, trainer.logprob_impl, packed=trainer.packing, share_prompts=trainer.share_prompts)
    # eval: no dropout, so every pair's gradient is a function of the weights alone
    return model.to(device).eval()


def measure(policy, reference, pairs, beta: float, tau: float, pad_id: int, device: torch.device) -> dict:
    """s_i and d_i per pair (one backward each), accumulated into the bound's terms."""
    from drift.parallel import sequence_logps
    from drift.tokenize import collate_sequences

    parameters = [p for p in policy.parameters() if p.requires_grad]
    accumulate_dtype = torch.promote_types(parameters[0].dtype, torch.float32)
    d_sum = [torch.zeros_like(p, dtype=accumulate_dtype) for p in parameters]
    weighted_d_sum = [torch.zeros_like(p, dtype=accumulate_dtype) for p in parameters]
    rows = []
    for pair in pairs:
        batch = collate_sequences([pair.chosen, pair.rejected], pad_id, packed=policy.packed, share_prompts=policy.share_prompts).to(device)
        with torch.no_grad():
            reference_totals, _ = sequence_logps(reference, batch)
        totals, _ = sequence_logps(policy, batch)
        log_ratio_gap = totals[0] - totals[1]
        gradient = torch.autograd.grad(log_ratio_gap, parameters, allow_unused=True)
        s = beta * (float(log_ratio_gap.detach()) - float(reference_totals[0] - reference_totals[1]))
        weight = 1.0 / (1.0 + math.exp(s)) if s < 700 else 0.0  # σ(−s)
        d_sq_norm = 0.0
        for total, weighted, grad in zip(d_sum, weighted_d_sum, gradient):
            if grad is None:  # a parameter these tokens never reach (e.g. an unused embedding row's tensor)
                continue
            grad = grad.to(accumulate_dtype)
            total.add_(grad)
            weighted.add_(grad, alpha=weight)
            d_sq_norm += float(grad.pow(2).sum())
        rows.append({
            "pair_id": pair.pair_id,
            "logit": s,
            "gradient_weight": weight,
            "d_norm": math.sqrt(d_sq_norm),
            "d_sq_norm": d_sq_norm,
            "policy_chosen_logp": float(totals[0].detach()),
            "policy_rejected_logp": float(totals[1].detach()),
            "reference_chosen_logp": float(reference_totals[0]),
            "reference_rejected_logp": float(reference_totals[1]),
            "chosen_tokens": len(pair.chosen.response_ids),
            "rejected_tokens": len(pair.rejected.response_ids),
        })
    terms = bound_terms(
        [r["logit"] for r in rows], [r["d_sq_norm"] for r in rows], _norm(weighted_d_sum), _norm(d_sum), beta, tau
    )
    return {**terms, "pairs": rows}


def _norm(tensors: list[torch.Tensor]) -> float:
    """The Euclidean norm of the vector all the tensors make together."""
    return math.sqrt(sum(float(t.pow(2).sum()) for t in tensors))


def check_iteration(run_dir: Path, iteration: int, *, sample: int = 16, seed: int = 0, tau: float = 0.5,
                    reference: str | None = None, dtype: str = "fp32", device: str = "auto", config_path: Path | None = None) -> dict:
    from drift.model import load_tokenizer
    from drift.parallel import Runtime
    from drift.reference import weights_fingerprint
    from drift.tokenize import tokenize_pairs

    started = time.perf_counter()
    config = load_run_config(run_dir, config_path)
    stage = run_dir / f"iter_{iteration}" / "train"
    policy_source = stage / "model"
    if not (policy_source / "config.json").exists():
        raise AnalysisInputError(
            f"gradient_check: {policy_source} holds no model; iteration {iteration} has not finished training "
            f"(run the pipeline to the end of that iteration)"
        )
    reference_path = reference or reference_source(config.model, config.method, run_dir, iteration)
    # a folder of this run must be there; a hub name (the initial model of a non-tiny run) is load_model's to find
    if Path(reference_path).is_relative_to(run_dir) and not Path(reference_path).exists():
        raise AnalysisInputError(
            f"gradient_check: reference {reference_path} not found; pass reference=PATH to the model iteration {iteration} trained against"
        )
    target = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    # the tokenizer the pipeline used is saved beside every checkpoint; tokenization as in drift.pipeline._tokenize
    tokenizer = load_tokenizer(config.model, source=str(policy_source))
    tokenized, rejects, _ = tokenize_pairs(
        iteration_pairs(config.data, run_dir, iteration), tokenizer, max_length=config.trainer.max_length,
        max_prompt_length=config.trainer.max_prompt_length, prompt_format=config.data.prompt_format,
    )
    if not tokenized:
        raise AnalysisInputError(f"gradient_check: no pair of iteration {iteration} survives tokenization ({len(rejects)} rejected)")
    chosen = [tokenized[i] for i in sample_indices(len(tokenized), sample, seed)]

    reference_model = _logprob_model(config.model, config.trainer, reference_path, target, len(tokenizer))
    # the training stage recorded the fingerprint of its reference's fp32 weights: hashing them here
    # (before the cast to `dtype`) proves this is the model that iteration trained against
    recorded = (read_done(stage) or {}).get("reference_fingerprint")
    fingerprint = weights_fingerprint(reference_model.causal_lm, Runtime(0, 1, 0, target, torch.float32)) if recorded else None
    reference_model.to(DTYPES[dtype]).requires_grad_(False)
    policy = _logprob_model(config.model, config.trainer, str(policy_source), target, len(tokenizer)).to(DTYPES[dtype])
    result = measure(policy, reference_model, chosen, config.method.beta, tau, tokenizer.pad_token_id, target)
    return {
        "run": str(run_dir),
        "iteration": iteration,
        "tau": tau,
        "beta": config.method.beta,
        "seed": seed,
        "pairs_in_iteration": len(tokenized),
        "policy": str(policy_source),
        "reference": reference_path,
        "reference_matches_training": None if recorded is None else fingerprint == recorded,
        "dtype": dtype,
        "device": str(target),
        "parameters": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "seconds": time.perf_counter() - started,
        **result,
    }


def render_markdown(result: dict) -> str:
    note = (
        "Pure DPO loss L = mean −log σ(s) over the sample (no NLL term). The paper's bound (Prop. 1) assumes the "
        "two sides exchangeable (E d = 0, a SPIN fixed point); in general measured ≤ paper bound + β·E[σ(−s)]·‖E d‖."
    )
    warning = ""
    if result["reference_matches_training"] is False:
        warning = f"\n**Warning:** the reference {result['reference']} is not the model this iteration trained against (fingerprint differs).\n"
    return "\n".join([
        f"# Gradient check: {result['run']}, iteration {result['iteration']}", "", note, warning,
        GRADIENT_CHECK_HEADER, GRADIENT_CHECK_RULE, gradient_check_row(result), "",
        f"policy {result['policy']}, reference {result['reference']}, {result['sample_size']} of "
        f"{result['pairs_in_iteration']} pairs (seed {result['seed']}), {result['dtype']} on {result['device']}, "
        f"{result['seconds']:.1f} s", "",
    ])


def run(cfg: GradientCheckConfig) -> int:
    run_dir, iteration, out = Path(cfg.run), cfg.iteration, cfg.out_dir
    try:
        if not run_dir.is_dir():
            raise AnalysisInputError(f"gradient_check: run={run_dir}: no such folder")
        result = check_iteration(run_dir, iteration, sample=cfg.sample, seed=cfg.seed, tau=cfg.tau,
                                 reference=cfg.reference, dtype=cfg.dtype, device=cfg.device,
                                 config_path=Path(cfg.config) if cfg.config else None)
    except AnalysisInputError as error:
        print(error, file=sys.stderr)
        return 2
    write_json_atomic(out / "gradient_check.json", result, indent=1)
    write_text_atomic(out / "gradient_check.md", render_markdown(result))
    print(
        f"iteration {iteration}: {result['sample_size']} pairs, Var(s) {result['var_s']:.4g}, "
        f"measured ‖∇L‖ {result['measured_grad_norm']:.4g}, paper bound (β/4)·√Var(s)·√E‖d‖² {result['paper_bound']:.4g} "
        f"({'holds' if result['paper_bound_holds'] else 'exceeded'}), β·E[σ(−s)]·‖E d‖ {result['mean_direction_term']:.4g}"
    )
    if result["reference_matches_training"] is False:
        print(f"warning: the reference {result['reference']} is not the model iteration {iteration} trained against")
    print(f"wrote {out / 'gradient_check.json'} and {out / 'gradient_check.md'}")
    return 0
