"""drift.lora against PEFT and plain references: the merge against PEFT's own merge_and_unload, the
reference log-probs of an adapted policy against its merged weights run as plain weights (the
full-weight path) and in fp64, the initial reference against the base, gradient checkpointing,
and the settings' one-sentence errors."""

from __future__ import annotations

import pytest
import torch

from drift import lora
from drift.checks import ConfigError
from drift.config import LoraConfig, ModelConfig, TrainerConfig
from drift.model import build_byte_tokenizer, load_model, save_hf_checkpoint
from drift.parallel import SequenceLogprobModel, init_runtime
from drift.reference import compute_sequence_logps, weights_fingerprint
from tests.tiny import plain_fp64_logps, synthetic_pairs

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _model_cfg(family: str = "llama", **lora_settings) -> ModelConfig:
    return ModelConfig(name="tiny", name_or_path=f"tiny:{family}", lora=LoraConfig(**{"rank": 4, "alpha": 8.0, **lora_settings}))


def _tiny(cfg: ModelConfig, dtype=torch.float32):
    return load_model(cfg, dtype=dtype, seed=3, vocab_size=len(build_byte_tokenizer()))


def _randomize_adapter(model, seed: int = 0) -> None:
    """A and B away from their fresh values (B not zero), as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if lora.is_adapter_key(name):
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))


def _sequences(count: int = 6):
    return [sequence for pair in synthetic_pairs(count, seed=11) for sequence in (pair.chosen, pair.rejected)]


def _logps(causal_lm, sequences) -> torch.Tensor:
    """Summed response log-probs through the trainer's own path (packed rows, shared prompts, fused head)."""
    model = SequenceLogprobModel(causal_lm, "chunked", packed=True, share_prompts=True)
    values = compute_sequence_logps(model, sequences, init_runtime("cpu", "fp32"), batch_size=4,
                                    pad_id=build_byte_tokenizer().pad_token_id)
    return torch.tensor([values[sequence.key] for sequence in sequences], dtype=torch.float64)


