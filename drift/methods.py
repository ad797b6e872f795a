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

``method.chosen_filter`` (DRIFT on feedback data; the paper's behaviour is ``none``): a scorer (gold
on the testbed, a reward model on real data) scores every case's guided sample, the policy's own
sample on the original prompt and the DSAT reply. ``drop`` keeps a case's pair only where the guided
sample scores above the policy's own; ``own_fallback`` keeps those too and, for the others, trains
the policy's own sample as the chosen side where it scores above the DSAT reply. A case whose own
sample was quarantined (cut, empty) keeps its guided pair: a finished reply beats none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from drift.data.prompts import ORIGINAL_KEEP_LAST, guided_keep_last, guided_prompt, original_prompt
from drift.data.records import DsatCase, PreferencePair, Records, Rejected

GUIDED, ORIGINAL = "guided", "original"
DSAT = "dsat"  # the score of a case's DSAT reply is keyed prompt_id(case_id, DSAT)
# method.chosen_filter's values (drift.checks.ChosenFilter)
NO_FILTER, DROP, OWN_FALLBACK = "none", "drop", "own_fallback"
OWN_CHOSEN = "own"  # a pair whose chosen side is the policy's own sample: source "<method>:own"
# why method.chosen_filter left a case without a pair
GUIDED_NOT_BETTER = "guided_not_better_than_own"
OWN_NOT_BETTER = "own_not_better_than_dsat"


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

    def __init__(self, method: str, samples: Samples, unfinished: frozenset[tuple[str, int]],
                 rewards: dict[str, list[float]] | None = None, chosen_filter: str = NO_FILTER):
        self.method, self.samples, self.unfinished = method, samples, unfinished
        self.rewards, self.chosen_filter = rewards, chosen_filter
        self.pairs: list[PreferencePair] = []
        self.rejects: list[Rejected] = []

    def has_sample(self, record_id: str, kind: str, index: int = 0) -> bool:
        texts = self.samples.get(prompt_id(record_id, kind), [])
        return index < len(texts) and bool(texts[index].strip())

    def sample_of(self, record_id: str, kind: str, index: int = 0) -> str | None:
        texts = self.samples.get(prompt_id(record_id, kind), [])
        if index < len(texts) and texts[index].strip():
            return texts[index]
        self.rejects.append(Rejected(record_id, "no_sample", f"no usable {kind} sample #{index} (see the sampler's rejects.jsonl)"))
        return None

    def add(self, record_id: str, prompt, chosen: Side, rejected: Side, source: str | None = None) -> None:
        texts = [side if not isinstance(side, tuple) else self.sample_of(*side) for side in (chosen, rejected)]
        if texts[0] is None or texts[1] is None:
            return
        if texts[0].strip() == texts[1].strip():
            self.rejects.append(Rejected(record_id, "identical_sides", "chosen and rejected are the same text"))
            return
        self.pairs.append(PreferencePair(f"{record_id}:{self.method}", tuple(prompt), texts[0], texts[1],
                                         source=source or self.method,
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
    # method.chosen_filter applies: a scorer keeps the guided chosen side only where it beats the
    # policy's own sample (every case's original prompt is then sampled too)
    filters_chosen = False

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

    def scored_for_filter(self, records: Records, samples: Samples) -> list[tuple[str, DsatCase, str]]:
        """What method.chosen_filter's scorer must score: (score key, case, text) for every case's guided
        and own sample (where usable) and its DSAT reply (key prompt_id(case_id, DSAT))."""
        if not self.filters_chosen:
            raise ValueError(f"method.chosen_filter applies to {', '.join(FILTERING_METHODS)}, not {self.name!r}")
        wanted = []
        for case in records.dsat_cases:
            for kind in (GUIDED, ORIGINAL):
                texts = samples.get(prompt_id(case.case_id, kind), [])
                if texts and texts[0].strip():
                    wanted.append((prompt_id(case.case_id, kind), case, texts[0]))
            wanted.append((prompt_id(case.case_id, DSAT), case, case.dsat_reply))
        return wanted

    def build_pairs(self, records: Records, samples: Samples, rewards: dict[str, list[float]] | None = None,
                    unfinished: frozenset[tuple[str, int]] = frozenset(),
                    chosen_filter: str = NO_FILTER) -> tuple[list[PreferencePair], list[Rejected]]:
        """Pairs for one iteration. A record whose sample is missing (quarantined) is rejected, with the reason.

        ``unfinished`` holds the (prompt_id, sample_index) of samples cut at max_new_tokens and kept
        (sampler.truncated=keep): their side of the pair is marked unfinished (no end-of-turn token).
        ``chosen_filter`` (not none): ``rewards`` holds the scores ``scored_for_filter`` asked for.
        """
        if chosen_filter != NO_FILTER and not self.filters_chosen:
            raise ValueError(f"method.chosen_filter={chosen_filter} applies to {', '.join(FILTERING_METHODS)}, "
                             f"not {self.name!r}")
        builder = PairBuilder(self.name, samples, unfinished, rewards, chosen_filter)
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
    """chosen: the guided sample; rejected: the real DSAT reply (preference pairs: keep the rejected).
    With method.chosen_filter, only where the scorer prefers the guided sample to the policy's own."""

    name, samples_guided, guidance_check, filters_chosen = "drift", True, True, True

    def feedback_pairs(self, builder: PairBuilder, records: Records) -> None:
        for case in records.dsat_cases:
            if builder.chosen_filter == NO_FILTER:
                builder.add(case.case_id, original_prompt(case), (case.case_id, GUIDED, 0), case.dsat_reply)
            else:
                self.filtered_pair(builder, case)

    def filtered_pair(self, builder: PairBuilder, case: DsatCase) -> None:
        """method.chosen_filter: the guided pair where the guided sample scores above the policy's own (or
        the own sample was quarantined); otherwise nothing (drop) or, where the own sample scores above the
        DSAT reply, the own sample as the chosen side (own_fallback)."""
        if builder.rewards is None:
            raise ValueError("method.chosen_filter compares the guided and own samples: it needs their scores")

        def score(kind: str) -> float | None:
            usable = kind == DSAT or builder.has_sample(case.case_id, kind)
            return builder.rewards[prompt_id(case.case_id, kind)][0] if usable else None

        guided, own, dsat = score(GUIDED), score(ORIGINAL), score(DSAT)
        prompt = original_prompt(case)
        if guided is not None and (own is None or guided > own):
            builder.add(case.case_id, prompt, (case.case_id, GUIDED, 0), case.dsat_reply)
        elif guided is None and builder.chosen_filter == DROP:
            builder.sample_of(case.case_id, GUIDED)  # rejects the case: no usable guided sample
        elif builder.chosen_filter == DROP:
            builder.rejects.append(Rejected(case.case_id, GUIDED_NOT_BETTER,
                                            f"guided sample scored {guided:.4g}, the policy's own {own:.4g}"))
        elif own is not None and own > dsat:
            builder.add(case.case_id, prompt, (case.case_id, ORIGINAL, 0), case.dsat_reply, source=f"{self.name}:{OWN_CHOSEN}")
        elif own is None:
            builder.sample_of(case.case_id, ORIGINAL)  # rejects the case: neither sample is usable
        else:
            guided_text = "no usable guided sample" if guided is None else f"guided sample scored {guided:.4g}"
            builder.rejects.append(Rejected(case.case_id, OWN_NOT_BETTER,
                                            f"{guided_text}, the policy's own {own:.4g}, the DSAT reply {dsat:.4g}"))

    def preference_pair(self, builder, pair, rewards) -> None:
        builder.add(pair.pair_id, pair.prompt, (pair.pair_id, ORIGINAL, 0), pair.rejected)


class DriftUnguided(Drift):
    """chosen: the sample from the original prompt; rejected: the real DSAT reply."""

    name, samples_guided, samples_original, guidance_check, filters_chosen = "drift_unguided", False, True, False, False

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

    def build_pairs(self, records, samples, rewards=None, unfinished=frozenset(), chosen_filter=NO_FILTER):
        return list(records.seed_pairs), []


METHODS: dict[str, Method] = {m.name: m for m in (WarmStart(), Drift(), DriftUnguided(), Spin(), IterDpo())}
ITERATIVE_METHODS = tuple(name for name, m in METHODS.items() if m.iterative)
FILTERING_METHODS = tuple(name for name, m in METHODS.items() if m.filters_chosen)


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
                unfinished: frozenset[tuple[str, int]] = frozenset(),
                chosen_filter: str = NO_FILTER) -> tuple[list[PreferencePair], list[Rejected]]:
    """``method_named(method).build_pairs(...)``."""
    return method_named(method).build_pairs(records, samples, rewards, unfinished, chosen_filter)


def chosen_counts(pairs: list[PreferencePair], rejects: list[Rejected]) -> dict[str, int]:
    """One iteration under method.chosen_filter: pairs whose chosen side is the guided sample and the
    policy's own, and the cases left without a pair, by reason."""
    own = sum(pair.source.endswith(f":{OWN_CHOSEN}") for pair in pairs)
    counts = {"guided_chosen": len(pairs) - own, "own_chosen": own}
    for reason in (GUIDED_NOT_BETTER, OWN_NOT_BETTER, "no_sample", "identical_sides"):
        counts[reason] = sum(reject.reason == reason for reject in rejects)
    return counts
