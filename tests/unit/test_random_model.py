"""random:<source>: seeded random weights in the shape of a folder holding config.json and a tokenizer
(drift.model.build_random_model, ensure_random_model, write_model_shape)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from drift.config import ModelConfig
from drift.model import (
    RANDOM_WEIGHTS_FILE,
    RANDOM_WEIGHTS_SEED,
    build_byte_tokenizer,
    build_random_model,
    load_model,
    load_tokenizer,
    resolve_source,
    write_model_shape,
)

HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE = 48, 3, 6, 2, 80


@pytest.fixture
def shape(tmp_path):
    """A Llama-shaped folder: config.json and the byte tokenizer, no weights."""
    from transformers import LlamaConfig

    tokenizer = build_byte_tokenizer()
    folder = tmp_path / "shape"
    LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_model_has_the_shapes_its_config_names(shape):
    model = build_random_model(shape, seed=0)
    vocab, head_dim = len(build_byte_tokenizer()), HIDDEN // HEADS
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert shapes["model.embed_tokens.weight"] == (vocab, HIDDEN)
    assert shapes["lm_head.weight"] == (vocab, HIDDEN)
    assert len(model.model.layers) == LAYERS
    assert shapes["model.layers.2.self_attn.q_proj.weight"] == (HEADS * head_dim, HIDDEN)
    assert shapes["model.layers.2.self_attn.k_proj.weight"] == (KV_HEADS * head_dim, HIDDEN)
    assert shapes["model.layers.2.mlp.up_proj.weight"] == (INTERMEDIATE, HIDDEN)
    assert all(tensor.dtype == torch.float32 for tensor in model.state_dict().values())


def test_the_weights_are_the_seeds_and_leave_the_callers_generator_alone(shape):
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    first, again, other = (build_random_model(shape, seed=seed).state_dict() for seed in (0, 0, 1))
    assert torch.equal(torch.rand(4), expected_next)  # three builds drew nothing from the caller's generator
    assert all(torch.equal(first[name], again[name]) for name in first)
    projection = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(first[projection], other[projection])
    # not all zeros or ones: the architecture's own random initialization ran
    assert first[projection].std() > 0


def test_a_random_source_is_built_once_into_the_cache_and_says_random_weights(shape, cache, capsys):
    config = ModelConfig(name="shape", name_or_path=f"random:{shape}")
    folder = Path(resolve_source(config))
    assert folder.parent == cache / "random"
    record = json.loads((folder / RANDOM_WEIGHTS_FILE).read_text())
    assert record["seed"] == RANDOM_WEIGHTS_SEED and record["source"] == f"random:{shape}"
    assert "random weights" in capsys.readouterr().out

    built_at = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_source(config) == str(folder) and (folder / "model.safetensors").stat().st_mtime_ns == built_at

    loaded = load_model(config, dtype=torch.float32, seed=99).state_dict()  # trainer.seed plays no part
    expected = build_random_model(shape, seed=RANDOM_WEIGHTS_SEED).state_dict()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)
    tokenizer = load_tokenizer(config)
    assert tokenizer("hi")["input_ids"] == build_byte_tokenizer()("hi")["input_ids"]


def test_an_edited_shape_builds_anew(shape, cache):
    config = ModelConfig(name="shape", name_or_path=f"random:{shape}")
    before = resolve_source(config)
    settings = json.loads((shape / "config.json").read_text())
    (shape / "config.json").write_text(json.dumps({**settings, "num_hidden_layers": 1}))
    after = resolve_source(config)
    assert after != before
    assert json.loads((Path(after) / "config.json").read_text())["num_hidden_layers"] == 1


def test_a_folder_without_a_tokenizer_is_refused_with_the_fix(tmp_path, cache):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match="config.json and tokenizer.*write_model_shape"):
        resolve_source(ModelConfig(name_or_path=f"random:{tmp_path / 'bare'}"))


def test_write_model_shape_keeps_the_config_and_tokenizer_and_drops_the_weights(shape, cache, tmp_path):
    trained = resolve_source(ModelConfig(name_or_path=f"random:{shape}"))  # a folder with weights
    written = write_model_shape(trained, tmp_path / "copy")
    names = {path.name for path in written.iterdir()}
    assert "config.json" in names and "tokenizer.json" in names
    assert not any(name.endswith(".safetensors") for name in names) and RANDOM_WEIGHTS_FILE not in names
    assert (written / "config.json").read_bytes() == (shape / "config.json").read_bytes()
