"""Methods as objects in one registry: what each samples, how it builds pairs, what it needs.

Every method shares the training loop; a method is only (records, samples) -> DPO pairs.

| method          | chosen                                   | rejected                              |
|-----------------|------------------------------------------|---------------------------------------|
| drift           | policy sample, guided prompt             | the real DSAT reply                   |
| drift_unguided  | policy sample, original prompt           | the real DSAT reply                   |
| spin            | the real SAT reply                       | policy sample, original prompt        |
| iterdpo (WF)    | policy sample, guided prompt             | policy sample, original prompt        |
| iterdpo (UF)    | higher-reward of two samples             | lower-reward one (a reward model)     |
| warmstart       | SAT revision of a seed pair              | its DSAT reply                        |

On UltraFeedback (no feedback turn, paper §4.1): drift keeps the original rejected and samples a
new chosen; spin keeps the original chosen and samples a new rejected; samples come from the
plain prompt. Every pair trains on the *original* prompt, never on the guided one.

``METHODS[name]`` (or ``method_named(name)``) is the one place a method's name is read: the pipeline
asks the object which samples to request, whether a reward model ranks them, whether the guidance
check applies, and how to build the pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from drift.data.prompts import ORIGINAL_KEEP_LAST, guided_keep_last, guided_prompt, original_prompt
from drift.data.records import PreferencePair, Records, Rejected

GUIDED, ORIGINAL = "guided", "original"


@dataclass(frozen=True)
class SampleRequest:
    prompt_id: str
    messages: tuple[dict, ...]
    keep_last: int
    num_samples: int = 1

    def as_row(self) -> dict:
        row = {"prompt_id": self.prompt_id, "messages": list(self.messages), "keep_last": self.keep_last}
        if self.num_samples > 1:
            row["num_samples"] = self.num_samples
        return row


def prompt_id(record_id: str, kind: str) -> str:
    return f"{record_id}#{kind}"


def uses_feedback_records(records: Records) -> bool:
    """WildFeedback-style data (DSAT cases with feedback) versus UltraFeedback-style pairs."""
    return bool(records.dsat_cases or records.sat_replies)


def check_cases(cases: list, count: int) -> list:
    """An even spread of ``count`` DSAT cases (all when count is 0 or covers them): the guidance check's."""
    if count == 0 or count >= len(cases):
        return list(cases)
    return [cases[index * len(cases) // count] for index in range(count)]


Samples = dict[str, list[str]]  # prompt_id -> sampled texts, by sample_index
Side = Union[str, tuple[str, str, int]]  # a record's own text, or (record_id, kind, index) of a sample


class PairBuilder:
    """Collects one iteration's pairs and rejects: a side that names a missing (quarantined) sample
    rejects its record with the reason; a cut-but-kept sample is marked unfinished."""

    def __init__(self, method: str, samples: Samples, unfinished: frozenset[tuple[str, int]]):
        self.method, self.samples, self.unfinished = method, samples, unfinished
        self.pairs: list[PreferencePair] = []
        self.rejects: list[Rejected] = []

    def sample_of(self, record_id: str, kind: str, index: int = 0) -> str | None:
        texts = self.samples.get(prompt_id(record_id, kind), [])
        if index < len(texts) and texts[index].strip():
            return texts[index]
        self.rejects.append(Rejected(record_id, "no_sample", f"no usable {kind} sample #{index} (see the sampler's rejects.jsonl)"))
        return None

    def add(self, record_id: str, prompt, chosen: Side, rejected: Side) -> None:
        texts = [side if not isinstance(side, tuple) else self.sample_of(*side) for side in (chosen, rejected)]
        if texts[0] is None or texts[1] is None:
            return
        if texts[0].strip() == texts[1].strip():
            self.rejects.append(Rejected(record_id, "identical_sides", "chosen and rejected are the same text"))
            return
        self.pairs.append(PreferencePair(f"{record_id}:{self.method}", tuple(prompt), texts[0], texts[1], source=self.method,
                                         chosen_finished=self._finished(chosen), rejected_finished=self._finished(rejected)))

    def _finished(self, side: Side) -> bool:
        return not (isinstance(side, tuple) and (prompt_id(*side[:2]), side[2]) in self.unfinished)


class Method:
    """One method: which samples it requests, how it builds pairs, what it needs."""

    name = ""
    iterative = True  # samples from the policy every iteration
    samples_guided = False  # the guided prompt of every DSAT case
    samples_original = False  # the original prompt of every DSAT case
    # the guidance check applies: the chosen side is the guided sample, so it asks whether that
    # beats the policy's own answer (and samples the original prompt of the checked cases for it)
    guidance_check = False

    def sample_requests(self, records: Records, guidance: str = "system_turn",
                        original_too: int | None = None) -> list[SampleRequest]:
        """What the sampler must generate this iteration (guided prompts in the form ``guidance``).
        ``original_too=N`` adds the original-prompt samples of N cases spread over them (0: all), for
        the guidance check."""
        if not self.iterative:
            raise ValueError(f"method {self.name!r} samples nothing; iterative methods are {', '.join(ITERATIVE_METHODS)}")
        if not uses_feedback_records(records):
            return [SampleRequest(prompt_id(p.pair_id, ORIGINAL), p.prompt, ORIGINAL_KEEP_LAST, self.preference_samples)
                    for p in records.preference_pairs]
        requests = []
        if self.samples_guided:
            requests += [SampleRequest(prompt_id(c.case_id, GUIDED), guided_prompt(c, guidance), guided_keep_last(guidance))
                         for c in records.dsat_cases]
        checked = records.dsat_cases if self.samples_original else (
            check_cases(records.dsat_cases, original_too) if self.guidance_check and original_too is not None else [])
        requests += [SampleRequest(prompt_id(c.case_id, ORIGINAL), original_prompt(c), ORIGINAL_KEEP_LAST) for c in checked]
        return requests + self.extra_requests(records)

    # samples per prompt on preference pairs (UltraFeedback), where only the original prompt exists
    preference_samples = 1

    def extra_requests(self, records: Records) -> list[SampleRequest]:
        return []

    def needs_reward_model(self, records: Records) -> bool:
        """Whether a reward model ranks this method's samples on ``records``."""
        return False

    def build_pairs(self, records: Records, samples: Samples, rewards: dict[str, list[float]] | None = None,
                    unfinished: frozenset[tuple[str, int]] = frozenset()) -> tuple[list[PreferencePair], list[Rejected]]:
        """Pairs for one iteration. A record whose sample is missing (quarantined) is rejected, with the reason.

        ``unfinished`` holds the (prompt_id, sample_index) of samples cut at max_new_tokens and kept
        (sampler.truncated=keep): their side of the pair is marked unfinished (no end-of-turn token).
        """
        builder = PairBuilder(self.name, samples, unfinished)
        if uses_feedback_records(records):
            self.feedback_pairs(builder, records)
        else:
            for pair in records.preference_pairs:
                self.preference_pair(builder, pair, rewards)
        return builder.pairs, builder.rejects

    def feedback_pairs(self, builder: PairBuilder, records: Records) -> None:
        raise NotImplementedError

    def preference_pair(self, builder: PairBuilder, pair: PreferencePair, rewards: dict[str, list[float]] | None) -> None:
        raise NotImplementedError


class Drift(Method):
    """chosen: the guided sample; rejected: the real DSAT reply (preference pairs: keep the rejected)."""

    name, samples_guided, guidance_check = "drift", True, True

    def feedback_pairs(self, builder: PairBuilder, records: Records) -> None:
        for case in records.dsat_cases:
            builder.add(case.case_id, original_prompt(case), (case.case_id, GUIDED, 0), case.dsat_reply)

    def preference_pair(self, builder, pair, rewards) -> None:
        builder.add(pair.pair_id, pair.prompt, (pair.pair_id, ORIGINAL, 0), pair.rejected)


class DriftUnguided(Drift):
    """chosen: the sample from the original prompt; rejected: the real DSAT reply."""

    name, samples_guided, samples_original, guidance_check = "drift_unguided", False, True, False

    def feedback_pairs(self, builder: PairBuilder, records: Records) -> None:
        for case in records.dsat_cases:
            builder.add(case.case_id, original_prompt(case), (case.case_id, ORIGINAL, 0), case.dsat_reply)

    # preference pairs: no feedback exists, so unguided and guided DRIFT coincide (Drift's)


class Spin(Method):
    """chosen: the real SAT reply; rejected: the policy's sample from the original prompt."""

    name = "spin"

    def extra_requests(self, records: Records) -> list[SampleRequest]:
        return [SampleRequest(prompt_id(s.reply_id, ORIGINAL), original_prompt(s), ORIGINAL_KEEP_LAST) for s in records.sat_replies]

    def feedback_pairs(self, builder: PairBuilder, records: Records) -> None:
        for sat in records.sat_replies:
            builder.add(sat.reply_id, original_prompt(sat), sat.reply, (sat.reply_id, ORIGINAL, 0))

    def preference_pair(self, builder, pair, rewards) -> None:
        builder.add(pair.pair_id, pair.prompt, pair.chosen, (pair.pair_id, ORIGINAL, 0))


class IterDpo(Method):
    """Feedback data: guided sample over original-prompt sample. Preference pairs: the higher-reward of
    two samples over the lower (a reward model ranks them)."""

    name, samples_guided, samples_original, preference_samples = "iterdpo", True, True, 2

    def needs_reward_model(self, records: Records) -> bool:
        return not uses_feedback_records(records)

    def feedback_pairs(self, builder: PairBuilder, records: Records) -> None:
        for case in records.dsat_cases:
            builder.add(case.case_id, original_prompt(case), (case.case_id, GUIDED, 0), (case.case_id, ORIGINAL, 0))

    def preference_pair(self, builder, pair, rewards) -> None:
        first, second = builder.sample_of(pair.pair_id, ORIGINAL, 0), builder.sample_of(pair.pair_id, ORIGINAL, 1)
        if first is None or second is None:
            return
        if rewards is None:
            raise ValueError("iterdpo on preference pairs ranks two samples: it needs reward scores")
        scores = rewards[prompt_id(pair.pair_id, ORIGINAL)]
        if scores[0] == scores[1]:
            builder.rejects.append(Rejected(pair.pair_id, "reward_tie", f"both samples scored {scores[0]}"))
            return
        ranked = [(pair.pair_id, ORIGINAL, 0), (pair.pair_id, ORIGINAL, 1)]
        better, worse = ranked if scores[0] > scores[1] else ranked[::-1]
        builder.add(pair.pair_id, pair.prompt, better, worse)


class WarmStart(Method):
    """The DSAT->SAT seed pairs as they are: no sampling, no iterations."""

    name, iterative = "warmstart", False

    def build_pairs(self, records, samples, rewards=None, unfinished=frozenset()):
        return list(records.seed_pairs), []


METHODS: dict[str, Method] = {m.name: m for m in (WarmStart(), Drift(), DriftUnguided(), Spin(), IterDpo())}
ITERATIVE_METHODS = tuple(name for name, m in METHODS.items() if m.iterative)


def method_named(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method.name must be one of {', '.join(METHODS)}, got {name!r}") from None


def sample_requests(method: str, records: Records, guidance: str = "system_turn",
                    original_too: int | None = None) -> list[SampleRequest]:
    """``method_named(method).sample_requests(...)``."""
    return method_named(method).sample_requests(records, guidance, original_too)


def build_pairs(method: str, records: Records, samples: Samples, rewards: dict[str, list[float]] | None = None,
                unfinished: frozenset[tuple[str, int]] = frozenset()) -> tuple[list[PreferencePair], list[Rejected]]:
    """``method_named(method).build_pairs(...)``."""
    return method_named(method).build_pairs(records, samples, rewards, unfinished)
