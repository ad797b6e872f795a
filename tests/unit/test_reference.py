"""The reference cache: values equal a fresh fp64 forward, keys follow the tokens, training reads it."""

import json
import math

import torch

from drift.model import build_byte_tokenizer, load_model
from drift.parallel import SequenceLogprobModel, init_runtime
from drift.reference import ReferenceCache, compute_sequence_logps, weights_fingerprint
from drift.tokenize import TokenSequence
from drift.train import Stage, train_stage
from tests.tiny import synthetic_pairs, tiny_config


def _fresh_fp64_logp(model, sequence: TokenSequence) -> float:
    """Plain reference: full logits in fp64, log_softmax, gather, sum over the response."""
    ids = torch.tensor([sequence.prompt_ids + sequence.response_ids])
    with torch.no_grad():
        logits = model.double()(ids).logits[0]
    model.float()
    first = len(sequence.prompt_ids)
    logps = torch.log_softmax(logits[first - 1 : -1], dim=-1)
    return logps.gather(1, torch.tensor(sequence.response_ids).unsqueeze(1)).sum().item()


def test_cached_values_equal_a_fresh_forward_and_changed_sequences_miss(tmp_path):
    runtime = init_runtime("cpu", "fp32")
    config = tiny_config(tmp_path)
    model = load_model(config.model, dtype=torch.float32, seed=5, vocab_size=len(build_byte_tokenizer()))
    pairs = synthetic_pairs(5, seed=9)
    sequences = [s for pair in pairs for s in (pair.chosen, pair.rejected)]

    cache = ReferenceCache(tmp_path, weights_fingerprint(model, runtime))
    assert len(cache.missing(sequences)) == len(sequences)
    cache.add(compute_sequence_logps(SequenceLogprobModel(model), sequences, runtime, batch_size=3, pad_id=0))
    cache.save()

    reopened = ReferenceCache(tmp_path, cache.fingerprint)  # read back from disk
    assert reopened.missing(sequences) == []
    for sequence in sequences:
        assert math.isclose(reopened.lookup(sequence), _fresh_fp64_logp(model, sequence), abs_tol=1e-4)

    # one token changed, or the prompt/response boundary moved: a different key, a miss
    first = sequences[0]
    changed = TokenSequence(first.prompt_ids, first.response_ids[:-1] + ((first.response_ids[-1] + 1) % 250,))
    moved = TokenSequence(first.prompt_ids + first.response_ids[:1], first.response_ids[1:])
    assert reopened.missing([changed, moved]) == sorted([changed, moved], key=lambda s: s.key)

    # the same weights computing in another dtype: another cache file, every sequence a miss
    assert ReferenceCache(tmp_path, cache.fingerprint, torch.bfloat16).missing(sequences) == sorted(sequences, key=lambda s: s.key)
    assert ReferenceCache(tmp_path, cache.fingerprint, torch.float32).path != cache.path

    # other weights: another fingerprint, another cache file
    with torch.no_grad():
        model.model.norm.weight.add_(1e-3)
    assert weights_fingerprint(model, runtime) != cache.fingerprint


def test_training_reads_the_cache_instead_of_running_a_reference_forward(tmp_path):
    """Pre-fill the cache with made-up reference values: the first loss must follow them."""
    runtime = init_runtime("cpu", "fp32")
    config = tiny_config(tmp_path, per_device_batch_size=4)
    tokenizer = build_byte_tokenizer()
    model = load_model(config.model, dtype=torch.float32, seed=config.trainer.seed, vocab_size=len(tokenizer))
    pairs = synthetic_pairs(4, seed=1)
    fingerprint = weights_fingerprint(model, runtime)
    made_up = {}
    for index, pair in enumerate(pairs):
        made_up[pair.chosen.key] = -1.0 * index
        made_up[pair.rejected.key] = -2.0 * index
    (tmp_path / "cache").mkdir()
    ReferenceCache(tmp_path / "cache", fingerprint, runtime.dtype).path.write_text(json.dumps(made_up))

    stage = Stage("ws", tmp_path / "stage", pairs, None, None, 1, tmp_path / "cache")
    train_stage(config, runtime, stage, tokenizer)
    first = json.loads((tmp_path / "stage" / "metrics.jsonl").read_text().splitlines()[0])

    beta = config.method.beta
    losses = []
    for index, pair in enumerate(pairs):
        s = beta * ((_fresh_fp64_logp(model, pair.chosen) + 1.0 * index) - (_fresh_fp64_logp(model, pair.rejected) + 2.0 * index))
        losses.append(math.log1p(math.exp(-s)))
    assert math.isclose(first["loss"], sum(losses) / len(losses), rel_tol=1e-5)
