"""Pairs -> token ids with response boundaries, and token sequences -> model batches.

A sequence is (prompt ids, response ids). Only response tokens carry log-probs: the position
before each response token predicts it, so prompt positions never reach the lm_head.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from drift.data.records import PreferencePair, Rejected

_MARKER = "\u2063DRIFT_RESPONSE\u2063"


@dataclass(frozen=True)
class TokenSequence:
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)

    @property
    def key(self) -> str:
        """Hash of the token ids and the prompt/response boundary: what a cached log-prob belongs to."""
        digest = hashlib.sha256()
        digest.update(np.asarray(self.prompt_ids, dtype=np.int64).tobytes())
        digest.update(b"|")
        digest.update(np.asarray(self.response_ids, dtype=np.int64).tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class TokenizedPair:
    pair_id: str
    chosen: TokenSequence
    rejected: TokenSequence


def response_suffix(tokenizer, prompt_format: str = "chat_template") -> str:
    """What the template writes after an assistant reply, up to its end-of-turn token.

    Sampled replies stop at that token, so the trained response must end with it too.
    """
    if prompt_format == "raw_text" or not getattr(tokenizer, "chat_template", None):
        return tokenizer.eos_token or ""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": _MARKER}], tokenize=False
    )
    suffix = rendered.split(_MARKER, 1)[1]
    return suffix.rstrip()


def tokenize_pairs(
    pairs: list[PreferencePair],
    tokenizer,
    *,
    max_length: int,
    max_prompt_length: int,
    prompt_format: str = "chat_template",
) -> tuple[list[TokenizedPair], list[Rejected], int]:
    """Tokenize pairs; a pair whose prompt cannot fit is rejected with the reason, never dropped silently.

    Returns (pairs, rejects, number of prompts that were truncated).
    """
    from drift.data.prompts import PromptTooLong, render_prompt_ids

    suffix = response_suffix(tokenizer, prompt_format)
    tokenized, rejects, truncated_prompts = [], [], 0
    for pair in pairs:
        try:
            prompt_ids, truncated = render_prompt_ids(
                list(pair.prompt), tokenizer, max_prompt_tokens=max_prompt_length, prompt_format=prompt_format, keep_last=1
            )
        except PromptTooLong as error:
            rejects.append(Rejected(pair.pair_id, "prompt_too_long", str(error)))
            continue
        truncated_prompts += int(truncated)
        budget = max_length - len(prompt_ids)
        sides = []
        for text in (pair.chosen, pair.rejected):
            response_ids = tokenizer(text + suffix, add_special_tokens=False)["input_ids"][:budget]
            sides.append(TokenSequence(tuple(prompt_ids), tuple(response_ids)))
        if not sides[0].response_ids or not sides[1].response_ids:
            rejects.append(Rejected(pair.pair_id, "empty_response", "chosen or rejected has no tokens"))
            continue
        tokenized.append(TokenizedPair(pair.pair_id, sides[0], sides[1]))
    return tokenized, rejects, truncated_prompts


@dataclass
class SequenceBatch:
    """Right-padded rows, one sequence each, plus the flat positions whose next token is scored."""

    input_ids: torch.Tensor  # [rows, T]
    attention_mask: torch.Tensor  # [rows, T]
    target_positions: torch.Tensor  # [n] flat index into rows*T of the position predicting a target
    target_ids: torch.Tensor  # [n]
    target_sequence: torch.Tensor  # [n] which row each target belongs to
    num_sequences: int

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def num_padding(self) -> int:
        return self.attention_mask.numel() - self.num_tokens

    def to(self, device) -> "SequenceBatch":
        return SequenceBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.target_positions.to(device),
            self.target_ids.to(device),
            self.target_sequence.to(device),
            self.num_sequences,
        )


def collate_sequences(sequences: list[TokenSequence], pad_id: int) -> SequenceBatch:
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    positions, targets, owners = [], [], []
    for row, sequence in enumerate(sequences):
        ids = sequence.prompt_ids + sequence.response_ids
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        first = len(sequence.prompt_ids)
        # position p predicts token p + 1
        positions.append(torch.arange(first - 1, len(ids) - 1) + row * width)
        targets.append(torch.tensor(sequence.response_ids, dtype=torch.long))
        owners.append(torch.full((len(sequence.response_ids),), row, dtype=torch.long))
    return SequenceBatch(
        input_ids, attention_mask, torch.cat(positions), torch.cat(targets), torch.cat(owners), len(sequences)
    )
