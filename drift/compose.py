"""From Hydra overrides and conf/ YAML to a validated config dataclass, and every failure on the way
as one sentence.

Every launcher (launch/train.py, sample.py, prepare_data.py, analyze.py) is a Hydra app whose
primary config extends a dataclass registered here as a structured config, so OmegaConf checks
each value's type while composing and ``validate()`` checks the rest once the config is composed,
before anything is loaded. ``compose`` does the same without a command line (tests, notebooks).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from drift.checks import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# what a failed composition raises, besides our own ConfigError from validate()
COMPOSE_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException, OmegaConfBaseException)

Schema = TypeVar("Schema")


def register(config_name: str, schema: type) -> None:
    """Store ``schema`` as ``<config_name>_schema``, the first entry of that YAML's defaults list."""
    ConfigStore.instance().store(name=f"{config_name}_schema", node=schema)


def structured(source: DictConfig | dict, schema: type[Schema], *, key_prefix: str = "") -> Schema:
    """A composed config (or a plain dict, e.g. a run's saved .hydra/config.yaml) -> a validated
    ``schema`` instance. ``key_prefix`` names where ``source`` sits in a larger config ("sampler")."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), source)
        _reject_added_keys(cfg, schema, key_prefix)
        config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(sentence(error, key_prefix)) from None
    config.validate()
    return config


def _reject_added_keys(cfg: DictConfig, schema: type, prefix: str) -> None:
    """A key added with +key=value gets past Hydra's struct mode and would be dropped without a word."""
    hints = typing.get_type_hints(schema)
    for key in cfg:
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in hints:
            raise ConfigError(unknown_key(where, hints))
        if dataclasses.is_dataclass(hints[key]) and isinstance(cfg[key], DictConfig):
            _reject_added_keys(cfg[key], hints[key], where)


def validated(cfg: DictConfig, schema: type[Schema], *, error_prefix: str) -> Schema:
    """structured() inside a Hydra task function: a config error prints one sentence and exits 2
    right here, inside the job, so that Hydra does not add its "Error executing job" line."""
    try:
        return structured(cfg, schema)
    except ConfigError as error:
        exit_with_sentence(error_prefix, str(error))


def exit_with_sentence(error_prefix: str, message: str) -> typing.NoReturn:
    print(f"{error_prefix}: {message}", file=sys.stderr)
    sys.exit(2)


