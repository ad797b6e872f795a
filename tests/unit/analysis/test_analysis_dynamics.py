"""Training dynamics (analyze.py dynamics) and the gradient check (analyze.py gradient_check).

Numbers against hand-computed values; plots from a tiny real training stage; the gradient check
against per-pair gradients and the loss gradient taken here by plain autograd on plain HF logits.
"""

import json
import math
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: tiny_stage.py

from tiny_stage import main as run_tiny_stage  # noqa: E402

from drift.analysis import dynamics, gradient_check
from drift.commands import compose_command, invoke  # noqa: E402
from drift.config import ConfigError  # noqa: E402

LN3 = math.log(3.0)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- pure numbers -------------------------------------------------------------------------------


def test_pair_statistics_by_hand():
    # σ(−s) for s = 0, ln 3, −ln 3, 2 is 1/2, 1/4, 3/4, 1/(1+e²) = 0.11920292202211755
    stats = dynamics.pair_statistics([0.0, LN3, -LN3, 2.0], tau=0.5, bins=4)
    assert stats["pairs"] == 4
    assert stats["mean_gradient_weight"] == pytest.approx((0.5 + 0.25 + 0.75 + 0.11920292202211755) / 4, abs=1e-12)
    assert stats["share_at_least_tau"] == 0.5  # 1/2 (exactly τ counts) and 3/4
    # mean s = 1/2; Var = mean of (−1/2)², (ln3 − 1/2)², (−ln3 − 1/2)², (3/2)² (divide by n)
    assert stats["mean_s"] == pytest.approx(0.5, abs=1e-12)
    assert stats["var_s"] == pytest.approx((0.25 + (LN3 - 0.5) ** 2 + (LN3 + 0.5) ** 2 + 2.25) / 4, abs=1e-12)
    assert stats["var_s"] == pytest.approx(1.3534745, abs=1e-6)  # (0.25 + 0.358337 + 2.555561 + 2.25) / 4
    # bins [0,.25) [.25,.5) [.5,.75) [.75,1]: 0.119, 0.25, 0.5, 0.75 one each
    assert stats["histogram"]["counts"] == [1, 1, 1, 1]
    assert stats["histogram"]["edges"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert dynamics.pair_statistics([], 0.5) == {"pairs": 0}


def test_gradient_weights_do_not_overflow():
    weights = dynamics.gradient_weights([1000.0, -1000.0, 0.0])
    assert weights.tolist() == [0.0, 1.0, 0.5]


def test_iteration_summary_and_global_series_by_hand():
    stage_a = [{"step": 1, "loss": 0.7, "margin": 0.0, "accuracy": 0.0, "gradient_weight": 0.5},
               {"step": 2, "loss": 0.5, "margin": 0.4, "accuracy": 1.0, "gradient_weight": 0.4},
               {"step": 3, "loss": 0.3, "margin": 1.0, "accuracy": 1.0, "gradient_weight": 0.3}]
    stage_b = [{"step": 2, "loss": 0.9, "margin": -0.2}, {"step": 1, "loss": 1.1, "margin": -0.4}]
    curves = dynamics.global_series([(0, stage_a), (1, stage_b)], quantities=("loss", "margin", "accuracy"))
    assert curves["series"]["global_step"] == [1, 2, 3, 4, 5]
    assert curves["series"]["iteration"] == [0, 0, 0, 1, 1]
    assert curves["series"]["loss"] == [0.7, 0.5, 0.3, 1.1, 0.9]  # sorted by step inside a stage
    assert curves["series"]["accuracy"] == [0.0, 1.0, 1.0, None, None]  # a missing key is a gap, not a zero
    assert curves["boundaries"] == [{"iteration": 0, "global_step": 0}, {"iteration": 1, "global_step": 3}]

    pairs = [{"step": 1, "epoch": 0, "logit": 0.0}, {"step": 1, "epoch": 0, "logit": LN3},
             {"step": 2, "epoch": 1, "logit": -LN3}, {"step": 3, "epoch": 1, "logit": -LN3}]
    summary = dynamics.iteration_summary(0, stage_a, pairs, tau=0.5, bins=2)
    assert summary["steps"] == 3
    assert summary["mean_loss"] == pytest.approx(0.5)
    assert summary["mean_margin"] == pytest.approx(1.4 / 3)
    assert summary["mean_gradient_weight_steps"] == pytest.approx(0.4)
    assert summary["pairs_logged"] == 4
    assert summary["mean_gradient_weight"] == pytest.approx((0.5 + 0.25 + 0.75 + 0.75) / 4)
    assert summary["share_at_least_tau"] == 0.75
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1]
    assert summary["epochs"][0]["var_s"] == pytest.approx((LN3 / 2) ** 2)  # {0, ln3}: mean ln3/2
    assert summary["epochs"][1]["var_s"] == pytest.approx(0.0, abs=1e-15)
    assert summary["epochs"][1]["share_at_least_tau"] == 1.0


