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
    """Sequences as model input plus the flat positions whose next token is scored.

    Packed: one row [1, total tokens], ``position_ids`` restart per sequence, ``boundaries`` holds
    the cumulative sequence starts, no padding. Padded: one row per sequence, right padding.
    """

    input_ids: torch.Tensor  # [rows, T]
    attention_mask: torch.Tensor | None  # [rows, T], padded layout only
    position_ids: torch.Tensor | None  # [1, T], packed layout only
    boundaries: torch.Tensor | None  # [sequences + 1] int32, packed layout only
    target_positions: torch.Tensor  # [n] flat index into rows*T of the position predicting a target
    target_ids: torch.Tensor  # [n]
    target_sequence: torch.Tensor  # [n] which sequence each target belongs to
    num_sequences: int
    num_tokens: int
    num_padding: int

    def to(self, device) -> "SequenceBatch":
        def move(tensor):
            return None if tensor is None else tensor.to(device)

        return SequenceBatch(
            self.input_ids.to(device), move(self.attention_mask), move(self.position_ids), self.boundaries,
            self.target_positions.to(device), self.target_ids.to(device), self.target_sequence.to(device),
            self.num_sequences, self.num_tokens, self.num_padding,
        )

    def model_inputs(self) -> dict:
        if self.boundaries is None:
            return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        longest = int((self.boundaries[1:] - self.boundaries[:-1]).max())
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            # the names transformers' flash-attn varlen path reads; our packed SDPA reads them too
            "cu_seq_lens_q": self.boundaries.to(self.input_ids.device),
            "cu_seq_lens_k": self.boundaries.to(self.input_ids.device),
            "max_length_q": longest,
            "max_length_k": longest,
        }


def _targets(sequences: list[TokenSequence], starts: list[int]):
    positions, targets, owners = [], [], []
    for index, (sequence, start) in enumerate(zip(sequences, starts)):
        first = start + len(sequence.prompt_ids)
        # position p predicts token p + 1
        positions.append(torch.arange(first - 1, start + len(sequence) - 1))
        targets.append(torch.tensor(sequence.response_ids, dtype=torch.long))
        owners.append(torch.full((len(sequence.response_ids),), index, dtype=torch.long))
    return torch.cat(positions), torch.cat(targets), torch.cat(owners)


def collate_sequences(sequences: list[TokenSequence], pad_id: int, *, packed: bool = False) -> SequenceBatch:
    if any(not sequence.prompt_ids for sequence in sequences):
        raise ValueError("every sequence needs at least one prompt token (the position that predicts the first response token)")
    total = sum(len(sequence) for sequence in sequences)
    if packed:
        ids = [token for sequence in sequences for token in sequence.prompt_ids + sequence.response_ids]
        lengths = torch.tensor([len(sequence) for sequence in sequences])
        boundaries = torch.zeros(len(sequences) + 1, dtype=torch.int32)
        boundaries[1:] = lengths.cumsum(0)
        position_ids = torch.cat([torch.arange(length) for length in lengths.tolist()]).unsqueeze(0)
        starts = boundaries[:-1].tolist()
        positions, targets, owners = _targets(sequences, starts)
        return SequenceBatch(
            torch.tensor([ids], dtype=torch.long), None, position_ids, boundaries,
            positions, targets, owners, len(sequences), total, 0,
        )
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids = sequence.prompt_ids + sequence.response_ids
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    positions, targets, owners = _targets(sequences, [row * width for row in range(len(sequences))])
    return SequenceBatch(
        input_ids, attention_mask, None, None, positions, targets, owners, len(sequences), total, input_ids.numel() - total
    )
