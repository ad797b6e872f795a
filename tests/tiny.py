"""Shared helpers for tests: a tiny config and seeded synthetic token pairs."""

from __future__ import annotations

import random
from pathlib import Path

from drift.config import Config, LoggingConfig, MethodConfig, ModelConfig, TrainerConfig
from drift.tokenize import TokenizedPair, TokenSequence


def tiny_config(tmp_path: Path, **trainer_overrides) -> Config:
    trainer = TrainerConfig(lr=1e-3, per_device_batch_size=2, max_length=64, max_prompt_length=32, seed=7)
    for key, value in trainer_overrides.items():
        setattr(trainer, key, value)
    return Config(
        model=ModelConfig(name="tiny", name_or_path="tiny:llama"),
        method=MethodConfig(name="warmstart", warmstart_epochs=2),
        trainer=trainer,
        logging=LoggingConfig(wandb_mode="disabled", progress_bar=False),
        run_name="test",
        output_dir=str(tmp_path),
    )


def synthetic_pairs(count: int, seed: int = 0, vocab: int = 250) -> list[TokenizedPair]:
    rng = random.Random(seed)
    pairs = []
    for index in range(count):
        prompt = tuple(rng.randrange(vocab) for _ in range(rng.randint(3, 12)))
        chosen = tuple(rng.randrange(vocab) for _ in range(rng.randint(2, 10)))
        rejected = tuple(rng.randrange(vocab) for _ in range(rng.randint(2, 10)))
        pairs.append(TokenizedPair(f"pair-{index}", TokenSequence(prompt, chosen), TokenSequence(prompt, rejected)))
    return pairs


def plain_fp64_logps(causal_lm, sequences: list[TokenSequence]):
    """The reference for every packing test: each sequence alone through the plain HF model in fp64
    (its own masks, sliding windows included), log_softmax over the full logits, the response's
    tokens gathered and summed. The model is handed back in fp32."""
    import torch

    model = causal_lm.double()
    values = []
    with torch.no_grad():
        for sequence in sequences:
            logits = model(torch.tensor([sequence.prompt_ids + sequence.response_ids])).logits[0]
            first = len(sequence.prompt_ids)
            logps = torch.log_softmax(logits[first - 1 : -1], dim=-1)
            values.append(logps.gather(1, torch.tensor(sequence.response_ids).unsqueeze(1)).sum())
    causal_lm.float()
    return torch.stack(values)