def compose(config_name: str, overrides: Iterable[str], schema: type[Schema], config_dir: Path = CONF_DIR) -> Schema:
    """What the Hydra app of <config_dir>/<config_name>.yaml would run with, without a command line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register(config_name, schema)
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        try:
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
        except COMPOSE_ERRORS as error:
            raise ConfigError(sentence(error)) from None
    return structured(cfg, schema)


def run_app(app: Callable[[], Any], config_name: str, schema: type, *, error_prefix: str,
            preflight: Callable[[Any, str], Any] | None = None) -> None:
    """Register ``schema`` and run the Hydra app; a value that does not compose prints one sentence
    and exits 2 (the task function checks the composed config with ``validated``, and so does
    ``ValidateBeforeRunDir`` before Hydra makes the run folder, when the app's YAML lists it).
    ``preflight(config, run_dir)``: the app's other checks (data, backends, the run folder), run by
    ``ValidateBeforeRunDir`` too; a ConfigError it raises is the app's one sentence."""
    register(config_name, schema)
    _APPS[config_name] = (schema, error_prefix, preflight)
    # Hydra reports a failed composition in several lines and lets the exception reach us only when
    # HYDRA_FULL_ERROR is set; a user who set it wants the traceback, so it is not ours to catch then
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except COMPOSE_ERRORS as error:
        if wants_traceback:
            raise
        exit_with_sentence(error_prefix, sentence(error))


# config name -> (schema, error prefix, preflight) of the app run_app is running, for ValidateBeforeRunDir
_APPS: dict[str, tuple[type, str, Callable[[Any, str], Any] | None]] = {}


class ValidateBeforeRunDir(Callback):
    """A Hydra callback that validates a single run's config before Hydra creates its run folder.

    Hydra writes <run dir>/.hydra/ and the job's log file before it calls the task function, so a
    config that only the task function rejected left an empty run folder behind, and an existing run
    folder with a config that does not describe its contents. ``on_run_start`` comes before both; a
    rejected config (or a failed preflight: the data, the backends, the stages already in the run
    folder) prints its sentence and exits 2 here, leaving any existing folder as it was. A multirun's jobs
    are composed one at a time inside the sweep, so they are still checked by the task function.
    """

    def on_run_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        if config_name not in _APPS:  # not started through run_app: the task function validates
            return
        schema, error_prefix, preflight = _APPS[config_name]
        task_config = copy.deepcopy(config)
        with read_write(task_config), open_dict(task_config):
            del task_config["hydra"]  # what the task function receives (as Hydra's run_job does)
        checked = validated(task_config, schema, error_prefix=error_prefix)
        if preflight is not None:
            run_dir = os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir")))
            try:
                preflight(checked, run_dir)
            except ConfigError as error:
                exit_with_sentence(error_prefix, str(error))


def check_each_key_once(overrides: Iterable[str]) -> None:
    """Hydra keeps the last of two overrides of one key without a word, which would silently drop a
    run from ``run=A run=B``; several values go in one list instead."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    seen: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        value = override.input_line.partition("=")[2]
        if key in seen:
            raise ConfigError(f"{key}= given twice ({seen[key]!r} and {value!r}); give it once "
                              f"(several values go in one list: {key}=[{seen[key]},{value}])")
        seen[key] = value


# ---- errors as sentences ------------------------------------------------------------------------


def sentence(error: BaseException, key_prefix: str = "") -> str:
    """One line naming the key, the value and what the key accepts."""
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(error, OverrideParseException):
        return (f"cannot read the override {error.override!r} ({_first_line(error)}); quote a value that holds "
                "'=', ',' or spaces, inside the shell's quotes: \"run='runs/sweep/method=drift,trainer.lr=1e-05'\"")
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return f"{group}={option} is not an option of {group}; options: {', '.join(sorted(error.options))}"
    if not isinstance(cause, OmegaConfBaseException):
        return _one_line(error)
    key = ".".join(part for part in (key_prefix, str(cause.full_key or cause.key or "")) if part)
    if isinstance(cause, MissingMandatoryValue):
        return f"{key} is required; give {key}=..."
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        return unknown_key(key, _field_names(cause.object_type))
    field_type = _field_type(cause)
    if dataclasses.is_dataclass(field_type):
        keys = ", ".join(_field_names(field_type))
        return f"{key} is a section, not a value; set one of its keys with {key}.KEY=VALUE (keys: {keys})"
    if field_type is not None:
        value = re.search(r"Value '(.*?)' (of type|is not)", cause.msg or "")
        got = repr(value.group(1)) if value else _first_line(cause).rstrip(".")
        return f"{key} must be {_kind(field_type)}, got {got}"
    return _one_line(error)


def unknown_key(key: str, known: Iterable[str]) -> str:
    parent, _, leaf = key.rpartition(".")
    keys = f"; known keys: {', '.join(sorted(known))}" if known else ""
    return f"unknown key {key!r}: {parent} has no key {leaf!r}{keys}" if parent else f"unknown key {key!r}{keys}"


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _field_type(cause: OmegaConfBaseException):
    cls = cause.object_type
    if not dataclasses.is_dataclass(cls) or cause.key is None:
        return None
    return typing.get_type_hints(cls).get(str(cause.key))


def _kind(annotation) -> str:
    arguments = typing.get_args(annotation)
    if type(None) in arguments:
        (inner,) = [a for a in arguments if a is not type(None)]
        return f"{_kind(inner)} or null"
    origin = typing.get_origin(annotation) or annotation
    if origin in (list, tuple):
        return "a list, e.g. [a,b]"
    if origin is dict:
        return "a mapping, e.g. {name:value}"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return words.get(origin, f"a {getattr(origin, '__name__', origin)}")


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines()]
    return " ".join(line for line in lines if line and "HYDRA_FULL_ERROR" not in line) or type(error).__name__
