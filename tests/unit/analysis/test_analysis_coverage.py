"""Exploration coverage (paper §4.3): KDE, high-reward region and Share(m) on point sets whose answer
is known by construction, the command's arguments, and the helpers its end-to-end test
(tests/integration/test_analysis_coverage_process.py) uses: tiny policy, tiny random reward model,
fake embedder and projector (no UMAP, no sentence model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from drift.analysis._kde import (
    coverage,
    grid_axes,
    high_reward_region,
    kde_surface,
    reward_weights,
    scott_bandwidth,
    share,
)
from drift.commands import compose_command, invoke
from drift.config import ConfigError, ModelConfig
from drift.model import build_byte_tokenizer, load_model

# ---- the pure core ------------------------------------------------------------------------------


def test_kde_surface_equals_the_plain_formula_at_every_grid_point():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 2.0]])
    weights = np.array([1.0, 0.5, 0.0])
    xs, ys, h = np.array([0.0, 1.0, 2.5]), np.array([-1.0, 0.0, 1.5]), 0.8
    surface = kde_surface(points, weights, (xs, ys), h)
    assert surface.shape == (3, 3)  # [len(ys), len(xs)]
    for row, y in enumerate(ys):
        for column, x in enumerate(xs):
            expected = sum(w * math.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * h * h)) / (2 * math.pi * h * h)
                           for (px, py), w in zip(points, weights)) / len(points)
            assert surface[row, column] == pytest.approx(expected, rel=1e-12)
    # by hand at g = (0, 0), h = 1: (1/3) * (1 + 0.5 e^{-1/2}) / (2 pi)
    at_origin = kde_surface(points, weights, (np.array([0.0]), np.array([0.0])), 1.0)[0, 0]
    assert at_origin == pytest.approx((1 + 0.5 * math.exp(-0.5)) / (2 * math.pi) / 3, rel=1e-12)


def test_high_reward_region_holds_the_top_fifth_of_the_cells():
    z = np.arange(100.0).reshape(10, 10)
    region, z_high = high_reward_region(z, 0.8)
    assert z_high == pytest.approx(79.2)  # linear interpolation between the 80th and 81st values
    assert region.sum() == 20 and region[z >= 80].all() and not region[z < 80].any()
    flat, level = high_reward_region(np.full((4, 5), 0.3), 0.8)
    assert level == 0.3 and flat.all()  # cells equal to z_high are inside H
    with pytest.raises(ValueError, match="quantile"):
        high_reward_region(z, 1.0)


def test_share_counts_covered_cells_of_the_region():
    region = np.array([[True, True, False], [True, True, False]])
    surface = np.array([[0.9, 0.2, 1.0], [0.5, 0.49, 1.0]])
    value, covered = share(surface, region, 0.5)
    assert value == 0.5  # (0,0) and (1,0) of the 4 region cells; cells outside H do not count
    assert covered.tolist() == [[True, False, False], [True, False, False]]


def test_reward_weights_bandwidth_and_grid_by_hand():
    assert reward_weights([1.0, 3.0, 2.0]).tolist() == [0.0, 1.0, 0.5]
    assert reward_weights([-2.0, -2.0]).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="NaN"):
        reward_weights([1.0, float("nan")])
    square = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])  # std 1 on each axis
    assert scott_bandwidth(square) == pytest.approx(4 ** (-1 / 6))
    xs, ys = grid_axes(np.array([[0.0, 1.0], [10.0, 3.0]]), size=5, margin=0.1)
    assert xs.tolist() == pytest.approx([-1.0, 2.0, 5.0, 8.0, 11.0])
    assert ys.tolist() == pytest.approx([0.8, 1.4, 2.0, 2.6, 3.2])


def test_half_share_on_a_hand_grid():
    """Two cells, one under each method's only reply, equal rewards: Z_all is equal at both, so both
    cells are H; each method's surface reaches z_high under its own reply only."""
    points = np.array([[-5.0, 0.0], [5.0, 0.0]])
    weights = reward_weights([0.7, 0.7])
    grid, h = (np.array([-5.0, 5.0]), np.array([0.0])), 1.0
    z_all = kde_surface(points, weights, grid, h)
    z_all = z_all / z_all.max()
    region, z_high = high_reward_region(z_all, 0.8)
    assert region.all() and z_high == 1.0
    for method, own_cell in ((0, 0), (1, 1)):
        d_m = np.minimum(1.0, kde_surface(points[[method]], weights[[method]], grid, h) / kde_surface(points, weights, grid, h).max())
        value, covered = share(d_m, region, z_high)
        assert value == 0.5 and covered[0].tolist() == [own_cell == 0, own_cell == 1]


def blob(center, count=40, spread=0.5, seed=0):
    return np.random.default_rng(seed).normal(size=(count, 2)) * spread + np.asarray(center, dtype=float)


def test_a_method_on_the_high_reward_blob_covers_it_and_one_far_away_with_low_reward_does_not():
    points = np.vstack([blob((0, 0)), blob((10, 10), seed=1)])
    rewards = np.r_[np.full(40, 2.0), np.full(40, -1.0)]
    result = coverage(points, rewards, ["A"] * 40 + ["B"] * 40, grid_size=50)
    assert result.z_high > 0  # so that B's all-zero surface is below it
    assert result.shares == {"A": 1.0, "B": 0.0}
    assert result.z_all.max() == 1.0 and result.region.sum() == 500  # 20% of 50 x 50
    assert all(0.0 <= d.min() and d.max() <= 1.0 for d in result.surfaces.values())