# ---- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("settings,key", [
    (dict(rank=-1), "model.lora.rank"),
    (dict(rank=8, alpha=0.0), "model.lora.alpha"),
    (dict(rank=8, dropout=1.0), "model.lora.dropout"),
    (dict(rank=8, target_modules=[]), "model.lora.target_modules"),
    (dict(rank=8, target_modules=["all-linear", "q_proj"]), "model.lora.target_modules"),
])
def test_bad_settings_name_their_key(settings, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ModelConfig(lora=LoraConfig(**settings)).validate()


def test_off_by_default():
    assert not lora.enabled(ModelConfig()) and ModelConfig().lora.rank == 0


def test_a_target_module_the_model_lacks_is_one_sentence_naming_the_key_and_the_fix():
    cfg = _model_cfg(target_modules=["q_proj", "qkv_proj"])
    with pytest.raises(ConfigError) as error:
        lora.attach(_tiny(cfg), cfg.lora, base="tiny:llama", seed=0, model_name=cfg.name_or_path)
    message = str(error.value)
    assert "model.lora.target_modules names qkv_proj" in message and "tiny:llama" in message
    assert all(name in message for name in TARGETS) and "all-linear" in message and "\n" not in message


# ---- the adapter in the model -------------------------------------------------------------------


def test_attach_freezes_the_base_in_its_dtype_and_keeps_an_fp32_adapter():
    cfg = _model_cfg()
    model = lora.attach(_tiny(cfg, torch.bfloat16), cfg.lora, base="tiny:llama", seed=0, model_name=cfg.name_or_path)
    parameters = dict(model.named_parameters())
    adapter = {name for name in parameters if lora.is_adapter_key(name)}
    # all-linear: every projection of both layers, never the lm_head (tied to the embedding here)
    assert len(adapter) == 2 * len(TARGETS) * 2
    assert sorted(model.peft_config[lora.ADAPTER_NAME].target_modules) == sorted(TARGETS)
    assert all(parameters[name].requires_grad and parameters[name].dtype == torch.float32 for name in adapter)
    assert all(not p.requires_grad and p.dtype == torch.bfloat16 for name, p in parameters.items() if name not in adapter)


def test_a_fresh_adapter_is_the_base_exactly_and_a_function_of_the_seed():
    cfg = _model_cfg()
    sequences = _sequences()
    base_logps = _logps(_tiny(cfg), sequences)
    first = lora.attach(_tiny(cfg), cfg.lora, base="tiny:llama", seed=5, model_name=cfg.name_or_path)
    second = lora.attach(_tiny(cfg), cfg.lora, base="tiny:llama", seed=5, model_name=cfg.name_or_path)
    other = lora.attach(_tiny(cfg), cfg.lora, base="tiny:llama", seed=6, model_name=cfg.name_or_path)
    runtime = init_runtime("cpu", "fp32")
    assert weights_fingerprint(first, runtime) == weights_fingerprint(second, runtime) != weights_fingerprint(other, runtime)
    # B is zero: the adapter adds exactly nothing
    assert torch.equal(_logps(first, sequences), base_logps)


def test_merged_state_is_peft_merge_and_unload():
    import peft

    cfg = _model_cfg("qwen2")  # untied head, q/k/v biases
    ours = lora.attach(_tiny(cfg), cfg.lora, base="tiny:qwen2", seed=0, model_name=cfg.name_or_path)
    _randomize_adapter(ours)
    merged = lora.merged_state(ours.state_dict(), lora.scaling(ours), torch.float32)

    theirs = peft.get_peft_model(_tiny(cfg), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    theirs.load_state_dict({f"{lora.PEFT_PREFIX}{key}": value for key, value in ours.state_dict().items()})
    expected = theirs.merge_and_unload().state_dict()
    assert sorted(merged) == sorted(expected)
    for name, value in expected.items():
        torch.testing.assert_close(merged[name], value, atol=1e-7, rtol=0), name
    assert lora.merged_state(ours.state_dict(), 2.0, torch.bfloat16)["model.norm.weight"].dtype == torch.bfloat16


def test_adapter_folder_loads_with_peft_and_continues_in_the_next_stage(tmp_path):
    import peft
    from transformers import AutoModelForCausalLM

    cfg = _model_cfg()
    tokenizer = build_byte_tokenizer()
    base = _tiny(cfg)
    save_hf_checkpoint(base, tokenizer, base.state_dict(), tmp_path / "base")
    ours = lora.attach(_tiny(cfg), cfg.lora, base=str(tmp_path / "base"), seed=0, model_name=cfg.name_or_path)
    _randomize_adapter(ours)
    state = ours.state_dict()
    lora.save_adapter(ours, state, tmp_path / "stage" / lora.ADAPTER)
    save_hf_checkpoint(ours, tokenizer, lora.merged_state(state, lora.scaling(ours), torch.float32), tmp_path / "stage" / "model")

    ids = torch.randint(3, 250, (2, 30), generator=torch.Generator().manual_seed(1))
    loaded = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "stage" / lora.ADAPTER)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "stage" / "model")
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, plain(ids).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded(ids).logits, ours(ids).logits, atol=1e-5, rtol=1e-5)

    # the next stage reads model/ as the base named in the adapter plus that adapter, bit for bit
    assert lora.start_of(str(tmp_path / "stage" / "model"), cfg) == (str(tmp_path / "base"), tmp_path / "stage" / lora.ADAPTER)
    assert lora.start_of(str(tmp_path / "base"), cfg) == (str(tmp_path / "base"), None)
    continued = lora.adapted_model(load_model, cfg, source=str(tmp_path / "stage" / "model"), dtype=torch.float32, seed=9,
                                   vocab_size=len(tokenizer))
    assert all(torch.equal(value, state[name]) for name, value in continued.state_dict().items())
    # another rank's adapter does not fit: one sentence
    other = _model_cfg(rank=8)
    with pytest.raises(ConfigError, match="does not fit model.lora"):
        lora.adapted_model(load_model, other, source=str(tmp_path / "stage" / "model"), dtype=torch.float32, seed=9,
                           vocab_size=len(tokenizer))


# ---- references ---------------------------------------------------------------------------------


