"""Every check before any work: the config, the data source, the backends, the model source, and the
run folder against the stage plan. Each failure is one sentence (a ConfigError naming the key and
the fix), raised before Hydra writes into a run folder (launch/train.py runs this from its
callback) and before any stage starts (drift.pipeline.run runs it first; a result is kept per
process, so the second call costs nothing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from drift.checks import ConfigError
from drift.stages import RETRAIN, StageKey, differences, mismatch_sentence, output_of, recorded_key

DATA_ERRORS = (ValueError, RuntimeError, OSError)


@dataclass
class Checked:
    """What the checks found, for the run to use: nothing is read twice."""

    records: object
    sampler: object  # the sampler config, its backend resolved
    sampler_choice: str  # "sampler: hf (sampler.backend=auto: no CUDA device)"
    plan: list
    heldout: list[dict] | None
    retrain_from: str | None = None  # the first stage that differs (resume=retrain)
    stale: list[str] = field(default_factory=list)  # the folders resume=retrain removes


_checked: dict[tuple, Checked] = {}


def check_run(config, run_dir: str | os.PathLike, *, consume: bool = False) -> Checked:
    """Raise ConfigError (one sentence) on the first problem; otherwise what the run needs. The result
    is kept until a call with ``consume=True`` (the run itself) takes it: the folder may change after."""
    from drift.backends import check_backends, resolve_sampler
    from drift.plan import stage_plan

    memo = (repr(config), str(Path(run_dir).resolve()))
    if memo in _checked:
        return _checked.pop(memo) if consume else _checked[memo]
    config.validate()
    check_chosen_filter(config)
    check_backends(config)
    check_model_source(config.model)
    records = check_data(config.data, offline=config.model.local_files_only)
    check_chosen_filter(config, records)
    if config.method.warmstart_epochs > 0 and not records.seed_pairs:
        raise ConfigError(f"data {config.data.name!r} yielded no DSAT->SAT seed pairs for the warm start "
                          f"({len(records.rejects)} records rejected); set method.warmstart_epochs=0 to skip it")
    heldout = check_heldout(config.eval)
    sampler, choice = resolve_sampler(config.sampler, config.trainer.device)
    plan = stage_plan(config, records, sampler, heldout)
    checked = Checked(records, sampler, choice, plan, heldout)
    if config.method.warmstart_from:
        check_warmstart_source(config, plan)
    first = first_difference(plan, Path(run_dir), initial_outputs(config))
    if first is not None:
        index, lines = first
        if config.resume != RETRAIN:
            raise ConfigError(mismatch_sentence(plan[index].name, lines))
        checked.retrain_from = plan[index].name
        checked.stale = [stage.name for stage in plan[index:]]
    if not consume:
        _checked[memo] = checked
    return checked


def initial_outputs(config) -> dict[str, str]:
    """The outputs known before any stage runs: the initial model's, when it is not a stage of the run."""
    from drift.plan import INITIAL, initial_output, is_tiny

    return {} if is_tiny(config) else {INITIAL: initial_output(config)}


def first_difference(plan, run_dir: Path, outputs: dict[str, str]) -> tuple[int, list[str]] | None:
    """The index of the first stage whose recorded key differs from the plan's, and what differs; None
    when every recorded stage matches. Fills ``outputs`` with the finished stages' outputs."""
    for index, stage in enumerate(plan):
        recorded = recorded_key(run_dir / stage.name)
        if recorded is None or any(name not in outputs for name in stage.upstream):
            return None  # not started (nor, then, any later stage), or after an unfinished one
        wanted = stage.key(outputs)
        if recorded.fingerprint != wanted.fingerprint:
            return index, differences(recorded, wanted)
        output = output_of(run_dir / stage.name)
        if output is None:
            return None  # started, not finished: it continues
        outputs[stage.name] = output
    return None


def check_warmstart_source(config, plan) -> None:
    """method.warmstart_from: its warm start stages must be what this run would train."""
    source = Path(config.method.warmstart_from).resolve()
    warm = [stage for stage in plan if stage.name.startswith("iter_0/")]
    if not (source / "iter_0" / "train" / "done").is_file():
        raise ConfigError(f"method.warmstart_from={source}: it has no finished warm start ({source / 'iter_0/train/done'} "
                          "is missing); finish that run first or drop method.warmstart_from")
    outputs = initial_outputs(config)
    if not outputs:
        from drift.plan import INITIAL, initial_output

        outputs = {INITIAL: initial_output(config)}
    for stage in warm:
        recorded = recorded_key(source / stage.name) or StageKey({}, {"?": "older"})
        wanted = stage.key(outputs)
        if recorded.fingerprint != wanted.fingerprint:
            raise ConfigError(f"method.warmstart_from={source}: its warm start was trained with other settings or inputs "
                              f"({'; '.join(differences(recorded, wanted))}); use the same values or drop method.warmstart_from")
        outputs[stage.name] = output_of(source / stage.name)