def test_bound_terms_by_hand():
    # d1 = (1, 0), d2 = (0, 2); s = 0, ln 3 -> σ(−s) = 1/2, 1/4; β = 0.5
    # Σσd = (1/2, 1/2), Σd = (1, 2); ∇L = −β·(Σσd)/2 -> ‖∇L‖ = 0.5·√0.5/2
    terms = gradient_check.bound_terms([0.0, LN3], [1.0, 4.0], math.sqrt(0.5), math.sqrt(5.0), beta=0.5, tau=0.5)
    assert terms["measured_grad_norm"] == pytest.approx(0.5 * math.sqrt(0.5) / 2)
    # Var(s) = (ln3/2)², E‖d‖² = 5/2
    assert terms["var_s"] == pytest.approx((LN3 / 2) ** 2)
    assert terms["paper_bound"] == pytest.approx(0.5 / 4 * (LN3 / 2) * math.sqrt(2.5))
    assert terms["variance_bound"] == pytest.approx(0.5 * 0.125 * math.sqrt(2.5))  # sd of {1/2, 1/4} is 1/8
    assert terms["mean_direction_term"] == pytest.approx(0.5 * 0.375 * math.sqrt(5.0) / 2)
    # E d ≠ 0 here (not exchangeable): the paper's bound fails, the general one holds
    assert not terms["paper_bound_holds"]
    assert terms["measured_grad_norm"] <= terms["variance_bound"] + terms["mean_direction_term"]
    assert terms["mean_pair_grad_norm"] == pytest.approx(0.5 * (0.5 * 1 + 0.25 * 2) / 2)
    assert terms["lemma1_lower_bound"] == pytest.approx(0.5 * 0.5 * 1 / 2)  # only pair 1 has σ(−s) ≥ 1/2
    # exchangeable sides, d1 = (1, 0) = −d2: Σσd = (1/4, 0), and the paper's bound holds
    terms = gradient_check.bound_terms([0.0, LN3], [1.0, 1.0], 0.25, 0.0, beta=0.5, tau=0.5)
    assert terms["measured_grad_norm"] == pytest.approx(0.0625)
    assert terms["paper_bound"] == pytest.approx(0.125 * LN3 / 2)
    assert terms["paper_bound_holds"]