def test_iteration_start_reference_equals_the_merged_weights_run_as_plain_weights():
    """method.reference=iteration_start: the policy at the start (base + adapter) as the reference gives
    the log-probs of the same weights merged, through the full-weight path and in plain fp64."""
    import peft

    cfg = _model_cfg("qwen2")
    adapted = lora.attach(_tiny(cfg), cfg.lora, base="tiny:qwen2", seed=0, model_name=cfg.name_or_path)
    _randomize_adapter(adapted)
    sequences = _sequences()
    theirs = peft.get_peft_model(_tiny(cfg), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    theirs.load_state_dict({f"{lora.PEFT_PREFIX}{key}": value for key, value in adapted.state_dict().items()})
    merged = theirs.merge_and_unload()

    ours = _logps(adapted, sequences)
    full_weight = _logps(merged, sequences)
    exact = plain_fp64_logps(merged, sequences)
    assert (ours - _logps(_tiny(cfg), sequences)).abs().max() > 0.1  # the adapter matters
    torch.testing.assert_close(ours, full_weight, atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(ours, exact.double(), atol=2e-4, rtol=1e-5)


def test_initial_reference_is_the_base_with_the_adapter_disabled(tmp_path):
    """method.reference=initial under LoRA: the reference the trainer builds from the initial model
    gives the base's log-probs (PEFT's disable_adapter on a trained adapter, the full-weight path on
    the base, fp64), under the same fingerprint as a fresh policy's (what the warm start records)."""
    import peft

    from drift.train import _build_policy

    cfg = _model_cfg()
    tokenizer = build_byte_tokenizer()
    base = _tiny(cfg)
    save_hf_checkpoint(base, tokenizer, base.state_dict(), tmp_path / "initial_model")
    runtime = init_runtime("cpu", "fp32")
    trainer_cfg = TrainerConfig(seed=3, logprob_impl="chunked")
    reference = _build_policy(cfg, trainer_cfg, runtime, str(tmp_path / "initial_model"), len(tokenizer), trainable=False)
    policy = _build_policy(cfg, trainer_cfg, runtime, str(tmp_path / "initial_model"), len(tokenizer))
    assert weights_fingerprint(reference.causal_lm, runtime) == weights_fingerprint(policy.causal_lm, runtime)
    assert not any(p.requires_grad for p in reference.parameters())

    sequences = _sequences()
    values = compute_sequence_logps(reference, sequences, runtime, batch_size=4, pad_id=tokenizer.pad_token_id)
    ours = torch.tensor([values[s.key] for s in sequences], dtype=torch.float64)
    torch.testing.assert_close(ours, _logps(base, sequences), atol=0, rtol=0)
    torch.testing.assert_close(ours, plain_fp64_logps(base, sequences).double(), atol=2e-4, rtol=1e-5)

    trained = peft.get_peft_model(_tiny(cfg), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    _randomize_adapter(trained)
    with trained.disable_adapter():
        disabled = _logps(trained.get_base_model(), sequences)
    torch.testing.assert_close(ours, disabled, atol=1e-6, rtol=1e-6)


# ---- gradient checkpointing ---------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_adapter_gradients():
    from drift.parallel import sequence_logps
    from drift.tokenize import collate_sequences

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        cfg = _model_cfg("qwen2")
        cfg.gradient_checkpointing = checkpointing
        model = lora.attach(_tiny(cfg), cfg.lora, base="tiny:qwen2", seed=0, model_name=cfg.name_or_path)
        _randomize_adapter(model)
        wrapper = SequenceLogprobModel(model, "chunked").train()
        batch = collate_sequences(_sequences(3), build_byte_tokenizer().pad_token_id, packed=True, share_prompts=True)
        totals, _ = sequence_logps(wrapper, batch)
        totals.sum().backward()
        assert all(p.grad is None for name, p in model.named_parameters() if not lora.is_adapter_key(name))
        return {name: p.grad for name, p in model.named_parameters() if lora.is_adapter_key(name)}

    plain, checkpointed = gradients(False), gradients(True)
    assert sorted(plain) == sorted(checkpointed) and all(g.abs().max() > 0 for g in plain.values())
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5), name


def test_one_process_under_autocast_keeps_one_copy_of_each_adapted_input():
    """A bf16 base with an fp32 adapter under autocast (one process computing in bf16) saves what the
    same model with a bf16 adapter saves (FSDP's case, where no cast happens): no per-projection copy
    of an input cast up to fp32 and back."""
    from drift.parallel import sequence_logps
    from drift.tokenize import collate_sequences

    def saved_bytes(adapter_dtype: torch.dtype, peft_cast: bool = False) -> int:
        cfg = _model_cfg("qwen2")
        model = lora.attach(_tiny(cfg, torch.bfloat16), cfg.lora, base="tiny:qwen2", seed=0, model_name=cfg.name_or_path)
        _randomize_adapter(model)
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = peft_cast
        for name, parameter in model.named_parameters():
            if lora.is_adapter_key(name):
                parameter.data = parameter.data.to(adapter_dtype)
        wrapper = SequenceLogprobModel(model, "chunked").train()
        wrapper.autocast_dtype = torch.bfloat16
        parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        storages: dict[int, int] = {}

        def pack(tensor):
            pointer = tensor.untyped_storage().data_ptr()
            if pointer not in parameters:
                storages[pointer] = tensor.untyped_storage().nbytes()
            return tensor

        batch = collate_sequences(_sequences(3), build_byte_tokenizer().pad_token_id, packed=True, share_prompts=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            sequence_logps(wrapper, batch)
        return sum(storages.values())

    fp32_adapter, bf16_adapter = saved_bytes(torch.float32), saved_bytes(torch.bfloat16)
    # autocast's bf16 copies of the adapter's weights are the only difference: rank 4 x 2 layers x 2 bytes
    # x (in + out) of the 7 projections of tiny:qwen2 (hidden 64, 2 KV heads of 16, MLP 128)
    projections = ((64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64))
    adapter_bytes = 4 * 2 * 2 * sum(fan_in + fan_out for fan_in, fan_out in projections)
    assert 0 <= fp32_adapter - bf16_adapter <= adapter_bytes
    # PEFT's default (the input cast up to fp32) would keep more than that: a copy per adapted projection
    assert saved_bytes(torch.float32, peft_cast=True) - bf16_adapter > 2 * adapter_bytes


def test_adapter_settings_are_in_the_training_stages_keys_only_when_an_adapter_trains():
    from drift.config import Config
    from drift.plan import initial_settings, train_settings

    full, adapted = Config(), Config()
    full.model = ModelConfig(name="tiny", name_or_path="tiny:llama")
    adapted.model = _model_cfg()
    assert not any(key.startswith("model.lora.") for key in train_settings(full, "method.warmstart_epochs"))
    assert train_settings(adapted, "method.warmstart_epochs")["model.lora.rank"] == 4
    # the initial random model does not depend on the adapter
    assert initial_settings(full) == initial_settings(adapted)


def test_a_base_frozen_in_bf16_is_what_the_adapter_applies_to(tmp_path):
    """Trained in bf16, the frozen base is the bf16 rounding of the weights it was loaded from: the merged
    model/ equals the adapter on the base loaded in bf16, not on an fp32 copy of it (docs/lora.md)."""
    import peft
    from transformers import AutoModelForCausalLM

    cfg = _model_cfg()
    tokenizer = build_byte_tokenizer()
    base = _tiny(cfg)  # fp32 weights on disk, as the embedded SmolLM2's cache holds them
    save_hf_checkpoint(base, tokenizer, base.state_dict(), tmp_path / "base")
    ours = lora.attach(_tiny(cfg, torch.bfloat16), cfg.lora, base=str(tmp_path / "base"), seed=0, model_name=cfg.name_or_path)
    _randomize_adapter(ours)
    state = ours.state_dict()
    lora.save_adapter(ours, state, tmp_path / "stage" / lora.ADAPTER)
    save_hf_checkpoint(ours, tokenizer, lora.merged_state(state, lora.scaling(ours), torch.float32), tmp_path / "stage" / "model",
                       dtype=torch.float32)

    ids = torch.randint(3, 250, (2, 30), generator=torch.Generator().manual_seed(1))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "stage" / "model", dtype=torch.float32)

    def adapted(dtype):
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=dtype).float()
        return peft.PeftModel.from_pretrained(loaded, tmp_path / "stage" / lora.ADAPTER)

    with torch.no_grad():
        expected = plain(ids).logits
        torch.testing.assert_close(adapted(torch.bfloat16)(ids).logits, expected, atol=1e-5, rtol=1e-5)
        assert (adapted(torch.float32)(ids).logits - expected).abs().max() > 1e-4
