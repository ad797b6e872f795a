"""The sampler: seeded sampling loop against plain references, retries (the process end to end:
tests/integration/test_sampling_process.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from drift.config import ConfigError, ModelConfig, SamplerConfig
from drift.data.prompts import render_prompt_ids
from drift.fingerprint import fingerprint
from drift.model import build_byte_tokenizer, load_model
from drift.sampler.engine import StaticDecoder, draw_tokens, engine_unsupported_reason, generate_continuous
from drift.sampler.process import (
    REJECTS_FILE,
    SAMPLES_FILE,
    VLLM_MISSING,
    Generation,
    PromptFileError,
    Request,
    build_requests,
    check_gpu_memory,
    checkpoint_fingerprint,
    choose_engine,
    cut_at_stop,
    data_parallel_groups,
    generation_from_vllm,
    hf_generate_batch,
    hf_generate_fn,
    import_vllm,
    read_prompt_rows,
    run_sampler,
    sample_next_tokens,
    sample_seed,
    sample_with_retries,
    sampler_config_from_dict,
    stop_token_ids,
    vllm_engine_kwargs,
    vllm_requests,
)

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "launch" / "sample.py"
ROW_KEYS = {"prompt_id", "sample_index", "text", "num_tokens", "finish_reason", "seed", "backend",
            "prompt_hash", "checkpoint_fingerprint", "attempts"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread than on two cores shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model():
    tokenizer = build_byte_tokenizer()
    model = load_model(ModelConfig(name="tiny", name_or_path="tiny:llama"), dtype=torch.float32, seed=0,
                       vocab_size=len(tokenizer))
    return model.eval(), tokenizer


def save_checkpoint(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def context_sensitive_model():
    """The tiny model with its decoder layers' weights scaled up. At its initial scale the layers barely
    move the residual stream and, with tied embeddings, greedy decoding just repeats the last prompt
    token, whatever came before it: a test of padding, positions or the KV cache would pass blind."""
    model, _ = tiny_model()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".layers." in name and parameter.dim() == 2:
                parameter.mul_(8.0)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(*tiny_model(), tmp_path_factory.mktemp("ckpt") / "policy")


@pytest.fixture(scope="module")
def eos_checkpoint(tmp_path_factory) -> Path:
    """A tiny model that answers EOS at once: every hidden state carries a large constant in
    dimension 0 (set in every embedding), and only EOS's (tied) output row weighs it double."""
    model, tokenizer = tiny_model()
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        embedding[:, 0] = 100.0
        embedding[tokenizer.eos_token_id, 0] = 200.0
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "eos_policy")


