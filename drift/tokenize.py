"""Pairs -> token ids with response boundaries, and token sequences -> model batches.

A sequence is (prompt ids, response ids). Only response tokens carry log-probs: the position
before each response token predicts it, so prompt positions never reach the lm_head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from drift.data.records import PreferencePair, Rejected
from drift.fingerprint import fingerprint
from drift.packing import PackedLayout

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
        return fingerprint((np.asarray(self.prompt_ids, dtype=np.int64), np.asarray(self.response_ids, dtype=np.int64)),
                           length=64)


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
        for text, finished in ((pair.chosen, pair.chosen_finished), (pair.rejected, pair.rejected_finished)):
            # an unfinished (cut) reply gets no invented end-of-turn token
            response_ids = tokenizer(text + (suffix if finished else ""), add_special_tokens=False)["input_ids"][:budget]
            sides.append(TokenSequence(tuple(prompt_ids), tuple(response_ids)))
        if not sides[0].response_ids or not sides[1].response_ids:
            rejects.append(Rejected(pair.pair_id, "empty_response", "chosen or rejected has no tokens"))
            continue
        tokenized.append(TokenizedPair(pair.pair_id, sides[0], sides[1]))
    return tokenized, rejects, truncated_prompts


@dataclass(frozen=True)
class Segment:
    """One stretch of a packed row: a prompt (the trunk) and the responses that continue it.

    Flat indices into the row: the trunk is [start, trunk_end), branch i is
    [branch_ends[i-1] (trunk_end for i = 0), branch_ends[i]). Every branch attends to the trunk
    and causally to itself, never to another branch, and its positions continue the trunk's, so
    each branch computes exactly what its sequence alone would.
    """

    start: int
    trunk_end: int
    branch_ends: tuple[int, ...]


@dataclass
class SequenceBatch:
    """Sequences as model input plus the flat positions whose next token is scored.

    Packed: one row [1, total tokens], ``position_ids`` restart per segment, ``boundaries`` holds
    the cumulative segment starts, no padding; with shared prompts, sequences with the same
    prompt share one copy of it (``segments``). Padded: one row per sequence, right padding.
    ``num_tokens`` counts every sequence in full (the work a plain layout would do);
    ``num_positions`` what the model actually runs.
    """

    input_ids: torch.Tensor  # [rows, T]
    attention_mask: torch.Tensor | None  # [rows, T], padded layout only
    position_ids: torch.Tensor | None  # [1, T], packed layout only
    boundaries: torch.Tensor | None  # [segments + 1] int32, packed layout only
    target_positions: torch.Tensor  # [n] flat index into rows*T of the position predicting a target
    target_ids: torch.Tensor  # [n]
    target_sequence: torch.Tensor  # [n] which sequence each target belongs to
    num_sequences: int
    num_tokens: int
    num_padding: int
    segments: tuple[Segment, ...] | None = None  # packed layout with a shared prompt somewhere

    @property
    def num_positions(self) -> int:
        return self.input_ids.numel()

    def to(self, device) -> "SequenceBatch":
        def move(tensor):
            return None if tensor is None else tensor.to(device)

        return SequenceBatch(
            self.input_ids.to(device), move(self.attention_mask), move(self.position_ids), self.boundaries,
            self.target_positions.to(device), self.target_ids.to(device), self.target_sequence.to(device),
            self.num_sequences, self.num_tokens, self.num_padding, self.segments,
        )

    def model_inputs(self) -> dict:
        if self.boundaries is None:
            return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        longest = int((self.boundaries[1:] - self.boundaries[:-1]).max())  # host tensor: no device sync
        boundaries = self.boundaries.to(self.input_ids.device)
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            # the names transformers' flash-attn varlen path reads (model.attn_implementation=flash_attention_2)
            "cu_seq_lens_q": boundaries,
            "cu_seq_lens_k": boundaries,
            "max_length_q": longest,
            "max_length_k": longest,
            # what drift.packing's attention reads: the same boundaries (and shared prompts) as Python
            # ints, built once per batch, so no layer syncs the device to learn them
            "drift_layout": PackedLayout(self.boundaries.tolist(), self.segments),
        }


def _padded_targets(sequences: list[TokenSequence], width: int):
    positions, targets, owners = [], [], []
    for index, sequence in enumerate(sequences):
        first = index * width + len(sequence.prompt_ids)
        # position p predicts token p + 1
        positions.append(torch.arange(first - 1, index * width + len(sequence) - 1))
        targets.append(torch.tensor(sequence.response_ids, dtype=torch.long))
        owners.append(torch.full((len(sequence.response_ids),), index, dtype=torch.long))
    return torch.cat(positions), torch.cat(targets), torch.cat(owners)


def _group_by_prompt(sequences: list[TokenSequence], share_prompts: bool) -> list[list[int]]:
    """Sequence indices grouped by identical prompt (first appearance order), or one per group."""
    if not share_prompts:
        return [[index] for index in range(len(sequences))]
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, sequence in enumerate(sequences):
        groups.setdefault(sequence.prompt_ids, []).append(index)
    return list(groups.values())


def _collate_packed(sequences: list[TokenSequence], share_prompts: bool) -> SequenceBatch:
    ids: list[int] = []
    positions_in_sequence: list[torch.Tensor] = []
    target_positions: list[torch.Tensor | None] = [None] * len(sequences)
    segments: list[Segment] = []
    for group in _group_by_prompt(sequences, share_prompts):
        prompt = sequences[group[0]].prompt_ids
        start = len(ids)
        ids.extend(prompt)
        trunk_end = len(ids)
        positions_in_sequence.append(torch.arange(len(prompt)))
        branch_ends = []
        for index in group:
            response = sequences[index].response_ids
            branch_start = len(ids)
            ids.extend(response)
            branch_ends.append(len(ids))
            positions_in_sequence.append(torch.arange(len(prompt), len(prompt) + len(response)))
            # the trunk's last token predicts the first response token, then the branch predicts itself
            target_positions[index] = torch.cat(
                [torch.tensor([trunk_end - 1]), torch.arange(branch_start, branch_start + len(response) - 1)]
            )
        segments.append(Segment(start, trunk_end, tuple(branch_ends)))
    boundaries = torch.tensor([segment.start for segment in segments] + [len(ids)], dtype=torch.int32)
    targets = torch.cat([torch.tensor(sequence.response_ids, dtype=torch.long) for sequence in sequences])
    owners = torch.cat([torch.full((len(s.response_ids),), i, dtype=torch.long) for i, s in enumerate(sequences)])
    shared = any(len(segment.branch_ends) > 1 for segment in segments)
    return SequenceBatch(
        torch.tensor([ids], dtype=torch.long), None, torch.cat(positions_in_sequence).unsqueeze(0), boundaries,
        torch.cat(target_positions), targets, owners, len(sequences), sum(len(s) for s in sequences), 0,
        tuple(segments) if shared else None,
    )


def collate_sequences(
    sequences: list[TokenSequence], pad_id: int, *, packed: bool = False, share_prompts: bool = False
) -> SequenceBatch:
    """One model batch for ``sequences``; ``target_sequence`` indexes them in the order given.

    ``share_prompts`` (packed only) lays out sequences with the same prompt as one prompt and
    several responses: a DPO pair then runs its prompt once instead of twice.
    """
    if any(not sequence.prompt_ids for sequence in sequences):
        raise ValueError("every sequence needs at least one prompt token (the position that predicts the first response token)")
    if packed:
        return _collate_packed(sequences, share_prompts)
    total = sum(len(sequence) for sequence in sequences)
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids = sequence.prompt_ids + sequence.response_ids
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    positions, targets, owners = _padded_targets(sequences, width)
    return SequenceBatch(
        input_ids, attention_mask, None, None, positions, targets, owners, len(sequences), total, input_ids.numel() - total
    )
