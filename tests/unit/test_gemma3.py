"""Gemma 3's architecture (sliding-window and global layers, its own query scale, tied head) through
drift's log-prob path, a DPO step and the sampler's fallback loop, on tiny random weights; and
Gemma's turn template with the guidance options. The real 270M weights: tests/integration/test_gemma3_embedded.py.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from drift.config import ModelConfig
from drift.data.prompts import GUIDANCE, guided_keep_last, guided_prompt, render_prompt_ids
from drift.data.records import DsatCase
from drift.model import GEMMA_TEMPLATE, TINY_GEMMA3_SLIDING_WINDOW, build_byte_tokenizer, load_model
from drift.packing import supports_packing
from drift.parallel import SequenceLogprobModel, init_runtime, sequence_logps
from drift.reference import ReferenceCache, weights_fingerprint
from drift.sampler.process import choose_engine, hf_generate_batch
from drift.tokenize import TokenSequence, collate_sequences, response_suffix
from drift.train import Stage, train_stage
from tests.tiny import plain_fp64_logps, synthetic_pairs, tiny_config

GEMMA3 = ModelConfig(name="tiny", name_or_path="tiny:gemma3", tiny_layers=3)  # sliding, sliding, global


def _vocab() -> int:
    return len(build_byte_tokenizer())


def _sequences() -> list[TokenSequence]:
    """Pairs with prompts long enough that the window cuts them, and one shared prompt."""
    pairs = synthetic_pairs(3, seed=11)
    longer = [TokenSequence(p.chosen.prompt_ids * 2, s.response_ids) for p in pairs for s in (p.chosen, p.rejected)]
    return longer + [TokenSequence(longer[0].prompt_ids, longer[1].response_ids[:3])]


def test_tiny_gemma3_has_gemma3s_architecture():
    model = load_model(GEMMA3, dtype=torch.float32, seed=0, vocab_size=_vocab())
    config = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert config.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    assert config.sliding_window == TINY_GEMMA3_SLIDING_WINDOW
    assert config.query_pre_attn_scalar != config.head_dim
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert config.final_logit_softcapping is None and config.attn_logit_softcapping is None


@pytest.mark.parametrize("layout", ["padded", "packed", "shared_prompts"])
def test_sequence_logps_match_each_sequence_alone_in_fp64(layout):
    sequences = _sequences()
    assert max(len(s) for s in sequences) > 2 * TINY_GEMMA3_SLIDING_WINDOW
    expected = plain_fp64_logps(load_model(GEMMA3, dtype=torch.float32, seed=3, vocab_size=_vocab()), sequences)
    # the windows matter: the same weights with windows as long as the sequences score differently
    unwindowed = load_model(GEMMA3, dtype=torch.float32, seed=3, vocab_size=_vocab())
    for layer in unwindowed.model.layers:
        layer.self_attn.sliding_window = None
    unwindowed.config.layer_types = ["full_attention"] * 3
    assert not torch.allclose(plain_fp64_logps(unwindowed, sequences), expected, atol=1e-3)

    model = load_model(GEMMA3, dtype=torch.float32, seed=3, vocab_size=_vocab()).double()
    wrapper = SequenceLogprobModel(model, packed=layout != "padded", share_prompts=layout == "shared_prompts")
    # packed wherever drift.packing supports sliding windows; padded rows otherwise
    assert wrapper.packed == (layout != "padded" and supports_packing(model.config))
    batch = collate_sequences(sequences, pad_id=0, packed=wrapper.packed, share_prompts=wrapper.share_prompts)
    assert (batch.num_padding == 0) == wrapper.packed
    with torch.no_grad():
        totals, _ = sequence_logps(wrapper, batch)
    assert torch.allclose(totals.double(), expected, atol=1e-5, rtol=1e-6), (layout, totals, expected)


def _one_step(tmp_path, packing: bool, made_up: dict) -> tuple[dict, dict]:
    """One SGD step of train_stage on four pairs whose reference log-probs are ``made_up``."""
    runtime = init_runtime("cpu", "fp32")
    config = tiny_config(tmp_path, per_device_batch_size=4, optimizer="sgd", lr=0.5, warmup_ratio=0.0, packing=packing)
    config.model = GEMMA3
    tokenizer = build_byte_tokenizer()
    model = load_model(config.model, dtype=torch.float32, seed=config.trainer.seed, vocab_size=len(tokenizer))
    (tmp_path / "cache").mkdir(parents=True)
    ReferenceCache(tmp_path / "cache", weights_fingerprint(model, runtime), runtime.dtype).path.write_text(json.dumps(made_up))
    pairs = _step_pairs()
    stage = Stage("ws", tmp_path / "stage", pairs, None, None, 1, tmp_path / "cache")
    folder = train_stage(config, runtime, stage, tokenizer)
    record = json.loads((tmp_path / "stage" / "metrics.jsonl").read_text().splitlines()[0])
    return record, load_file(folder / "model.safetensors")


def _step_pairs():
    return [
        type(p)(p.pair_id, TokenSequence(p.chosen.prompt_ids * 2, p.chosen.response_ids),
                TokenSequence(p.chosen.prompt_ids * 2, p.rejected.response_ids))
        for p in synthetic_pairs(4, seed=5)
    ]


def test_a_dpo_step_packed_and_padded_gives_the_hand_computed_loss_and_the_same_weights(tmp_path):
    """Forward, DPO loss, backward, SGD step: the trainer's code on Gemma 3's architecture."""
    pairs = _step_pairs()
    sequences = [s for pair in pairs for s in (pair.chosen, pair.rejected)]
    made_up = {s.key: -3.0 * index for index, s in enumerate(sequences)}
    initial = load_model(GEMMA3, dtype=torch.float32, seed=tiny_config(tmp_path).trainer.seed, vocab_size=_vocab())
    start_weights = {name: p.detach().clone() for name, p in initial.named_parameters()}
    policy = plain_fp64_logps(initial, sequences)
    beta = tiny_config(tmp_path).method.beta
    margins = beta * ((policy[0::2] - torch.tensor([made_up[p.chosen.key] for p in pairs], dtype=torch.float64))
                      - (policy[1::2] - torch.tensor([made_up[p.rejected.key] for p in pairs], dtype=torch.float64)))
    expected_loss = torch.nn.functional.softplus(-margins).mean().item()

    results = {}
    for packing in (True, False):
        record, weights = _one_step(tmp_path / str(packing), packing, made_up)
        assert record["loss"] == pytest.approx(expected_loss, rel=1e-5), packing
        assert (record["padding_share"] == 0) == (packing and supports_packing(initial.config)), packing
        results[packing] = weights
    for name, weight in results[True].items():
        assert torch.allclose(weight, results[False][name], atol=1e-6, rtol=1e-5), name
    moved = [name for name, weight in results[False].items() if not torch.equal(weight, start_weights[name])]
    assert "model.layers.0.self_attn.q_proj.weight" in moved and "model.embed_tokens.weight" in moved
    # the saved stage model reloads as Gemma 3, windows and all: what the sampler and the next stage read
    reloaded = load_model(ModelConfig(name="policy", name_or_path=str(tmp_path / "False" / "stage" / "model")),
                          dtype=torch.float32, seed=0)
    assert type(reloaded).__name__ == "Gemma3ForCausalLM" and reloaded.config.layer_types == initial.config.layer_types
    assert reloaded.config.sliding_window == TINY_GEMMA3_SLIDING_WINDOW


def test_the_sampler_falls_back_to_the_plain_loop_and_a_batch_samples_as_each_prompt_alone():
    """Left-padded rows of different lengths, replies past the window: the same draws as alone."""
    model = load_model(GEMMA3, dtype=torch.float32, seed=4, vocab_size=_vocab()).eval()
    engine, reason = choose_engine(model, "auto")
    assert engine == "loop" and "gemma3_text" in reason
    base = tuple((index * 37) % 250 for index in range(2 * TINY_GEMMA3_SLIDING_WINDOW + 4))
    prompts = [base, base[3:16], base[5:11], (7, 8, 9)]  # longer and shorter than the window
    seeds = [11, 12, 13, 14]
    settings = dict(temperature=1.0, top_p=0.9, max_new_tokens=3 * TINY_GEMMA3_SLIDING_WINDOW, stop_ids=[257], pad_id=0)
    batched = hf_generate_batch(model, prompts, seeds, **settings)
    alone = [hf_generate_batch(model, [prompt], [seed], **settings)[0] for prompt, seed in zip(prompts, seeds)]
    assert batched == alone
    assert max(len(g.token_ids) for g in batched) > TINY_GEMMA3_SLIDING_WINDOW


# ---- Gemma's turn template ------------------------------------------------------------------------


@pytest.fixture
def gemma_tokenizer():
    """The byte tokenizer with Gemma's specials and template (the real one needs the package)."""
    tokenizer = build_byte_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<bos>", "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = GEMMA_TEMPLATE
    return tokenizer