def write_prompts(path: Path, count: int, *, long_prompt: bool = False) -> Path:
    rows = [{"prompt_id": f"case-{i}#guided", "keep_last": 1,
             "messages": [{"role": "user", "content": f"tell me about item {i} " + "and more " * (i % 4)}]}
            for i in range(count)]
    if long_prompt:
        rows.append({"prompt_id": "too-long#original", "keep_last": 1,
                     "messages": [{"role": "user", "content": "x" * 400}]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- the sampling step and loop against plain references ----------------------------------------


def test_sample_next_tokens_by_hand():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    # top_p 0.7 keeps {0, 1} (mass before token 1 is 0.5 < 0.7), renormalized to 0.625 / 0.375
    draw = lambda u, **kw: int(sample_next_tokens(logits, torch.tensor([u]), **kw))  # noqa: E731
    assert [draw(u, temperature=1.0, top_p=0.7) for u in (0.0, 0.6, 0.63, 0.999999)] == [0, 0, 1, 1]
    # temperature 0.5 squares the probabilities: [.25, .09, .0225, .0025] / .365 = [.685, .247, .062, .007];
    # top_p 0.9 keeps {0, 1}: token 0 takes u < .25 / .34 = .735
    assert [draw(u, temperature=0.5, top_p=0.9) for u in (0.73, 0.74)] == [0, 1]
    # top_p 1 keeps all: the last token takes u >= 0.95
    assert draw(0.96, temperature=1.0, top_p=1.0) == 3
    # tokens are read from the vocabulary order, not the sorted order
    shuffled = torch.tensor([[0.05, 0.15, 0.5, 0.3]]).log()
    assert int(sample_next_tokens(shuffled, torch.tensor([0.1]), temperature=1.0, top_p=0.7)) == 2
    assert int(sample_next_tokens(shuffled, torch.tensor([0.9]), temperature=1.0, top_p=0.7)) == 3


def argmax_decode(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding the plain way: one full forward per token, no padding, no cache."""
    ids = list(prompt)
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def test_greedy_sampling_loop_equals_argmax_decoding():
    model = context_sensitive_model()
    prompts = [list(range(40, 52)), list(range(100, 103)), list(range(7, 30))]  # lengths 12, 3, 23: left padding
    steps = 10
    references = [argmax_decode(model, prompt, steps) for prompt in prompts]
    assert all(len(set(reference)) > 3 for reference in references)  # not one token repeated
    # stop at a token that the first reference produces at step 4: that row must end there, the others
    # wherever (if anywhere) they produce it
    stop = references[0][4]
    generations = hf_generate_batch(model, prompts, [1, 2, 3], temperature=0.7, top_p=1e-9, max_new_tokens=steps,
                                    stop_ids=[stop], pad_id=0)
    for reference, generation in zip(references, generations):
        if stop in reference:
            cut = reference.index(stop)
            assert generation == Generation(tuple(reference[:cut]), "eos", cut + 1)
        else:
            assert generation == Generation(tuple(reference), "length", steps)
    assert generations[0].token_ids == tuple(references[0][:references[0].index(stop)])


@pytest.mark.parametrize("engine", ["loop", "static"])
def test_samples_do_not_depend_on_batch_composition_and_follow_their_seeds(engine):
    model = context_sensitive_model()
    prompts = [tuple(range(10 + i, 14 + 3 * i)) for i in range(5)]
    seeds = [11, 12, 13, 14, 15]

    class NoProgress:
        def expect(self, samples):
            pass

        def advance(self, samples, tokens):
            pass

    def sample(batch_size: int, seeds: list[int]) -> list[Generation]:
        generate = hf_generate_fn(model, SamplerConfig(max_new_tokens=8, batch_size=batch_size), [256], 257, NoProgress(),
                                  engine)
        return generate(prompts, seeds)

    one_by_one = sample(1, seeds)
    assert sample(4, seeds) == one_by_one
    # other seeds, other samples
    assert sample(3, seeds[::-1]) != one_by_one
    # a prompt's sample follows its own seed only: reversing the order of the requests changes nothing
    reversed_prompts = hf_generate_fn(model, SamplerConfig(max_new_tokens=8, batch_size=2), [256], 257, NoProgress(),
                                      engine)(prompts[::-1], seeds[::-1])
    assert reversed_prompts[::-1] == one_by_one
    assert sum(len(g.token_ids) for g in one_by_one) >= 20  # replies long enough for the comparisons to mean something


# ---- the static-cache engine against the HF forward ----------------------------------------------


def family_model(family: str, dtype=torch.float64):
    tokenizer = build_byte_tokenizer()
    model = load_model(ModelConfig(name="tiny", name_or_path=f"tiny:{family}"), dtype=dtype, seed=0,
                       vocab_size=len(tokenizer)).eval()
    with torch.no_grad():  # context-sensitive, as above
        for name, parameter in model.named_parameters():
            if ".layers." in name and parameter.dim() == 2:
                parameter.mul_(8.0)
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # qwen2: q/k/v biases, untied head
def test_static_decoder_logits_equal_the_hf_forward(family):
    """Prefill into separate slots, then two decode steps for all slots at once (different lengths,
    so the mask and the per-row positions matter); each against a full HF forward of that row alone."""
    model = family_model(family)
    assert engine_unsupported_reason(model) is None
    prompts = [list(range(40, 52)), list(range(100, 103)), list(range(7, 30))]
    decoder = StaticDecoder(model, slots=3, max_len=40)
    for slot, prompt in enumerate(prompts):
        reference = model(input_ids=torch.tensor([prompt])).logits[0, -1]
        torch.testing.assert_close(decoder.prefill(slot, torch.tensor(prompt)), reference, rtol=1e-6, atol=1e-6)
    rows = [list(p) for p in prompts]
    for step_tokens in ([5, 6, 7], [9, 10, 11]):
        positions = torch.tensor([len(r) for r in rows])
        logits = decoder.decode(torch.tensor(step_tokens), positions, int(positions.max()) + 1)
        for row, token, got in zip(rows, step_tokens, logits):
            row.append(token)
            reference = model(input_ids=torch.tensor([row])).logits[0, -1]
            torch.testing.assert_close(got, reference, rtol=1e-6, atol=1e-6)


def test_static_decoder_moves_a_slot_with_its_cache():
    model = family_model("llama")
    decoder = StaticDecoder(model, slots=2, max_len=20)
    prompt = list(range(20, 31))
    decoder.prefill(1, torch.tensor(prompt))
    decoder.move(1, 0, len(prompt))
    got = decoder.decode(torch.tensor([44]), torch.tensor([len(prompt)]), len(prompt) + 1)[0]
    torch.testing.assert_close(got, model(input_ids=torch.tensor([prompt + [44]])).logits[0, -1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0])  # flat (full sort) to peaked (the first shortlist)
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.999, 1.0])
def test_draw_tokens_equals_the_full_sort(scale, top_p):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 20000, generator=generator, dtype=torch.float64) * scale
    uniforms = torch.rand(16, generator=generator)
    expected = sample_next_tokens(logits, uniforms, temperature=0.7, top_p=top_p)
    assert torch.equal(draw_tokens(logits, uniforms, temperature=0.7, top_p=top_p, shortlists=(8, 256)), expected)


def test_static_engine_greedy_equals_argmax_decoding_with_refills():
    """batch_size 2 over 3 prompts: the third starts in a slot freed by an earlier one."""
    model = context_sensitive_model()
    prompts = [list(range(40, 52)), list(range(100, 103)), list(range(7, 30))]
    steps = 10
    references = [argmax_decode(model, prompt, steps) for prompt in prompts]
    stop = references[1][3]
    finished = []
    generations = generate_continuous(model, prompts, [1, 2, 3], temperature=0.7, top_p=1e-9, max_new_tokens=steps,
                                      stop_ids=[stop], batch_size=2, on_finish=finished.append)
    for reference, generation in zip(references, generations):
        if stop in reference:
            cut = reference.index(stop)
            assert generation == Generation(tuple(reference[:cut]), "eos", cut + 1)
        else:
            assert generation == Generation(tuple(reference), "length", steps)
    assert generations[1].finish_reason == "eos" and sorted(map(id, finished)) == sorted(map(id, generations))


def test_static_engine_samples_equal_the_plain_loop():
    """Same seeds, same draws: the engine and the HF-forward loop give the same replies."""
    model = context_sensitive_model()
    prompts = [tuple(range(10 + i, 14 + 3 * i)) for i in range(5)]
    seeds = [21, 22, 23, 24, 25]
    loop = [hf_generate_batch(model, [p], [s], temperature=0.9, top_p=0.95, max_new_tokens=12, stop_ids=[256],
                              pad_id=257)[0] for p, s in zip(prompts, seeds)]
    static = generate_continuous(model, prompts, seeds, temperature=0.9, top_p=0.95, max_new_tokens=12,
                                 stop_ids=[256], batch_size=3)
    assert static == loop and sum(len(g.token_ids) for g in loop) >= 30


def test_engine_choice_falls_back_or_refuses():
    model = context_sensitive_model()
    assert choose_engine(model, "auto") == ("static", None)
    assert choose_engine(model, "loop")[0] == "loop"
    model.config.model_type = "gemma3_text"
    engine, reason = choose_engine(model, "auto")
    assert engine == "loop" and "gemma3_text" in reason
    with pytest.raises(ConfigError, match="sampler.engine=static cannot run this model"):
        choose_engine(model, "static")


def test_cut_at_stop():
    assert cut_at_stop([5, 6, 9, 7, 9], [9]) == Generation((5, 6), "eos", 3)
    assert cut_at_stop([9, 1], [3, 9]) == Generation((), "eos", 1)
    assert cut_at_stop([5, 6], [9]) == Generation((5, 6), "length", 2)


# ---- seeds, identities, inputs ------------------------------------------------------------------


def test_sample_seed_is_stable_and_separates_every_component():
    base = sample_seed(42, "case-1#guided", 0, 0)
    assert base == sample_seed(42, "case-1#guided", 0, 0)
    variants = [sample_seed(43, "case-1#guided", 0, 0), sample_seed(42, "case-2#guided", 0, 0),
                sample_seed(42, "case-1#guided", 1, 0), sample_seed(42, "case-1#guided", 0, 1)]
    assert len({base, *variants}) == 5
    assert all(0 <= seed < 2**31 for seed in (base, *variants))
    # the value itself is part of the contract: a rerun elsewhere must draw the same seeds
    digest = hashlib.sha256("42\x00case-1#guided\x000\x000".encode()).digest()
    assert base == int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def test_checkpoint_fingerprint_hashes_weight_content_only(checkpoint, tmp_path):
    copy = Path(shutil.copytree(checkpoint, tmp_path / "copy"))
    (copy / "tokenizer_config.json").write_text("{}")
    assert checkpoint_fingerprint(copy) == checkpoint_fingerprint(checkpoint)
    model, tokenizer = tiny_model()
    with torch.no_grad():
        model.model.norm.weight[0] += 1e-3
    changed = save_checkpoint(model, tokenizer, tmp_path / "changed")
    assert checkpoint_fingerprint(changed) != checkpoint_fingerprint(checkpoint)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        checkpoint_fingerprint(tmp_path)


def test_stop_tokens_ignore_a_generation_config_eos_that_is_an_ordinary_token(checkpoint, tmp_path):
    tokenizer = build_byte_tokenizer()
    assert stop_token_ids(tokenizer, checkpoint) == [tokenizer.eos_token_id]
    # a generation_config written from defaults (LlamaConfig's eos_token_id=2) names a byte here
    copy = Path(shutil.copytree(checkpoint, tmp_path / "defaults"))
    config = json.loads((copy / "generation_config.json").read_text())
    (copy / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": [2, tokenizer.eos_token_id]}))
    assert stop_token_ids(tokenizer, copy) == [tokenizer.eos_token_id]


def test_read_prompt_rows_names_the_bad_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt_id": "a", "messages": [{"role": "user", "content": "hi"}], "keep_last": 1}\n'
                    '{"prompt_id": "b", "messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(PromptFileError, match=r"prompts.jsonl:2: missing keep_last"):
        read_prompt_rows(path)
    path.write_text('{"prompt_id": "a", "messages": [{"role": "user", "content": "hi"}], "keep_last": 1}\n' * 2)
    with pytest.raises(PromptFileError, match="prompts.jsonl:2: prompt_id 'a' appears twice"):
        read_prompt_rows(path)


def test_build_requests_renders_truncates_and_rejects_per_sample_index():
    tokenizer = build_byte_tokenizer()
    history = [{"role": "user", "content": "old question " * 10}, {"role": "assistant", "content": "old answer " * 10},
               {"role": "user", "content": "new question"}]
    rows = [{"prompt_id": "fits", "messages": history, "keep_last": 1, "num_samples": 3},
            {"prompt_id": "too-long", "messages": [{"role": "user", "content": "y" * 200}], "keep_last": 1}]
    requests, rejects = build_requests(rows, tokenizer, num_samples=2, max_prompt_length=64, prompt_format="chat_template")
    expected_ids, truncated = render_prompt_ids(history, tokenizer, max_prompt_tokens=64, keep_last=1)
    assert truncated and len(expected_ids) <= 64
    assert [(r.prompt_id, r.sample_index) for r in requests] == [("fits", 0), ("fits", 1), ("fits", 2)]
    assert all(r.prompt_ids == tuple(expected_ids) for r in requests)
    assert requests[0].prompt_hash == fingerprint(np.asarray(expected_ids, dtype=np.int64), length=64)
    assert [(r["prompt_id"], r["sample_index"], r["reason"]) for r in rejects] == [
        ("too-long", 0, "prompt_too_long"), ("too-long", 1, "prompt_too_long")]


def test_sampler_config_errors_are_sentences():
    with pytest.raises(ConfigError, match="sampler has no key 'temprature'"):
        sampler_config_from_dict({"temprature": 0.5})
    with pytest.raises(ConfigError, match=r"sampler.max_retries must be >= 0"):
        sampler_config_from_dict({"max_retries": -1})
    assert sampler_config_from_dict({}) == SamplerConfig()


# ---- retries and quarantine ---------------------------------------------------------------------


def test_empty_replies_are_retried_with_the_next_seed_then_quarantined():
    tokenizer = build_byte_tokenizer()
    requests = [Request(pid, 0, (1, 2, 3), f"hash-{pid}") for pid in ("always-empty", "empty-once", "fine")]
    first_seed = {pid: sample_seed(7, pid, 0, 0) for pid in ("always-empty", "empty-once", "fine")}
    calls = []

    def generate(prompts, seeds):
        calls.append(list(seeds))
        replies = []
        for seed in seeds:
            if seed == first_seed["fine"]:
                replies.append(Generation(tuple(tokenizer.encode("ok")), "eos", 3))
            elif seed in (first_seed["always-empty"], first_seed["empty-once"]):
                replies.append(Generation((), "eos", 1))  # EOS only
            elif seed == sample_seed(7, "empty-once", 0, 1):
                replies.append(Generation(tuple(tokenizer.encode("  better  ")), "length", 8))
            else:
                replies.append(Generation(tuple(tokenizer.encode(" \n ")), "length", 3))  # whitespace only
        return replies

    rows, rejects, tokens = sample_with_retries(generate, requests, tokenizer, seed=7, max_retries=2,
                                                stamp={"backend": "hf", "checkpoint_fingerprint": "f"}, truncated="keep")
    assert [len(seeds) for seeds in calls] == [3, 2, 1]
    assert tokens == (3 + 1 + 1) + (3 + 8) + 3  # every attempt counts, the stop token included
    by_id = {row["prompt_id"]: row for row in rows}
    assert set(by_id) == {"empty-once", "fine"}
    assert by_id["empty-once"] == {
        "prompt_id": "empty-once", "sample_index": 0, "text": "better", "num_tokens": 10, "finish_reason": "length",
        "seed": sample_seed(7, "empty-once", 0, 1), "backend": "hf", "checkpoint_fingerprint": "f",
        "prompt_hash": "hash-empty-once", "attempts": 2}
    assert by_id["fine"]["attempts"] == 1 and by_id["fine"]["seed"] == first_seed["fine"]
    assert len(rejects) == 1 and rejects[0]["prompt_id"] == "always-empty"
    assert rejects[0]["reason"] == "empty_output" and "after 3 attempt(s)" in rejects[0]["detail"]


@pytest.mark.parametrize("policy", ["drop", "resample", "keep"])
def test_cut_replies_are_dropped_resampled_or_kept_as_configured(policy):
    """A reply cut at max_new_tokens: drop quarantines it at once, resample draws it again with the
    next seed (here attempt 2 finishes), keep keeps it with finish_reason length."""
    tokenizer = build_byte_tokenizer()
    requests = [Request(pid, 0, (1, 2), f"hash-{pid}") for pid in ("cut-then-done", "always-cut", "done")]
    attempt_of = {sample_seed(3, pid, 0, a): (pid, a) for pid in ("cut-then-done", "always-cut", "done") for a in range(3)}

    def generate(prompts, seeds):
        replies = []
        for seed in seeds:
            pid, attempt = attempt_of[seed]
            finished = pid == "done" or (pid == "cut-then-done" and attempt == 1)
            replies.append(Generation(tuple(tokenizer.encode(f"{pid} {attempt}")), "eos" if finished else "length", 5))
        return replies

    rows, rejects, _ = sample_with_retries(generate, requests, tokenizer, seed=3, max_retries=2,
                                           stamp={}, truncated=policy)
    kept = {row["prompt_id"]: (row["finish_reason"], row["attempts"]) for row in rows}
    quarantined = {row["prompt_id"]: row["reason"] for row in rejects}
    if policy == "drop":
        assert kept == {"done": ("eos", 1)}
        assert quarantined == {"cut-then-done": "truncated", "always-cut": "truncated"}
        assert "after 1 attempt(s)" in rejects[0]["detail"] and "sampler.max_new_tokens" in rejects[0]["detail"]
    elif policy == "resample":
        assert kept == {"done": ("eos", 1), "cut-then-done": ("eos", 2)}
        assert quarantined == {"always-cut": "truncated"} and "after 3 attempt(s)" in rejects[0]["detail"]
    else:
        assert kept == {"done": ("eos", 1), "cut-then-done": ("length", 1), "always-cut": ("length", 1)}
        assert rejects == []


def test_a_model_that_only_says_eos_is_quarantined(eos_checkpoint, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    report = run_sampler(eos_checkpoint, prompts, tmp_path / "out", SamplerConfig(max_new_tokens=4, max_retries=1),
                         max_prompt_length=256, prompt_format="chat_template", device="cpu", progress_bar=False)
    assert read_jsonl(tmp_path / "out" / SAMPLES_FILE) == []
    rejects = read_jsonl(tmp_path / "out" / REJECTS_FILE)
    assert [(r["prompt_id"], r["reason"]) for r in rejects] == [(f"case-{i}#guided", "empty_output") for i in range(3)]
    assert "after 2 attempt(s)" in rejects[0]["detail"] and "1 token(s) and ended by eos" in rejects[0]["detail"]
    assert report["rejects_by_reason"] == {"empty_output": 3} and report["generated_tokens"] == 3 * 2


# ---- vLLM backend, without vLLM -----------------------------------------------------------------


def test_vllm_requests_one_seeded_request_per_sample():
    cfg = SamplerConfig(backend="vllm", temperature=0.7, top_p=0.9, max_new_tokens=512)
    prompts, params = vllm_requests([(1, 2, 3), (4, 5)], [11, 22], cfg, stop_ids=[7, 9])
    assert prompts == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4, 5]}]
    assert params == [
        {"n": 1, "seed": seed, "temperature": 0.7, "top_p": 0.9, "max_tokens": 512, "stop_token_ids": [7, 9],
         "skip_special_tokens": True}
        for seed in (11, 22)
    ]


def test_vllm_outputs_read_as_generations():
    assert generation_from_vllm([5, 6, 9], "stop", [9]) == Generation((5, 6), "eos", 3)
    assert generation_from_vllm([5, 6], "stop", [9]) == Generation((5, 6), "eos", 3)  # stop token not returned
    assert generation_from_vllm([5, 6, 7], "length", [9]) == Generation((5, 6, 7), "length", 3)
    with pytest.raises(RuntimeError, match="'abort'"):
        generation_from_vllm([5], "abort", [9])


def test_vllm_layout_tensor_parallel_groups_data_parallel_across_them():
    assert data_parallel_groups([str(i) for i in range(8)], 2) == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    assert data_parallel_groups(["3", "5", "6"], 2) == [["3", "5"]]
    assert data_parallel_groups(["0"], 1) == [["0"]]
    with pytest.raises(RuntimeError, match="tensor_parallel_size=4 but 2 GPU"):
        data_parallel_groups(["0", "1"], 4)
    kwargs = vllm_engine_kwargs("/ckpt", SamplerConfig(backend="vllm", tensor_parallel_size=2, gpu_memory_utilization=0.5),
                                max_model_len=1536, trust_remote_code=False)
    assert kwargs["model"] == "/ckpt" and kwargs["tensor_parallel_size"] == 2
    assert kwargs["gpu_memory_utilization"] == 0.5 and kwargs["max_model_len"] == 1536


def test_vllm_missing_names_the_gpu_extra(monkeypatch, checkpoint, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if vLLM were not installed
    with pytest.raises(ImportError, match=r"the gpu extra\): bash launch/setup_env.sh --gpu"):
        import_vllm()
    prompts = write_prompts(tmp_path / "prompts.jsonl", 1)
    with pytest.raises(ImportError) as error:
        run_sampler(checkpoint, prompts, tmp_path / "out", SamplerConfig(backend="vllm"), max_prompt_length=128,
                    prompt_format="chat_template", progress_bar=False)
    assert str(error.value) == VLLM_MISSING


def test_vllm_backend_glue_with_a_stand_in_engine(monkeypatch, checkpoint, tmp_path):
    """The vLLM path of run_sampler against a stand-in module with vLLM's offline API (LLM(**engine
    args), LLM.generate(prompts, [SamplingParams]) -> outputs[0].token_ids / finish_reason): what
    reaches the engine, and how its outputs become rows and rejects. vLLM itself is not run here."""
    import importlib.machinery
    import types

    tokenizer = build_byte_tokenizer()
    eos, letters = tokenizer.eos_token_id, "abcdefghijklmnopqrstuvwxyz"
    letter_ids = tokenizer.convert_tokens_to_ids(list(letters))
    engines = []

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            self.kwargs, self.calls = kwargs, []
            engines.append(self)

        def generate(self, prompts, params, use_tqdm=True):
            self.calls.append((prompts, [p.kwargs for p in params]))
            outputs = []
            for p in (p.kwargs for p in params):
                if p["seed"] % 2 == 0:  # an even seed: EOS at once, the stop token returned as vLLM does
                    token_ids, reason = [eos], "stop"
                else:
                    token_ids, reason = [letter_ids[p["seed"] % 26]] * p["max_tokens"], "length"
                outputs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=token_ids, finish_reason=reason)]))
            return outputs

    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    fake.LLM, fake.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (80 << 30, 80 << 30))  # a free 80 GiB GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # setdefault must leave a user's choice alone

    prompts = write_prompts(tmp_path / "prompts.jsonl", 6)
    cfg = SamplerConfig(backend="vllm", max_new_tokens=5, max_retries=1, seed=9, truncated="keep")
    report = run_sampler(checkpoint, prompts, tmp_path / "out", cfg, max_prompt_length=128,
                         prompt_format="chat_template", progress_bar=False)

    (engine,) = engines
    assert engine.kwargs["model"] == str(checkpoint) and engine.kwargs["max_model_len"] == 128 + 5
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    first_prompts, first_params = engine.calls[0]
    expected_seeds = [sample_seed(9, f"case-{i}#guided", 0, 0) for i in range(6)]
    assert [p["seed"] for p in first_params] == expected_seeds
    assert all(p["stop_token_ids"] == [eos] and p["n"] == 1 for p in first_params)
    messages = json.loads(prompts.read_text().splitlines()[0])["messages"]
    assert first_prompts[0] == {"prompt_token_ids": render_prompt_ids(messages, tokenizer, max_prompt_tokens=128,
                                                                      keep_last=1)[0]}
    # only the empty replies go round again, with their next seeds
    # with seed 9 the first seeds of cases 0, 3 and 4 are even; of their second seeds, only case 4's is odd
    retried = [f"case-{i}#guided" for i, seed in enumerate(expected_seeds) if seed % 2 == 0]
    assert retried == ["case-0#guided", "case-3#guided", "case-4#guided"] and len(engine.calls) == 2
    assert [p["seed"] for p in engine.calls[1][1]] == [sample_seed(9, pid, 0, 1) for pid in retried]

    samples = read_jsonl(tmp_path / "out" / SAMPLES_FILE)
    rejects = read_jsonl(tmp_path / "out" / REJECTS_FILE)
    assert [(r["prompt_id"], r["attempts"]) for r in samples] == [
        ("case-1#guided", 1), ("case-2#guided", 1), ("case-4#guided", 2), ("case-5#guided", 1)]
    assert [(r["prompt_id"], r["reason"]) for r in rejects] == [("case-0#guided", "empty_output"),
                                                                ("case-3#guided", "empty_output")]
    for row in samples:
        assert row["backend"] == "vllm" and row["checkpoint_fingerprint"] == checkpoint_fingerprint(checkpoint)
        assert row["seed"] % 2 == 1 and row["text"] == letters[row["seed"] % 26] * 5
        assert row["finish_reason"] == "length" and row["num_tokens"] == 5
    assert report["data_parallel_size"] == 1 and report["tensor_parallel_size"] == 1


def test_vllm_per_batch_seed_mode_sends_no_request_seed():
    cfg = SamplerConfig(backend="vllm", vllm_seed_mode="per_batch")
    _, params = vllm_requests([(1, 2)], [7], cfg, [0])
    assert "seed" not in params[0]
    _, params = vllm_requests([(1, 2)], [7], SamplerConfig(backend="vllm"), [0])
    assert params[0]["seed"] == 7


def test_vllm_memory_is_checked_before_the_engine_starts():
    cfg = SamplerConfig(backend="vllm", gpu_memory_utilization=0.85)
    check_gpu_memory(cfg, lambda: (70 << 30, 80 << 30))  # 70 GiB free >= 68 asked
    with pytest.raises(RuntimeError, match=r"asks vLLM for 68.0 GiB but only 40.0 of 80.0 GiB are free.*below 0.50"):
        check_gpu_memory(cfg, lambda: (40 << 30, 80 << 30))
