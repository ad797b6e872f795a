"""What every config's ``validate()`` is made of: ConfigError, the named choices and two checks.

A choice is a ``Literal`` defined once here and read wherever its values are needed. The config
fields themselves are typed ``str``: OmegaConf 2.3 cannot type a field as a Literal, so it checks
that the value is a string and ``validate()`` checks that it is one of the choices.
"""

from __future__ import annotations

from typing import Literal, get_args


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which key and how to fix it."""


Device = Literal["auto", "cpu", "cuda"]
PromptFormat = Literal["chat_template", "raw_text"]
MethodName = Literal["warmstart", "drift", "drift_unguided", "spin", "iterdpo"]
Reference = Literal["iteration_start", "initial"]
GuidanceCheck = Literal["auto", "gold", "reward", "off"]
# which DRIFT pairs a scorer keeps (drift.methods): none (the paper's: every guided sample), drop
# (only where the guided sample beats the policy's own), own_fallback (else the own sample, if it beats DSAT)
ChosenFilter = Literal["none", "drop", "own_fallback"]
Optimizer = Literal["rmsprop", "adamw", "sgd"]
LrSchedule = Literal["linear", "constant", "cosine"]
Precision = Literal["auto", "fp32", "bf16"]
LogprobImpl = Literal["auto", "chunked", "triton", "flash_attn"]
# auto: vLLM on CUDA when it is installed, else hf (drift.backends.resolve_sampler)
SamplerBackend = Literal["auto", "hf", "vllm"]
SamplerDtype = Literal["auto", "float32", "bfloat16"]
SamplerEngine = Literal["auto", "static", "loop"]
VllmSeedMode = Literal["per_request", "per_batch"]
TruncatedPolicy = Literal["drop", "resample", "keep"]
WandbMode = Literal["offline", "online", "disabled"]
# true: reuse the stages whose settings match, refuse otherwise; false: refuse a folder that holds a
# checkpoint; retrain: train again from the first stage whose settings or inputs differ
Resume = Literal["true", "false", "retrain"]
# which checkpoints are evaluated: the trainer's eval.stages, the testbed report's eval
EvalStages = Literal["last", "all", "none"]


def choices(literal) -> tuple[str, ...]:
    return get_args(literal)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_choice(key: str, value, literal) -> None:
    allowed = choices(literal)
    check(value in allowed, f"{key} must be one of {', '.join(allowed)}, got {value!r}")


def either_or(literal) -> str:
    """'a', 'b' or 'c': the allowed values of a short choice, as a sentence names them."""
    quoted = [repr(value) for value in choices(literal)]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def string_list(key: str, value) -> list[str]:
    """One value or a list of them (key=a or key=[a,b]) as a list; None or '' as an empty one.
    OmegaConf 2.3 has no Union, so such a field is typed Any and read through this."""
    if value is None or value == "":
        return []
    values = [value] if isinstance(value, str) else value
    check(isinstance(values, (list, tuple)) and all(isinstance(v, str) and v for v in values),
          f"{key} must be a folder or a list of folders ({key}=A or {key}=[A,B]), got {value!r}; quote a name "
          f"that reads as a number: {key}='2'")
    return list(values)
