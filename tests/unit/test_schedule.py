"""The learning-rate schedule equals HF's (what the paper's TRL/alignment-handbook code used)."""

import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from drift.train import lr_at


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("total_steps", [1, 7, 21, 100])
def test_schedule_matches_transformers(schedule, total_steps):
    base_lr, ratio = 5e-7, 0.1
    warmup = math.ceil(ratio * total_steps)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    build = get_linear_schedule_with_warmup if schedule == "linear" else get_cosine_schedule_with_warmup
    scheduler = build(optimizer, warmup, total_steps)
    for step in range(total_steps):
        assert lr_at(step, total_steps, base_lr, ratio, schedule) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12, abs=1e-20), step
        optimizer.step()
        scheduler.step()


def test_constant_schedule_after_warmup():
    assert [lr_at(s, 10, 1.0, 0.2, "constant") for s in range(4)] == [0.0, 0.5, 1.0, 1.0]