CASE = DsatCase("g", ({"role": "system", "content": "Be brief."}, {"role": "user", "content": " q? "}), "bad", "fb")


def test_gemma_template_renders_gemmas_turns(gemma_tokenizer):
    text = gemma_tokenizer.apply_chat_template(list(CASE.history) + [{"role": "assistant", "content": "a"}],
                                               tokenize=False, add_generation_prompt=True)
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nq?<end_of_turn>\n<start_of_turn>model\na<end_of_turn>\n"
                    "<start_of_turn>model\n")
    assert response_suffix(gemma_tokenizer) == "<end_of_turn>"


@pytest.mark.parametrize("guidance", sorted(GUIDANCE))
def test_every_guidance_but_system_turn_renders_with_gemmas_template(gemma_tokenizer, guidance):
    messages = guided_prompt(CASE, guidance)
    if guidance == "system_turn":
        refusal = "Gemma has no system turn after the first message.*data.guidance=feedback_instruction"
        with pytest.raises(ValueError, match=refusal):
            render_prompt_ids(messages, gemma_tokenizer, max_prompt_tokens=10_000, keep_last=guided_keep_last(guidance))
        return
    ids, truncated = render_prompt_ids(messages, gemma_tokenizer, max_prompt_tokens=10_000,
                                       keep_last=guided_keep_last(guidance))
    feedback = messages[-1]["content"].strip()  # Gemma trims every message
    expected = ("<bos><start_of_turn>user\nBe brief.\n\nq?<end_of_turn>\n<start_of_turn>model\nbad<end_of_turn>\n"
                f"<start_of_turn>user\n{feedback}<end_of_turn>\n<start_of_turn>model\n")
    assert ids == gemma_tokenizer(expected, add_special_tokens=False)["input_ids"] and not truncated
    assert ids[0] == gemma_tokenizer.bos_token_id


