"""Bad config values fail with a sentence naming the key, before any model or data is loaded."""

import dataclasses
from pathlib import Path

import pytest

from drift.compose import CONF_DIR, compose, structured
from drift.config import Config, ConfigError

CONF = str(CONF_DIR)


def _compose(*overrides: str) -> Config:
    """launch/train.py's config for these overrides, composed and validated."""
    return compose("config", overrides, Config)


def test_defaults_follow_the_paper():
    config = _compose("data=fixture")
    assert config.model.name_or_path == "embedded:smollm2" and config.data.name == "fixture"
    assert config.method.name == "drift" and config.method.iterations == 2
    assert (config.method.beta, config.method.rpo_alpha, config.method.warmstart_epochs) == (0.1, 0.001, 3)
    t = config.trainer
    assert (t.lr, t.optimizer, t.lr_schedule, t.warmup_ratio) == (5e-7, "rmsprop", "linear", 0.1)
    assert (t.per_device_batch_size, t.max_length, t.max_prompt_length, t.seed) == (4, 2048, 1024, 42)
    assert config.logging.wandb_mode == "offline" and config.model.trust_remote_code is False


def test_the_main_job_is_the_compact_testbed_with_the_presets_recipe():
    """python launch/train.py: the compact testbed carries its recipe (conf/data/testbed_compact.yaml),
    the full preset's where it does not shrink the run, and evaluates on the compact held-out split;
    any other data source keeps the paper's defaults (above)."""
    config, preset = _compose(), _compose("experiment=testbed")
    assert config.data.name == "testbed_compact" and config.eval.heldout == "testbed_compact"
    assert (config.method.name, config.method.iterations, config.method.warmstart_epochs) == ("drift", 1, 2)
    for key in ("lr", "per_device_batch_size", "grad_accum_steps", "max_length", "max_prompt_length"):
        assert getattr(config.trainer, key) == getattr(preset.trainer, key), key
    assert config.method.beta == preset.method.beta and config.sampler.max_new_tokens == preset.sampler.max_new_tokens
    assert _compose("method.iterations=2").method.iterations == 2  # the command line still wins
    assert _compose("data=wildfeedback", "data.hub_config=wildfeedback", "data.hub_name=x").trainer.lr == 5e-7


@pytest.mark.parametrize("model", ["qwen7b", "qwen14b", "gemma12b", "tiny", "smollm2"])
def test_every_model_config_composes(model):
    config = _compose(f"model={model}")
    assert config.model.name == model
    if model in ("qwen7b", "qwen14b", "gemma12b"):
        assert config.model.gradient_checkpointing and config.model.local_files_only


@pytest.mark.parametrize("method", ["warmstart", "drift", "drift_unguided", "spin", "iterdpo"])
def test_every_method_config_composes(method):
    assert _compose(f"method={method}").method.name == method


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.beta=0", "method.beta must be > 0, got 0"),
        ("trainer.lr=-1", "trainer.lr must be > 0, got -1"),
        ("trainer.max_length=512", "trainer.max_length (512) must be greater than trainer.max_prompt_length (512)"),
        ("trainer.optimizer=adam8bit", "trainer.optimizer must be 'rmsprop', 'adamw' or 'sgd', got 'adam8bit'"),
        ("trainer.logprob_impl=cuda", "trainer.logprob_impl must be one of auto, chunked, triton, flash_attn, got 'cuda'"),
        ("method.reference=best", "method.reference must be 'iteration_start' or 'initial', got 'best'"),
        ("sampler.top_p=1.5", "sampler.top_p must be in (0, 1], got 1.5"),
        ("data.name=imdb", "data.name must be one of"),
        ("trainer.lr=abc", "trainer.lr must be a number, got 'abc'"),
        ("trainer.packing=maybe", "trainer.packing must be true or false, got 'maybe'"),
        ("trainer.learning_rate=1", "unknown key 'trainer.learning_rate': trainer has no key 'learning_rate'"),
        ("+trainer.learning_rate=1", "unknown key 'trainer.learning_rate': trainer has no key 'learning_rate'"),
        ("method=dpo", "method=dpo is not an option of method; options: drift, drift_unguided, iterdpo, spin, warmstart"),
    ],
)
def test_bad_values_fail_with_a_clear_sentence(override, message):
    with pytest.raises(ConfigError) as error:
        _compose(override)
    assert message in str(error.value)


def test_unknown_key_is_named():
    raw = dataclasses.asdict(_compose())
    raw["trainer"]["learning_rate"] = 1e-6
    with pytest.raises(ConfigError, match="trainer has no key 'learning_rate'"):
        structured(raw, Config)


def test_group_files_hold_only_what_differs_from_the_dataclasses():
    from omegaconf import OmegaConf

    from drift.config import (
        DataConfig,
        EvalConfig,
        LoggingConfig,
        MethodConfig,
        ModelConfig,
        SamplerConfig,
        TrainerConfig,
    )

    # name (and a model's name_or_path) say which option a file is, so they stay even when equal
    identity = {"name", "name_or_path"}
    for group, schema in [("model", ModelConfig), ("data", DataConfig), ("method", MethodConfig),
                          ("trainer", TrainerConfig), ("sampler", SamplerConfig), ("logging", LoggingConfig),
                          ("eval", EvalConfig)]:
        defaults = dataclasses.asdict(schema())
        for path in (Path(CONF) / group).glob("*.yaml"):
            values = OmegaConf.to_container(OmegaConf.load(path)) or {}
            repeated = {key for key, value in values.items() if key not in identity and defaults.get(key) == value}
            assert not repeated, f"{path} repeats the defaults of {schema.__name__}: {sorted(repeated)}"


def test_analyze_command_files_set_no_value_of_their_dataclass():
    """conf/analyze/<command>.yaml only composes: every key and default is the command's CONFIG's."""
    from omegaconf import OmegaConf

    from drift.commands import commands

    for command in commands():
        values = OmegaConf.to_container(OmegaConf.load(Path(CONF) / "analyze" / f"{command}.yaml"))
        assert set(values) == {"defaults"}, f"conf/analyze/{command}.yaml sets {sorted(set(values) - {'defaults'})}"
        assert values["defaults"] == [f"{command}_schema", "common", "_self_"]
    shared = OmegaConf.to_container(OmegaConf.load(Path(CONF) / "analyze" / "common.yaml"))
    assert set(shared) == {"defaults", "hydra"}  # Hydra's own settings, none of a command's keys
