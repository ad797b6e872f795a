"""The memory plan against a measured step: one small validation case of benchmarks/memory_plan.py
(torchrun, 2 ranks, gloo, fp32) must peak within 20% of what the plan says for the same config."""

from __future__ import annotations

# the module loader of the plan's unit tests (tests/unit/test_memory_plan.py)
from tests.unit.test_memory_plan import _memory_plan


def test_measured_peak_of_a_sharded_step_is_within_20_percent_of_the_plan(tmp_path, monkeypatch):
    mp = _memory_plan()
    case = dict(name="small_qwen2_ckpt", family="qwen2", hidden=384, layers=4, heads=6, kv_heads=2, intermediate=1024,
                batch=2, max_length=384, prompt=32, accum=2, checkpointing=True)
    monkeypatch.setattr(mp, "VALIDATION_CASES", (case,))
    report = mp.run_validation(tmp_path / "memory_plan.json")
    (row,) = report["rows"]
    assert 0.8 <= row["peak_ratio"] <= 1.2, mp.format_validation(report)


def test_measured_peak_of_a_sharded_lora_step_is_within_20_percent_of_the_plan(tmp_path, monkeypatch):
    # model.lora: the frozen base sharded beside a rank-16 adapter on every projection
    mp = _memory_plan()
    case = dict(name="small_qwen2_lora16", family="qwen2", hidden=384, layers=4, heads=6, kv_heads=2, intermediate=1024,
                batch=2, max_length=384, prompt=32, accum=1, checkpointing=False, lora_rank=16)
    monkeypatch.setattr(mp, "VALIDATION_CASES", (case,))
    report = mp.run_validation(tmp_path / "memory_plan.json")
    (row,) = report["rows"]
    assert row["plan_rows"]["params_base"] > 0 and row["plan_rows"]["params_master"] < row["plan_rows"]["params_base"] / 10
    assert 0.8 <= row["peak_ratio"] <= 1.2, mp.format_validation(report)