def test_replies_inside_the_region_with_the_lowest_reward_cover_nothing():
    """Share is reward-weighted: B sits on A's blob but every B reply has the prompt's lowest reward."""
    points = np.vstack([blob((0, 0)), blob((0, 0), seed=1)])
    rewards = np.r_[np.linspace(1.0, 2.0, 40), np.full(40, 0.0)]
    result = coverage(points, rewards, ["A"] * 40 + ["B"] * 40, grid_size=40)
    assert result.shares["A"] == 1.0 and result.shares["B"] == 0.0


def test_two_separate_blobs_of_equal_reward_are_shared_half_and_half():
    left = blob((-5, 0))
    points = np.vstack([left, left * np.array([-1.0, 1.0])])  # B is A mirrored across x = 0
    result = coverage(points, np.ones(80), ["A"] * 40 + ["B"] * 40, grid_size=40, bandwidth=1.0)
    cells = result.region.sum()
    # mirror symmetry up to rounding: at most one cell of H can fall on either side of z_high
    assert abs(result.shares["A"] - 0.5) <= 1 / cells and abs(result.shares["B"] - 0.5) <= 1 / cells
    assert not (result.covered["A"] & result.covered["B"]).any()
    assert result.shares["A"] + result.shares["B"] == 1.0
    # A's S_m lies left of the middle, B's right of it
    columns = np.broadcast_to(result.xs, result.region.shape)
    assert (columns[result.covered["A"]] < 0).all() and (columns[result.covered["B"]] > 0).all()


def test_a_method_distributed_like_all_replies_covers_the_whole_region():
    points = np.vstack([blob((0, 0)), blob((4, 1), seed=2)])
    rewards = np.r_[np.linspace(0, 1, 40), np.linspace(1, 0, 40)]
    twice = np.vstack([points, points])
    result = coverage(twice, np.r_[rewards, rewards], ["A"] * 80 + ["B"] * 80, grid_size=40)
    cells = result.region.sum()
    assert result.shares["A"] >= 1 - 1 / cells and result.shares["B"] >= 1 - 1 / cells


# ---- the command end to end ---------------------------------------------------------------------


def save_tiny_policy(folder: Path) -> Path:
    tokenizer = build_byte_tokenizer()
    model = load_model(ModelConfig(name="tiny", name_or_path="tiny:llama"), dtype=torch.float32, seed=0,
                       vocab_size=len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_reward_model(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = build_byte_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def plain_reward(folder: Path, question: str, answer: str) -> float:
    """The reward model's logit on one unpadded (question, answer) pair."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return float(model(**tokenizer(question, answer, return_tensors="pt")).logits[0, 0])


def fake_embed(texts: list[str]) -> np.ndarray:
    """Two numbers per text: its length and the mean of its bytes."""
    return np.array([[len(t), sum(t.encode()) / max(1, len(t.encode()))] for t in texts], dtype=np.float64)


def fake_project(embeddings: np.ndarray, seed: int) -> np.ndarray:
    return embeddings * np.array([1.0, 0.1]) + seed


@pytest.mark.parametrize("overrides, message", [
    ([], "give at least one checkpoint={NAME:PATH}"),
    (["checkpoint={a:x}"], "give prompts=FILE"),
    (["checkpoint={a:x}", "prompts=p", "colour=red"], "unknown key 'colour'"),
    (["checkpoint=x", "prompts=p"], "is not {NAME:PATH}"),
    (["checkpoint={a:x}", "checkpoint={a:y}", "prompts=p"], "checkpoint= given twice"),
    (["checkpoint={a:x}", "prompts=p", "sampler.num_samples=4"], "m=..., not sampler.num_samples"),
    (["checkpoint={a:x}", "prompts=p", "m=1"], "m must be >= 2"),
    (["checkpoint={a:x}", "prompts=p", "quantile=1"], "quantile must be in (0, 1)"),
    (["checkpoint={a:x}", "prompts=p", "grid=ten"], "grid must be an integer, got 'ten'"),
    (["checkpoint={a:x}", "prompts=p", "m=4", "m=5"], "m= given twice"),
])
def test_command_line_errors_are_sentences(overrides, message):
    with pytest.raises(ConfigError) as error:
        compose_command("coverage", overrides)
    assert message in str(error.value)


def test_missing_inputs_fail_before_any_sampling(tmp_path, capsys):
    policy = save_tiny_policy(tmp_path / "policy")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt_id": "p", "keep_last": 1, "messages": [{"role": "user", "content": "hi"}]}) + "\n")
    base = [f"prompts={prompts}", f"out={tmp_path / 'out'}"]
    assert invoke("coverage", [f"checkpoint={{a:'{tmp_path / 'nowhere'}'}}", *base]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert invoke("coverage", [f"checkpoint={{a:'{tmp_path}'}}", *base]) == 2
    assert "holds no *.safetensors weights" in capsys.readouterr().err
    assert invoke("coverage", [f"checkpoint={{a:'{policy}'}}", *base, f"reward.model={tmp_path / 'no_reward'}"]) == 2
    assert "reward.model=" in capsys.readouterr().err
    assert not (tmp_path / "out" / "samples").exists()
