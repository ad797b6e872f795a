"""Reference log-probs: one frozen forward per unique sequence, cached on disk.

The cache file is named by a fingerprint of the reference weights and the dtype the model computes
in (a bf16 log-prob differs from an fp32 one by far more than training tolerates at step 0), and
each entry is keyed by a hash of the sequence's token ids (and its prompt/response boundary), so a
cached value can never be applied to another sequence, another reference model or another precision.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from drift.fingerprint import fingerprint
from drift.io import write_json_atomic
from drift.parallel import Runtime, SequenceLogprobModel, on_main_then_wait, sequence_logps
from drift.tokenize import TokenizedPair, TokenSequence, collate_sequences


def weights_fingerprint(model: nn.Module, runtime: Runtime) -> str:
    """Hash of every parameter's full values, by name; the same for any number of ranks, sharded or not.

    Each rank hashes a disjoint share of the tensors and the digests are gathered, so the cost is
    split across ranks. A sharded (FSDP) tensor is gathered whole in turn (a collective every rank
    runs; transient: one full tensor), and hashed by its owner.
    """
    from torch.distributed.tensor import DTensor

    named = sorted(((name, tensor) for name, tensor in model.state_dict().items()), key=lambda item: item[0])
    digests = {}
    for index, (name, tensor) in enumerate(named):
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        if index % runtime.world_size != runtime.rank:
            continue
        digests[name] = fingerprint((name, tensor))
    if runtime.distributed:
        gathered: list[dict] = [None] * runtime.world_size  # type: ignore[list-item]
        dist.all_gather_object(gathered, digests)
        digests = {name: value for part in gathered for name, value in part.items()}
    return fingerprint([(name, digests[name]) for name, _ in named])


class ReferenceCache:
    """{sequence key: summed response log-prob} for one reference model, in one JSON file."""

    def __init__(self, folder: Path, fingerprint: str, compute_dtype: torch.dtype | None = None):
        dtype = "" if compute_dtype is None else "_" + str(compute_dtype).removeprefix("torch.")
        self.path = Path(folder) / f"reference_{fingerprint}{dtype}.json"
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

    def add(self, values: dict[str, float]) -> None:
        self.values.update(values)

    def save(self) -> None:
        write_json_atomic(self.path, self.values, indent=None)


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


def remember_fingerprint(folder: Path, source: str, weights: str) -> None:
    path = _fingerprints_file(folder)
    known = json.loads(path.read_text()) if path.exists() else {}
    known[source] = weights
    write_json_atomic(path, known, indent=1)


def fingerprint_and_remember(model: nn.Module, folder: Path, source: str | None, runtime: Runtime) -> str:
    """The weights fingerprint of an unsharded model, recorded for its source (when it has one) by rank 0."""
    weights = weights_fingerprint(model, runtime)
    if source is not None:
        on_main_then_wait(runtime, lambda: remember_fingerprint(folder, source, weights))
    return weights


def _add_and_save(cache: ReferenceCache, values: dict[str, float], runtime: Runtime) -> None:
    """Every rank holds the new values; rank 0 writes the file."""
    cache.add(values)
    on_main_then_wait(runtime, cache.save)


@dataclass(frozen=True)
class ReferenceFill:
    """A stage's filled reference cache and what filling it cost (recorded in the trainer state)."""

    cache: ReferenceCache
    computed: int  # sequences the reference model ran (cache misses)
    seconds: float  # wall time, fingerprinting and loading the reference included


def fill_reference_cache(
    pairs: list[TokenizedPair],
    folder: Path,
    *,
    source: str | None,
    recorded_fingerprint: str,
    start_policy: SequenceLogprobModel | None,
    load_reference: Callable[[], SequenceLogprobModel],
    runtime: Runtime,
    batch_size: int,
    pad_id: int,
    stage_name: str,
) -> ReferenceFill:
    """A cache in ``folder`` holding both sides of every one of ``pairs``, and what it cost.

    ``source`` is where the reference model lives (None: the configured model) and
    ``recorded_fingerprint`` its fingerprint as far as this stage knows ("" when unknown).
    ``start_policy`` is the already sharded policy when it still is the reference (a fresh start
    whose reference is the starting policy): it runs the missing forwards, so no second model is
    loaded. Otherwise ``load_reference()`` builds the reference (sharded, no gradients), which is freed after.
    ``batch_size`` is sequences per forward (no gradients, so twice the training micro-batch fits).
    """
    started = time.perf_counter()
    sequences = [sequence for pair in pairs for sequence in (pair.chosen, pair.rejected)]
    cache, computed = _fill(sequences, folder, source=source, recorded_fingerprint=recorded_fingerprint,
                            start_policy=start_policy, load_reference=load_reference, runtime=runtime,
                            batch_size=batch_size, pad_id=pad_id, stage_name=stage_name)
    return ReferenceFill(cache, computed, time.perf_counter() - started)


def _fill(sequences: list[TokenSequence], folder: Path, *, source: str | None, recorded_fingerprint: str,
          start_policy: SequenceLogprobModel | None, load_reference: Callable[[], SequenceLogprobModel],
          runtime: Runtime, batch_size: int, pad_id: int, stage_name: str) -> tuple[ReferenceCache, int]:
    if not recorded_fingerprint and source is not None:
        # e.g. method.reference=initial: the initial model's fingerprint is known from an earlier stage
        recorded_fingerprint = known_fingerprint(folder, source) or ""
    if recorded_fingerprint:
        cache = ReferenceCache(folder, recorded_fingerprint, runtime.dtype)
        missing = cache.missing(sequences)
        if not missing:
            return cache, 0
        if start_policy is not None:
            _add_and_save(cache, compute_sequence_logps(start_policy, missing, runtime, batch_size=batch_size, pad_id=pad_id), runtime)
            return cache, len(missing)
    reference = load_reference()
    fingerprint = fingerprint_and_remember(reference.causal_lm, folder, source, runtime)
    if recorded_fingerprint and recorded_fingerprint != fingerprint:
        raise RuntimeError(
            f"stage {stage_name}: the reference model at {source!r} changed since this run started "
            f"(fingerprint {fingerprint} != {recorded_fingerprint}); start a new run_name"
        )
    reference.requires_grad_(False)
    cache = ReferenceCache(folder, fingerprint, runtime.dtype)
    missing = cache.missing(sequences)
    if missing:
        _add_and_save(cache, compute_sequence_logps(reference, missing, runtime, batch_size=batch_size, pad_id=pad_id), runtime)
    del reference
    gc.collect()  # FSDP's state references the module in cycles: free the reference's shards now
    return cache, len(missing)
