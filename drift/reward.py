"""Scores replies with a sequence-classification reward model (IterDPO on UltraFeedback).

Default: OpenAssistant/reward-model-deberta-v3-large-v2 (question, answer) -> one logit; any
AutoModelForSequenceClassification with a single output works, by hub name or local folder.
"""

from __future__ import annotations

import torch

from drift.config import RewardConfig


def prompt_text(messages) -> str:
    """The conversation before the reply, as the reward model's 'question' side."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


@torch.no_grad()
def score_replies(cfg: RewardConfig, items: list[tuple[str, str]], device: str = "cpu") -> list[float]:
    """[(question, answer)] -> scalar rewards, in the same order."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    kwargs = {"local_files_only": cfg.local_files_only, "trust_remote_code": cfg.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(cfg.model, **kwargs)
    model = AutoModelForSequenceClassification.from_pretrained(cfg.model, use_safetensors=True, **kwargs).to(device).eval()
    if model.config.num_labels != 1:
        raise ValueError(f"reward.model={cfg.model!r} has {model.config.num_labels} outputs; a reward model has 1")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    scores: list[float] = []
    for start in range(0, len(items), cfg.batch_size):
        chunk = items[start : start + cfg.batch_size]
        encoded = tokenizer(
            [q for q, _ in chunk], [a for _, a in chunk], padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt"
        ).to(device)
        scores += model(**encoded).logits[:, 0].float().cpu().tolist()
    del model
    return scores
