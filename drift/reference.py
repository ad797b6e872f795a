"""Reference log-probs: one frozen forward per unique sequence, cached on disk.

The cache file is named by a fingerprint of the reference weights, and each entry is keyed by a
hash of the sequence's token ids (and its prompt/response boundary), so a cached value can never
be applied to another sequence or to another reference model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from drift.parallel import Runtime, barrier, sequence_logps
from drift.tokenize import TokenSequence, collate_sequences


def weights_fingerprint(model: nn.Module, runtime: Runtime) -> str:
    """Hash of every parameter's full values, by name; the same for any number of ranks.

    Call it before sharding: each rank hashes a disjoint share of the tensors and the digests
    are gathered, so the cost is split across ranks.
    """
    named = sorted((name, tensor) for name, tensor in model.state_dict().items())
    digests = {}
    for index, (name, tensor) in enumerate(named):
        if index % runtime.world_size != runtime.rank:
            continue
        data = tensor.detach().contiguous().cpu()
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{name}:{tuple(data.shape)}:{tensor.dtype}".encode())
        digest.update(data.numpy().tobytes())
        digests[name] = digest.hexdigest()
    if runtime.distributed:
        gathered: list[dict] = [None] * runtime.world_size  # type: ignore[list-item]
        dist.all_gather_object(gathered, digests)
        digests = {name: value for part in gathered for name, value in part.items()}
    combined = hashlib.sha256("".join(f"{name}={digests[name]};" for name, _ in named).encode())
    return combined.hexdigest()[:32]


class ReferenceCache:
    """{sequence key: summed response log-prob} for one reference model, in one JSON file."""

    def __init__(self, folder: Path, fingerprint: str):
        self.path = Path(folder) / f"reference_{fingerprint}.json"
        self.fingerprint = fingerprint
        self.values: dict[str, float] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def missing(self, sequences: list[TokenSequence]) -> list[TokenSequence]:
        unique = {sequence.key: sequence for sequence in sequences}
        return [sequence for key, sequence in sorted(unique.items()) if key not in self.values]

    def lookup(self, sequence: TokenSequence) -> float:
        try:
            return self.values[sequence.key]
        except KeyError:
            raise KeyError(
                f"no cached reference log-prob for a sequence of {len(sequence)} tokens under reference "
                f"{self.fingerprint}; compute_missing() must run before training reads the cache"
            ) from None

    def update(self, values: dict[str, float], runtime: Runtime) -> None:
        self.values.update(values)
        if runtime.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, staging = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            with os.fdopen(handle, "w") as stream:
                json.dump(self.values, stream)
            os.replace(staging, self.path)
        barrier(runtime)


@torch.no_grad()
def compute_sequence_logps(
    model: nn.Module, sequences: list[TokenSequence], runtime: Runtime, *, batch_size: int, pad_id: int
) -> dict[str, float]:
    """Summed response log-probs for ``sequences``, split across ranks, gathered on every rank.

    Under FSDP every rank must run the same number of forwards, so short shares repeat their
    last sequence (its duplicate result is simply overwritten).
    """
    share = sequences[runtime.rank :: runtime.world_size]
    per_rank = -(-len(sequences) // runtime.world_size)
    if share and len(share) < per_rank:
        share = share + [share[-1]] * (per_rank - len(share))
    if not share and per_rank:
        share = [sequences[0]] * per_rank
    if model.share_prompts:
        # sequences with the same prompt side by side, so a batch runs each prompt once
        share = sorted(share, key=lambda sequence: (sequence.prompt_ids, len(sequence.response_ids)))
    else:
        # longest first so padding inside a batch stays small
        share = sorted(share, key=len, reverse=True)
    was_training = model.training
    model.eval()
    results: dict[str, float] = {}
    for start in range(0, len(share), batch_size):
        chunk = share[start : start + batch_size]
        batch = collate_sequences(chunk, pad_id, packed=model.packed, share_prompts=model.share_prompts).to(runtime.device)
        totals, _ = sequence_logps(model, batch)
        for sequence, value in zip(chunk, totals.double().cpu().tolist()):
            results[sequence.key] = value
    model.train(was_training)
    if hasattr(model, "reshard"):
        # FSDP keeps the root unsharded after a forward with no backward; put it back
        model.reshard()
    if runtime.distributed:
        gathered: list[dict] = [None] * runtime.world_size  # type: ignore[list-item]
        dist.all_gather_object(gathered, results)
        results = {key: value for part in gathered for key, value in part.items()}
    return results


def _fingerprints_file(folder: Path) -> Path:
    return Path(folder) / "fingerprints.json"


def known_fingerprint(folder: Path, source: str) -> str | None:
    """The fingerprint recorded for a model source in this run (its checkpoints never change)."""
    path = _fingerprints_file(folder)
    return json.loads(path.read_text()).get(source) if path.exists() else None


def remember_fingerprint(folder: Path, source: str, fingerprint: str, runtime: Runtime) -> None:
    if runtime.is_main:
        path = _fingerprints_file(folder)
        known = json.loads(path.read_text()) if path.exists() else {}
        known[source] = fingerprint
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=".fingerprints.", dir=path.parent)
        with os.fdopen(handle, "w") as stream:
            json.dump(known, stream, indent=1)
        os.replace(staging, path)
    barrier(runtime)