def test_gemma_template_refuses_turns_that_do_not_alternate(gemma_tokenizer):
    with pytest.raises(ValueError, match="must alternate"):
        render_prompt_ids([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], gemma_tokenizer,
                          max_prompt_tokens=10_000, keep_last=1)


def test_chunks_that_do_not_reassemble_to_the_checksum_are_refused(tmp_path):
    from hashlib import sha256

    from drift.model import _assemble_chunks

    chunks = []
    for index, content in enumerate((b"GGUF", b"-rest")):
        chunks.append(tmp_path / f"part{index}")
        chunks[-1].write_bytes(content)
    _assemble_chunks(chunks, tmp_path / "whole.gguf", sha256(b"GGUF-rest").hexdigest())
    assert (tmp_path / "whole.gguf").read_bytes() == b"GGUF-rest"
    with pytest.raises(RuntimeError, match="reassemble to sha256 .* --force-reinstall"):
        _assemble_chunks(chunks[::-1], tmp_path / "other.gguf", sha256(b"GGUF-rest").hexdigest())


def test_the_gemma3_270m_config_composes_with_a_guidance_gemma_renders():
    from drift.compose import compose
    from drift.config import Config

    config = compose("config", ["model=gemma3_270m"], Config)
    assert (config.model.name, config.model.name_or_path) == ("gemma3_270m", "embedded:gemma3-270m")
    assert config.data.guidance == "feedback_only" and config.data.prompt_format == "chat_template"