def check_chosen_filter(config, records=None) -> None:
    """method.chosen_filter: a method whose chosen side is the guided sample, a scorer to compare it with
    the policy's own (gold on a testbed, else reward.model on this machine), and (given ``records``)
    DSAT cases with feedback to guide by."""
    from drift.guidance import pair_scorer_name
    from drift.methods import FILTERING_METHODS, method_named
    from drift.plan import filters_chosen

    if not filters_chosen(config):
        return
    value, method = config.method.chosen_filter, config.method.name
    if not method_named(method).filters_chosen:
        raise ConfigError(f"method.chosen_filter={value} chooses between a guided sample and the policy's own, which "
                          f"{', '.join(FILTERING_METHODS)} trains as the chosen side and method {method} does not; "
                          "set method.chosen_filter=none")
    scorer = pair_scorer_name(config)
    if scorer is None or (scorer != "gold reward" and not reward_model_found(config.reward)):
        found = "is not set" if not config.reward.model else f"({config.reward.model}) is not on this machine"
        raise ConfigError(f"method.chosen_filter={value} needs a scorer and this run has none: data={config.data.name} "
                          f"has no gold reward and reward.model {found}; give reward.model=<a reward model folder>, "
                          "or set method.chosen_filter=none")
    if records is not None and not records.dsat_cases:
        raise ConfigError(f"method.chosen_filter={value} compares replies to the guided prompt, and data={config.data.name} "
                          "has no DSAT cases with feedback to guide by; set method.chosen_filter=none")


def reward_model_found(reward_cfg) -> bool:
    """reward.model is a folder with config.json, or a hub name this machine can load (cached, when
    downloads are off)."""
    name = reward_cfg.model
    if os.path.isdir(name):
        return os.path.isfile(os.path.join(name, "config.json"))
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        return False
    if not reward_cfg.local_files_only:
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def check_data(data_cfg, *, offline: bool, tokenizer=None):
    """The data source's path, format and schema (and, offline, that a hub dataset is cached): its records."""
    from drift.data import SchemaError, load_records

    if offline and not data_cfg.path and data_cfg.hub_name:
        # no retries against a network that is not there: a cached dataset still loads
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return load_records(data_cfg, tokenizer=tokenizer)
    except (SchemaError, *DATA_ERRORS) as error:
        if offline and not data_cfg.path and data_cfg.hub_name:
            raise ConfigError(f"data.hub_name={data_cfg.hub_name} is not in this machine's dataset cache and downloads "
                              "are off (model.local_files_only=true); download it once and give data.path=<file>, or "
                              "set model.local_files_only=false") from None
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if data_cfg.path and message.startswith(str(data_cfg.path)):
            message = message[len(str(data_cfg.path)):].lstrip(": ")
        where = f"data.path={data_cfg.path}" if data_cfg.path else f"data.name={data_cfg.name}"
        raise ConfigError(f"{where}: {message}") from None


def check_heldout(eval_cfg) -> list[dict] | None:
    if not eval_cfg.heldout or eval_cfg.stages == "none":
        return None
    from drift.eval.heldout import HeldoutError, read_heldout

    try:
        return read_heldout(eval_cfg.heldout)
    except (HeldoutError, ValueError, OSError) as error:
        raise ConfigError(str(error)) from None


def check_model_source(model_cfg) -> None:
    """The model can be found here: a tiny or embedded model, a folder with a config, or a cached hub
    name; random:<source> (random weights in its shape) where its source can."""
    from drift.model import EMBEDDED_MODELS, EMBEDDED_PREFIX, RANDOM_PREFIX, TINY_PREFIX

    name = model_cfg.name_or_path
    if name.startswith(TINY_PREFIX):
        return
    if name.startswith(RANDOM_PREFIX):
        return check_model_source(replace(model_cfg, name_or_path=name[len(RANDOM_PREFIX):]))
    if name.startswith(EMBEDDED_PREFIX):
        if name[len(EMBEDDED_PREFIX):] not in EMBEDDED_MODELS:
            known = ", ".join(EMBEDDED_PREFIX + known for known in EMBEDDED_MODELS)
            raise ConfigError(f"model.name_or_path={name!r} is not an embedded model; the embedded models are {known}")
        return
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ConfigError(f"model.name_or_path={name} is a folder without config.json; give an HF model folder")
        return
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        raise ConfigError(f"model.name_or_path={name} is not a folder; give an HF model folder or a hub name")
    if model_cfg.local_files_only:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json", revision=model_cfg.revision), str):
            raise ConfigError(f"model.name_or_path={name} is not in this machine's hub cache and downloads are off "
                              "(model.local_files_only=true); download it once, point model.name_or_path at a folder, "
                              "or set model.local_files_only=false")