def test_overrides_fail_with_a_sentence(capsys):
    with pytest.raises(ConfigError, match="unknown key 'runs'.*known keys: bins, out, run, tau"):
        compose_command("dynamics", ["runs=x"])
    with pytest.raises(ConfigError, match="tau= given twice"):
        compose_command("dynamics", ["tau=0.1", "tau=0.2"])
    assert compose_command("dynamics", ["run=[a,b]"]).run == ["a", "b"]
    assert invoke("dynamics", ["run=/no/such/run"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert invoke("dynamics", ["tau=0.5"]) == 2
    assert "give at least one run=" in capsys.readouterr().err


def test_an_empty_run_is_one_sentence_naming_the_key(capsys):
    assert invoke("dynamics", ["run="]) == 2
    assert capsys.readouterr().err == "dynamics: give at least one run=runs/<run_name> (run=[runs/A,runs/B] overlays several)\n"
    assert invoke("gradient_check", ["run=", "iteration=1"]) == 2
    assert capsys.readouterr().err.startswith("gradient_check: give run= (e.g. run=runs/drift_smollm2_fixture iteration=1)")


def test_a_torn_last_row_of_a_run_still_training_is_left_out_and_other_damage_named(tmp_path, capsys):
    stage = tmp_path / "run" / "iter_0" / "train"
    stage.mkdir(parents=True)
    row = {"step": 1, **{key: 0.5 for key in dynamics.STEP_QUANTITIES}}
    (stage / "metrics.jsonl").write_text(json.dumps(row) + "\n" + '{"step": 2, "lo')
    (iteration,) = dynamics.analyze_run(tmp_path / "run", "run", 0.5, 20)["iterations"]
    assert iteration["steps"] == 1
    (stage / "metrics.jsonl").write_text('{"step": 2, "lo\n' + json.dumps(row) + "\n")
    assert invoke("dynamics", [f"run={tmp_path / 'run'}"]) == 2
    assert "metrics.jsonl:1: not valid JSON" in capsys.readouterr().err


# ---- plots from a tiny real stage ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_stage(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    # 6 pairs, batch 2, 2 epochs: 6 steps; rmsprop at lr 1e-2 so the logits move off 0
    run_tiny_stage(out, 2, 1, "rmsprop", 6, 2)
    return out / "stage"


def test_dynamics_plots_and_points_match_the_metrics(tiny_stage, tmp_path):
    run_a, run_b = tmp_path / "runs" / "drift_a", tmp_path / "runs" / "spin_b"
    for folder in (run_a / "iter_0" / "train", run_a / "iter_1" / "train", run_b / "iter_0" / "train"):
        shutil.copytree(tiny_stage, folder, ignore=shutil.ignore_patterns("model"))
    # iteration 1 of run A differs from its warm start, so the points cannot be matched by accident
    shifted = [{**row, "loss": row["loss"] + 10.0} for row in _rows(run_a / "iter_1" / "train" / "metrics.jsonl")]
    (run_a / "iter_1" / "train" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shifted))
    out = tmp_path / "dyn"
    assert invoke("dynamics", [f"run=[{run_a},{run_b}]", "tau=0.4", f"out={out}"]) == 0

    result = json.loads((out / "dynamics.json").read_text())
    assert [run["label"] for run in result["runs"]] == ["drift_a", "spin_b"]
    stage_rows = _rows(tiny_stage / "metrics.jsonl")
    pair_rows = _rows(tiny_stage / "pair_metrics.jsonl")
    run = result["runs"][0]
    expected = stage_rows + shifted
    assert run["series"]["global_step"] == [row["step"] for row in stage_rows] + [6 + row["step"] for row in shifted]
    for key in dynamics.STEP_QUANTITIES:
        assert run["series"][key] == [row[key] for row in expected], key
    assert run["boundaries"] == [{"iteration": 0, "global_step": 0}, {"iteration": 1, "global_step": 6}]
    assert result["runs"][1]["series"]["margin"] == [row["margin"] for row in stage_rows]

    # per-iteration numbers from the pair rows, by a plain formula here
    weights = [1 / (1 + math.exp(row["logit"])) for row in pair_rows]
    logits = [row["logit"] for row in pair_rows]
    mean_s = sum(logits) / len(logits)
    iteration = run["iterations"][0]
    assert iteration["pairs_logged"] == 12
    assert iteration["share_at_least_tau"] == pytest.approx(sum(w >= 0.4 for w in weights) / 12)
    assert iteration["var_s"] == pytest.approx(sum((s - mean_s) ** 2 for s in logits) / 12)
    assert iteration["mean_gradient_weight"] == pytest.approx(sum(weights) / 12)
    assert iteration["mean_loss"] == pytest.approx(sum(r["loss"] for r in stage_rows) / len(stage_rows))
    assert sum(iteration["histogram"]["counts"]) == 12
    assert run["iterations"][1]["mean_loss"] == pytest.approx(iteration["mean_loss"] + 10.0)

    figures = result["figures"]
    names = list(figures["steps"].values()) + list(figures["iterations"].values()) + list(figures["histograms"].values())
    assert set(figures["steps"]) == set(dynamics.STEP_QUANTITIES)
    assert set(figures["histograms"]) == {"0", "1"}
    report = (out / "report.md").read_text()
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name
        assert f"({name})" in report
    assert "| 1 | tiny | 6 | 12 |" in report


def test_dynamics_default_out_is_under_the_first_run(tiny_stage, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_stage, run / "iter_0" / "train", ignore=shutil.ignore_patterns("model", "pair_metrics.jsonl"))
    assert invoke("dynamics", [f"run={run}"]) == 0
    result = json.loads((run / "analysis" / "dynamics" / "dynamics.json").read_text())
    # without pair_metrics.jsonl: curves, but no σ(−s) distribution
    assert result["runs"][0]["iterations"][0]["pairs_logged"] == 0
    assert result["figures"]["histograms"] == {}
    assert "No pair_metrics.jsonl" in (run / "analysis" / "dynamics" / "report.md").read_text()


# ---- the gradient check against plain autograd --------------------------------------------------


PAIRS = [
    {"pair_id": "a", "prompt": [{"role": "user", "content": "Name a fruit."}], "chosen": "Apple.", "rejected": "No."},
    {"pair_id": "b", "prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5, I think."},
    {"pair_id": "c", "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                {"role": "user", "content": "Too short."}], "chosen": "Hello! How can I help?", "rejected": "Hey"},
    {"pair_id": "d", "prompt": [{"role": "user", "content": "Say yes"}], "chosen": "Yes", "rejected": "Maybe later"},
]


def _tiny_run(tmp_path: Path) -> Path:
    """A run folder as the pipeline leaves it after iteration 1: config, two checkpoints, the pairs."""
    from omegaconf import OmegaConf

    from drift.config import ModelConfig
    from drift.model import build_byte_tokenizer, build_tiny_model, save_hf_checkpoint
    from drift.parallel import Runtime
    from drift.reference import weights_fingerprint

    run = tmp_path / "run"
    raw = {
        "model": {"name": "tiny", "name_or_path": "tiny:llama"},
        "data": {"name": "fixture"},
        "method": {"name": "drift", "beta": 0.5, "warmstart_epochs": 1, "iterations": 1},
        "trainer": {"max_length": 128, "max_prompt_length": 64, "device": "cpu"},
        "logging": {"wandb_mode": "disabled"},
        "run_name": "run",
        "output_dir": str(tmp_path),
    }
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(raw), run / ".hydra" / "config.yaml")
    tokenizer = build_byte_tokenizer()
    start = build_tiny_model(ModelConfig(name="tiny", name_or_path="tiny:llama"), vocab_size=len(tokenizer), seed=5)
    save_hf_checkpoint(start, tokenizer, start.state_dict(), run / "iter_0" / "train" / "model")
    fingerprint = weights_fingerprint(start, Runtime(0, 1, 0, torch.device("cpu"), torch.float32))
    # the policy after iteration 1: the start moved by seeded noise, so s and d are not 0
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for parameter in start.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    save_hf_checkpoint(start, tokenizer, start.state_dict(), run / "iter_1" / "train" / "model")
    (run / "iter_1" / "train" / "done").write_text(json.dumps({"reference_fingerprint": fingerprint}) + "\n")
    (run / "iter_1" / "pairs").mkdir(parents=True)
    (run / "iter_1" / "pairs" / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return run


def _plain_logp(model, sequence) -> torch.Tensor:
    """Sum of log p(response token) from full logits: the textbook definition."""
    ids = torch.tensor([list(sequence.prompt_ids) + list(sequence.response_ids)])
    logps = F.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    targets = ids[0, 1:]
    token_logps = logps.gather(1, targets[:, None])[:, 0]
    return token_logps[len(sequence.prompt_ids) - 1 :].sum()


def test_gradient_check_matches_plain_autograd(tmp_path):
    from transformers import AutoModelForCausalLM

    from drift.config import ModelConfig
    from drift.data.records import PreferencePair
    from drift.model import load_tokenizer
    from drift.tokenize import tokenize_pairs

    run = _tiny_run(tmp_path)
    assert invoke("gradient_check", [f"run={run}", "iteration=1", "sample=3", "seed=0", "dtype=fp64", "device=cpu"]) == 0
    result = json.loads((run / "analysis" / "gradient_check" / "iter_1" / "gradient_check.json").read_text())
    assert result["reference"] == str(run / "iter_0" / "train" / "model")  # the policy at iteration 1's start
    assert result["reference_matches_training"] is True
    assert (run / "analysis" / "gradient_check" / "iter_1" / "gradient_check.md").read_text().count("| 1 | 3 | 0.5 |") == 1

    chosen_ids = sorted(random.Random(0).sample(range(4), 3))
    assert [row["pair_id"] for row in result["pairs"]] == [PAIRS[i]["pair_id"] for i in chosen_ids]
    tokenizer = load_tokenizer(ModelConfig(name="tiny", name_or_path="tiny:llama"), source=str(run / "iter_1" / "train" / "model"))
    pairs = [PreferencePair(**{**PAIRS[i], "prompt": tuple(PAIRS[i]["prompt"])}) for i in chosen_ids]
    tokenized, rejects, _ = tokenize_pairs(pairs, tokenizer, max_length=128, max_prompt_length=64)
    assert not rejects
    policy = AutoModelForCausalLM.from_pretrained(run / "iter_1" / "train" / "model", dtype=torch.float64)
    reference = AutoModelForCausalLM.from_pretrained(run / "iter_0" / "train" / "model", dtype=torch.float64)
    parameters = list(policy.parameters())
    beta = 0.5
    logits, d_vectors = [], []
    for pair in tokenized:
        gap = _plain_logp(policy, pair.chosen) - _plain_logp(policy, pair.rejected)
        with torch.no_grad():
            reference_gap = _plain_logp(reference, pair.chosen) - _plain_logp(reference, pair.rejected)
        logits.append(beta * (gap - reference_gap))
        d_vectors.append(torch.cat([g.flatten() for g in torch.autograd.grad(gap, parameters, retain_graph=True)]))
    s = torch.stack(logits)
    loss = (-F.logsigmoid(s)).mean()
    loss_gradient = torch.cat([g.flatten() for g in torch.autograd.grad(loss, parameters)])
    d = torch.stack(d_vectors)
    s = s.detach()
    weights = torch.sigmoid(-s)
    mean_sq_d = float((d.norm(dim=1) ** 2).mean())
    for row, value, vector in zip(result["pairs"], s.tolist(), d):
        assert row["logit"] == pytest.approx(value, abs=1e-5)  # the fused kernel returns fp32 log-probs
        assert row["d_norm"] == pytest.approx(float(vector.norm()), rel=1e-7)
    assert result["var_s"] == pytest.approx(float(s.var(unbiased=False)), rel=1e-4)
    assert result["mean_sq_d_norm"] == pytest.approx(mean_sq_d, rel=1e-7)
    assert result["measured_grad_norm"] == pytest.approx(float(loss_gradient.norm()), rel=1e-5)
    assert result["paper_bound"] == pytest.approx(beta / 4 * math.sqrt(float(s.var(unbiased=False))) * math.sqrt(mean_sq_d), rel=1e-4)
    assert result["mean_direction_term"] == pytest.approx(beta * float(weights.mean()) * float(d.mean(0).norm()), rel=1e-5)
    assert result["mean_pair_grad_norm"] == pytest.approx(float((beta * weights * d.norm(dim=1)).mean()), rel=1e-5)
    assert result["measured_grad_norm"] <= result["general_bound"]


def test_gradient_check_fails_with_a_sentence(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    assert invoke("gradient_check", [f"run={run}", "iteration=2"]) == 2
    assert "iteration 2 has not finished training" in capsys.readouterr().err
    assert invoke("gradient_check", [f"run={run}", "iteration=1", "sample=1"]) == 2
    assert "sample must be >= 2" in capsys.readouterr().err
    assert invoke("gradient_check", [f"run={tmp_path}", "iteration=1"]) == 2
    assert "config.yaml not found" in capsys.readouterr().err
