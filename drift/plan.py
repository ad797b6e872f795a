"""The run's stages, in order, each with what its output is a function of (drift.stages' contract).

    initial_model -> iter_0/data -> iter_0/tokenize -> iter_0/train            (the warm start)
    -> iter_k/sample -> iter_k/pairs -> iter_k/tokenize -> iter_k/train        (k = 1..K)
    -> evaluate                                                                (eval.heldout)

``stage_plan`` declares them from the config and the records alone, so the run's folder can be
checked against it before anything is loaded (drift.preflight), and the pipeline runs the same
declarations (drift.pipeline). A stage's key names its inputs by upstream outputs: a trained model
by the fingerprint of its weight files, samples and pairs by their rows, tokenized pairs by their
sequence keys; the initial model by its source (or, for a tiny random model, by the settings that
make it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable

from drift.fingerprint import fingerprint
from drift.methods import method_named
from drift.stages import StageKey, select

INITIAL = "initial_model"
EVALUATE = "evaluate"
# the settings that say which data a run reads (data.guidance and prompt_format shape prompts, not records)
DATA_SOURCE = ("data.name", "data.path", "data.hub_name", "data.hub_config", "data.split", "data.conversation_key",
               "data.both_labels", "data.binarize_seed")
TOKENIZE = ("model.name_or_path", "model.revision", "trainer.max_length", "trainer.max_prompt_length", "data.prompt_format")


@dataclass(frozen=True)
class PlannedStage:
    name: str  # its folder under the run folder
    upstream: tuple[str, ...]  # the planned stages whose outputs are its inputs
    make_key: Callable[[list[str]], StageKey]  # the upstream outputs, in order -> its key

    def key(self, outputs: dict[str, str]) -> StageKey:
        return self.make_key([outputs[name] for name in self.upstream])


def records_fingerprint(records) -> str:
    """What the methods read of the records (not the report, nor where a reject sat in the file)."""
    return fingerprint([records.dsat_cases, records.sat_replies, records.seed_pairs, records.preference_pairs])


def seed_pair_rows(records) -> list[dict]:
    return [asdict(pair) for pair in records.seed_pairs]


def initial_output(config) -> str:
    """The initial model's identity: its source, or for a tiny random model the settings that build it."""
    return fingerprint(initial_settings(config) if is_tiny(config) else
                       {"model.name_or_path": config.model.name_or_path, "model.revision": config.model.revision})


def initial_settings(config) -> dict:
    """What builds a tiny random initial model: the model's settings and the seed (not model.lora, which
    shapes the training stages only)."""
    return without_lora(select(config, "model.", "trainer.seed"))


def is_tiny(config) -> bool:
    from drift.model import TINY_PREFIX

    return config.model.name_or_path.startswith(TINY_PREFIX)


def train_settings(config, epochs_key: str, *extra: str) -> dict:
    settings = select(config, "model.", "trainer.", "method.beta", "method.rpo_alpha", epochs_key, *extra)
    # without an adapter (model.lora.rank=0) its settings shape nothing: a full-weight run records the keys
    # it recorded before model.lora existed
    return settings if config.model.lora.rank else without_lora(settings)


def without_lora(settings: dict) -> dict:
    return {key: value for key, value in settings.items() if not key.startswith("model.lora.")}


def guidance_check_runs(config) -> bool:
    """Whether the guidance check runs this run (it needs a scorer: gold on the testbed, or a reward model)."""
    from drift.guidance import scorer_name

    return method_named(config.method.name).guidance_check and scorer_name(config) is not None


def filters_chosen(config) -> bool:
    """Whether method.chosen_filter is on (preflight refuses it for a method it does not apply to)."""
    from drift.methods import NO_FILTER

    return config.method.chosen_filter != NO_FILTER


def sample_job(config, records, sampler, checkpoint: str, folder):
    """The sampler request of an iteration: the method's prompts, the run's sampler settings.
    method.chosen_filter compares every case's guided sample with the policy's own: all cases'
    original prompts are sampled (the guidance check then covers every case)."""
    from drift.sampler.client import SamplingJob

    method = method_named(config.method.name)
    check = guidance_check_runs(config)
    original_too = 0 if filters_chosen(config) else config.method.guidance_check_cases if check else None
    requests = method.sample_requests(records, config.data.guidance, original_too=original_too)
    described = {"method.name": config.method.name, "data.guidance": config.data.guidance}
    if check:
        described |= {"method.guidance_check": config.method.guidance_check,
                      "method.guidance_check_cases": config.method.guidance_check_cases}
    return SamplingJob(checkpoint, tuple(request.as_row() for request in requests), folder, sampler,
                       max_prompt_length=config.trainer.max_prompt_length, prompt_format=config.data.prompt_format,
                       device=config.trainer.device, trust_remote_code=config.model.trust_remote_code,
                       described_by=described)


