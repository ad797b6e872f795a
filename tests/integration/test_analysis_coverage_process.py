"""The coverage command end to end: a tiny policy through the real sampler process, a tiny random reward
model, fake embedder and projector (no UMAP, no sentence model)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from drift.analysis import coverage as command
from drift.commands import compose_command
from tests.unit.analysis.test_analysis_coverage import (
    fake_embed,
    fake_project,
    plain_reward,
    save_tiny_policy,
    save_tiny_reward_model,
)


def test_coverage_command_end_to_end(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    policy = save_tiny_policy(tmp_path / "policy")
    reward = save_tiny_reward_model(tmp_path / "reward")
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt_id": f"p{i}", "keep_last": 1, "messages": [{"role": "user", "content": f"tell me about item {i}"}]}
            for i in range(3)]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "coverage"
    common = [f"prompts={prompts}", "m=5", "limit=2", f"reward.model={reward}", f"out={out}", "device=cpu",
              "max_prompt_length=64", "sampler.max_new_tokens=8", "sampler.seed=3"]

    # one method: the sampler process draws m replies for each of the first `limit` prompts
    command.run_coverage(compose_command("coverage", [f"checkpoint={{drift:'{policy}'}}", *common, "grid=20", "plots=0"]),
                         embed=fake_embed, project=fake_project)
    assert "sampled 10 of 10 replies for 2 prompts" in capfd.readouterr().out
    assert json.loads((out / "coverage.json").read_text())["prompts"][0]["grid_cells"] == 400
    # a second name for the same checkpoint, same sampler keys: the same request, so its samples folder
    # may be a copy (saves a second sampler process here); both are reused, none is sampled again
    shutil.copytree(out / "samples" / "drift", out / "samples" / "copy")
    cfg = compose_command("coverage", [f"checkpoint={{drift:'{policy}',copy:'{policy}'}}", *common, "grid=30", "plots=1"])
    result = command.run_coverage(cfg, embed=fake_embed, project=fake_project)
    printed = capfd.readouterr().out
    assert printed.count("reusing the samples") == 2 and "sampler:" not in printed

    responses = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert len(responses) == 2 * 2 * 5  # two checkpoints, limit=2 prompts, m=5
    assert {(r["method"], r["prompt_id"]) for r in responses} == {(m, p) for m in ("drift", "copy") for p in ("p0", "p1")}
    first = responses[0]
    assert first["reward"] == pytest.approx(plain_reward(reward, "user: tell me about item 0", first["text"]), abs=1e-5)
    embedded = fake_embed([first["text"]])[0]
    assert (first["x"], first["y"]) == pytest.approx((embedded[0] * 1.0, embedded[1] * 0.1))
    # both names hold the same replies: each is distributed like all replies, so each covers H (up to
    # one cell of rounding at the threshold)
    by_method = {m: sorted((r["prompt_id"], r["sample_index"], r["text"]) for r in responses if r["method"] == m)
                 for m in ("drift", "copy")}
    assert by_method["drift"] == by_method["copy"]
    saved = json.loads((out / "coverage.json").read_text())
    assert saved["methods"] == ["drift", "copy"] and [p["prompt_id"] for p in saved["prompts"]] == ["p0", "p1"]
    for prompt in saved["prompts"]:
        assert prompt["replies"] == {"drift": 5, "copy": 5} and prompt["grid_cells"] == 900
        for name in ("drift", "copy"):
            assert prompt["shares"][name] >= 1 - 1 / prompt["region_cells"]
    for name in ("drift", "copy"):
        assert saved["summary"][name]["mean_share"] == pytest.approx(np.mean([p["shares"][name] for p in saved["prompts"]]))
    assert saved == json.loads(json.dumps(result))
    table = (out / "coverage.md").read_text()
    assert "| drift |" in table and "| 001 | p1 |" in table
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["prompt_000.png", "share.png"]
    assert all((out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in ("prompt_000.png", "share.png"))
