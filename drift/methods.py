"""Methods as pure pair builders: (records, samples) -> DPO pairs. They share the training loop.

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
"""

from __future__ import annotations

from dataclasses import dataclass

from drift.data.prompts import ORIGINAL_KEEP_LAST, guided_keep_last, guided_prompt, original_prompt
from drift.data.records import PreferencePair, Records, Rejected

GUIDED, ORIGINAL = "guided", "original"
ITERATIVE_METHODS = ("drift", "drift_unguided", "spin", "iterdpo")


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


def sample_requests(method: str, records: Records, guidance: str = "system_turn",
                    original_too: int | None = None) -> list[SampleRequest]:
    """What the sampler must generate this iteration for ``method`` (guided prompts in the form
    ``guidance``). ``original_too=N`` adds drift's original-prompt samples of N cases spread over
    them (0: all), for the guidance check."""
    if method not in ITERATIVE_METHODS:
        raise ValueError(f"method {method!r} samples nothing; iterative methods are {', '.join(ITERATIVE_METHODS)}")
    if not uses_feedback_records(records):
        # UltraFeedback: plain prompts; iterdpo needs two samples to rank
        count = 2 if method == "iterdpo" else 1
        return [SampleRequest(prompt_id(p.pair_id, ORIGINAL), p.prompt, ORIGINAL_KEEP_LAST, count) for p in records.preference_pairs]
    requests = []
    if method in ("drift", "iterdpo"):
        requests += [SampleRequest(prompt_id(c.case_id, GUIDED), guided_prompt(c, guidance), guided_keep_last(guidance))
                     for c in records.dsat_cases]
    if method in ("drift_unguided", "iterdpo"):
        requests += [SampleRequest(prompt_id(c.case_id, ORIGINAL), original_prompt(c), ORIGINAL_KEEP_LAST) for c in records.dsat_cases]
    elif method == "drift" and original_too is not None:
        requests += [SampleRequest(prompt_id(c.case_id, ORIGINAL), original_prompt(c), ORIGINAL_KEEP_LAST)
                     for c in check_cases(records.dsat_cases, original_too)]
    if method == "spin":
        requests += [SampleRequest(prompt_id(s.reply_id, ORIGINAL), original_prompt(s), ORIGINAL_KEEP_LAST) for s in records.sat_replies]
    return requests


Samples = dict[str, list[str]]  # prompt_id -> sampled texts, by sample_index


def build_pairs(
    method: str, records: Records, samples: Samples, rewards: dict[str, list[float]] | None = None,
    unfinished: frozenset[tuple[str, int]] = frozenset(),
) -> tuple[list[PreferencePair], list[Rejected]]:
    """Pairs for one iteration. A record whose sample is missing (quarantined) is rejected, with the reason.

    ``unfinished`` holds the (prompt_id, sample_index) of samples cut at max_new_tokens and kept
    (sampler.truncated=keep): their side of the pair is marked unfinished (no end-of-turn token).
    """
    if method == "warmstart":
        return list(records.seed_pairs), []
    pairs: list[PreferencePair] = []
    rejects: list[Rejected] = []

    def sample_of(record_id: str, kind: str, index: int = 0) -> str | None:
        texts = samples.get(prompt_id(record_id, kind), [])
        if index < len(texts) and texts[index].strip():
            return texts[index]
        rejects.append(Rejected(record_id, "no_sample", f"no usable {kind} sample #{index} (see the sampler's rejects.jsonl)"))
        return None

    def finished(side) -> bool:
        return not (isinstance(side, tuple) and (prompt_id(*side[:2]), side[2]) in unfinished)

    def add(record_id: str, prompt, chosen, rejected) -> None:
        """chosen/rejected: a record's own text, or (record_id, kind, index) of a sample."""
        texts = [side if not isinstance(side, tuple) else sample_of(*side) for side in (chosen, rejected)]
        if texts[0] is None or texts[1] is None:
            return
        if texts[0].strip() == texts[1].strip():
            rejects.append(Rejected(record_id, "identical_sides", "chosen and rejected are the same text"))
            return
        pairs.append(PreferencePair(f"{record_id}:{method}", tuple(prompt), texts[0], texts[1], source=method,
                                    chosen_finished=finished(chosen), rejected_finished=finished(rejected)))

    if not uses_feedback_records(records):
        for pair in records.preference_pairs:
            if method == "drift":
                add(pair.pair_id, pair.prompt, (pair.pair_id, ORIGINAL, 0), pair.rejected)
            elif method == "spin":
                add(pair.pair_id, pair.prompt, pair.chosen, (pair.pair_id, ORIGINAL, 0))
            elif method == "drift_unguided":
                # no feedback exists, so unguided and guided DRIFT coincide here
                add(pair.pair_id, pair.prompt, (pair.pair_id, ORIGINAL, 0), pair.rejected)
            else:
                first, second = sample_of(pair.pair_id, ORIGINAL, 0), sample_of(pair.pair_id, ORIGINAL, 1)
                if first is None or second is None:
                    continue
                if rewards is None:
                    raise ValueError("iterdpo on preference pairs ranks two samples: it needs reward scores")
                scores = rewards[prompt_id(pair.pair_id, ORIGINAL)]
                if scores[0] == scores[1]:
                    rejects.append(Rejected(pair.pair_id, "reward_tie", f"both samples scored {scores[0]}"))
                    continue
                ranked = [(pair.pair_id, ORIGINAL, 0), (pair.pair_id, ORIGINAL, 1)]
                better, worse = ranked if scores[0] > scores[1] else ranked[::-1]
                add(pair.pair_id, pair.prompt, better, worse)
        return pairs, rejects

    for case in records.dsat_cases if method != "spin" else ():
        prompt = original_prompt(case)
        if method == "drift":
            add(case.case_id, prompt, (case.case_id, GUIDED, 0), case.dsat_reply)
        elif method == "drift_unguided":
            add(case.case_id, prompt, (case.case_id, ORIGINAL, 0), case.dsat_reply)
        elif method == "iterdpo":
            add(case.case_id, prompt, (case.case_id, GUIDED, 0), (case.case_id, ORIGINAL, 0))
    if method == "spin":
        for sat in records.sat_replies:
            add(sat.reply_id, original_prompt(sat), sat.reply, (sat.reply_id, ORIGINAL, 0))
    return pairs, rejects