def chosen_filter_settings(config) -> dict:
    """What shapes method.chosen_filter's pairs: its value and its scorer (the gold specs' file, or the
    reward model's settings). Recorded only when the filter is on, so that earlier runs keep their keys."""
    from drift.guidance import pair_scorer_name

    scorer = pair_scorer_name(config)
    settings = {"method.chosen_filter": config.method.chosen_filter, "method.chosen_filter.scorer": scorer}
    return settings | (select(config, "data.name", "data.path") if scorer == "gold reward" else select(config, "reward."))


def stage_plan(config, records, sampler, heldout_rows: list[dict] | None = None) -> list[PlannedStage]:
    """Every stage of the run, in order. ``sampler``: the run's sampler config with its backend resolved."""
    from drift.sampler.client import request_key

    data = records_fingerprint(records)
    plan: list[PlannedStage] = []
    if is_tiny(config):
        plan.append(PlannedStage(INITIAL, (), lambda _: StageKey({}, initial_settings(config))))
    policy = INITIAL
    if config.method.warmstart_epochs > 0:
        plan += [
            PlannedStage("iter_0/data", (), lambda _: StageKey({"data": data}, select(config, *DATA_SOURCE))),
            PlannedStage("iter_0/tokenize", ("iter_0/data",),
                         lambda up: StageKey({"pairs": up[0]}, select(config, *TOKENIZE))),
            PlannedStage("iter_0/train", (INITIAL, "iter_0/tokenize"),
                         lambda up: StageKey({"start": up[0], "pairs": up[1]},
                                             train_settings(config, "method.warmstart_epochs"))),
        ]
        policy = "iter_0/train"
    method = method_named(config.method.name)
    for k in range(1, config.method.iterations + 1):
        it = f"iter_{k}"
        reference = policy if config.method.reference == "iteration_start" else INITIAL
        job = sample_job(config, records, sampler, "", None)
        pair_settings = select(config, "method.name", *(["reward."] if method.needs_reward_model(records) else []))
        if filters_chosen(config):
            pair_settings |= chosen_filter_settings(config)
        plan += [
            PlannedStage(f"{it}/sample", (policy,), lambda up, job=job: request_key(job, checkpoint_fingerprint=up[0])),
            PlannedStage(f"{it}/pairs", (f"{it}/sample",),
                         lambda up, s=pair_settings: StageKey({"samples": up[0], "data": data}, s)),
            PlannedStage(f"{it}/tokenize", (f"{it}/pairs",), lambda up: StageKey({"pairs": up[0]}, select(config, *TOKENIZE))),
            PlannedStage(f"{it}/train", (policy, reference, f"{it}/tokenize"),
                         lambda up: StageKey({"start": up[0], "reference": up[1], "pairs": up[2]},
                                             train_settings(config, "method.iteration_epochs", "method.reference"))),
        ]
        policy = f"{it}/train"
    if config.eval.heldout and config.eval.stages != "none":
        evaluated = evaluated_stages(config)
        eval_sampler = replace(sampler, max_new_tokens=config.eval.max_new_tokens,
                               num_samples=config.eval.samples_per_prompt, truncated="keep")
        settings = {**select(config, "eval.", "trainer.max_prompt_length", "data.prompt_format"),
                    **{f"sampler.{name}": value for name, value in asdict(eval_sampler).items()}}
        plan.append(PlannedStage(EVALUATE, tuple(folder for _, folder in evaluated),
                                 lambda up: StageKey({"heldout": fingerprint(heldout_rows), **{
                                     name: output for (name, _), output in zip(evaluated, up)}}, settings)))
    return plan


def evaluated_stages(config) -> list[tuple[str, str]]:
    """(name, stage) of the checkpoints the held-out evaluation scores: base, warm start, each iteration."""
    stages = [("base", INITIAL)] + [(name, f"{folder}/train") for name, folder in trained_stages(config)]
    return stages if config.eval.stages == "all" else stages[-1:]


def trained_stages(config) -> list[tuple[str, str]]:
    """(name, folder) of the stages that end with a model, in training order."""
    stages = [("warmstart", "iter_0")] if config.method.warmstart_epochs > 0 else []
    return stages + [(f"iter_{k}", f"iter_{k}") for k in range(1, config.method.iterations + 1)]
