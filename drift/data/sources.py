"""Each public source -> Records. `load_records(cfg)` picks the reader by `cfg.name`.

What each source yields, and why:

- ``fixture`` / ``testbed`` / ``wildfeedback`` with hub_config=sat_dsat_annotation: labelled conversations,
  read by drift/data/annotation.py into DSAT cases, SAT replies and DSAT->SAT seed pairs. This is the
  paper's real-dissatisfaction setting. The fixture is our own hand-written file in that schema; the
  testbed is too, with checkable preferences and a rule-based gold reward (drift/eval/gold.py).
- ``wildfeedback`` with hub_config=wildfeedback: each row is the WildFeedback authors' DPO pair:
  ``conversations`` (the history, ending with the user turn the reply answered), ``rejected`` (the
  reply the user was dissatisfied with) and ``chosen`` (a preferred reply the authors generated from
  the user's stated preferences, not a reply the user saw). The user's feedback turn itself is not
  in the row, so no guided prompt can be built from it: these become ``preference_pairs``, used
  like UltraFeedback's (DRIFT: keep ``rejected``, sample the chosen side from the original prompt).
  We do not dress them up as DsatCases with an empty feedback.
- ``drift_jsonl``: the paper code's ``dsat_data.jsonl`` (``prompt``, ``rejected``, ``user_preference``)
  -> DsatCases; a row that also has ``chosen`` (our seed_pairs.jsonl, or prepare_data's own
  dsat_cases.jsonl) is a DSAT->SAT seed pair too.
- ``ultrafeedback``: HuggingFaceH4/ultrafeedback_binarized (``prompt``, ``prompt_id``, ``chosen``,
  ``rejected`` message lists) or openbmb/UltraFeedback (``instruction``, ``completions``), told apart
  by their columns. No user feedback exists here, so only ``preference_pairs``. openbmb rows are
  binarized the way H4 did it: chosen = the highest ``overall_score``, rejected = a random
  completion with a strictly lower score (seeded by data.binarize_seed and the prompt).

Bad rows never stop a load: each goes to ``Records.rejects`` with its id, reason and location.
A file in the wrong schema stops it at once, naming the missing columns.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path

from drift.data.annotation import freeze_messages, load_annotation
from drift.data.config import DataConfig
from drift.data.files import SchemaError, SourceRows, read_rows, require_columns
from drift.data.records import DsatCase, PreferencePair, Records, Rejected

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures"
FIXTURE_ANNOTATION = FIXTURE_DIR / "sat_dsat_annotation.jsonl"
# the verifiable testbed: the same schema, plus each conversation's preference spec (drift/eval/gold.py)
# data=testbed: the composed testbed at scale (testbed_compose.py); the 53 hand-written
# conversations (testbed_build.py) stay in testbed.jsonl, data.path=drift/data/fixtures/testbed.jsonl
TESTBED_ANNOTATION = FIXTURE_DIR / "testbed_scale.jsonl"
TESTBED_HANDWRITTEN = FIXTURE_DIR / "testbed.jsonl"
TESTBED_HELDOUT = FIXTURE_DIR / "testbed_heldout.jsonl"
# data=testbed_compact, the main job's: the first topics of both (testbed_compose.py writes them too)
TESTBED_COMPACT = FIXTURE_DIR / "testbed_compact.jsonl"
TESTBED_COMPACT_HELDOUT = FIXTURE_DIR / "testbed_compact_heldout.jsonl"
# data.name -> the shipped file it reads when data.path is not set
SHIPPED = {"fixture": FIXTURE_ANNOTATION, "testbed": TESTBED_ANNOTATION, "testbed_compact": TESTBED_COMPACT}
# the testbeds, whose conversations carry a gold spec -> their held-out splits (eval.heldout takes the name)
TESTBEDS = {"testbed": TESTBED_HELDOUT, "testbed_compact": TESTBED_COMPACT_HELDOUT}
CHAT_ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


class BadRow(Exception):
    """One row cannot be used; carries the reject reason and a sentence for rejects.jsonl."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def load_records(data_cfg: DataConfig, tokenizer=None) -> Records:
    """Read the configured source into Records (with report and rejects).

    With a tokenizer and `data_cfg.max_prompt_length`, also renders every prompt the methods will
    use and moves records whose prompts cannot fit even after truncation to the rejects
    (see drift.data.prompts.fit_prompts).
    """
    data_cfg.validate()
    if data_cfg.name in SHIPPED:
        records = load_annotation(read_rows(data_cfg.path or str(SHIPPED[data_cfg.name])), data_cfg, data_cfg.name)
    elif data_cfg.name == "wildfeedback":
        source = _read(data_cfg)
        if data_cfg.hub_config == "sat_dsat_annotation":
            records = load_annotation(source, data_cfg, "wildfeedback")
        else:
            records = load_wildfeedback_pairs(source)
    elif data_cfg.name == "drift_jsonl":
        records = load_drift_jsonl(_read(data_cfg))
    else:
        records = load_ultrafeedback(_read(data_cfg), data_cfg.binarize_seed)
    records.report["rejects"] = len(records.rejects)
    records.report["rejects_by_reason"] = dict(sorted(Counter(r.reason for r in records.rejects).items()))
    if tokenizer is not None and data_cfg.max_prompt_length:
        from drift.data.prompts import fit_prompts

        records = fit_prompts(records, tokenizer, max_prompt_tokens=data_cfg.max_prompt_length,
                              prompt_format=data_cfg.prompt_format, guidance=data_cfg.guidance)
    return records


def is_testbed(data_name: str) -> bool:
    """Whether data.name is a testbed (every conversation has a gold spec)."""
    return data_name in TESTBEDS


def data_file(data_cfg: DataConfig) -> str | None:
    """The file a shipped source reads: data.path, else the shipped one."""
    return data_cfg.path or (str(SHIPPED[data_cfg.name]) if data_cfg.name in SHIPPED else None)


def _read(cfg: DataConfig) -> SourceRows:
    config = cfg.hub_config if cfg.name == "wildfeedback" else None
    return read_rows(cfg.path, hub_name=cfg.hub_name, hub_config=config, split=cfg.split)


# ---------------------------------------------------------------- the paper code's jsonl

def load_drift_jsonl(source: SourceRows) -> Records:
    require_columns(source, ("prompt", "rejected", "user_preference"), "the paper code's dsat_data.jsonl",
                    "Each row needs prompt (list of {role, content}), rejected (one assistant message) and "
                    "user_preference ({content}).")
    records = Records(rejects=source.unreadable_rejects())
    seen: dict[tuple, str] = {}
    for location, row in source.rows:
        record_id = str(row.get("case_id") or row.get("id") or location)
        try:
            history = _messages(row.get("prompt"), "prompt", CHAT_ROLES)
            if history[-1]["role"] != "user":
                raise BadRow("bad_prompt", "prompt must end with the user turn the DSAT reply answered")
            dsat_reply = _single_reply(row.get("rejected"), "rejected")
            feedback = _preference(row.get("user_preference"))
            revision = _single_reply(row["chosen"], "chosen") if row.get("chosen") is not None else None
        except BadRow as e:
            records.rejects.append(Rejected(record_id, e.reason, e.detail, location))
            continue
        key = (freeze_messages(history), dsat_reply, feedback)
        if key in seen:
            records.rejects.append(Rejected(record_id, "duplicate_case",
                                            f"same prompt, rejected and user_preference as {seen[key]}", location))
            continue
        seen[key] = record_id
        records.dsat_cases.append(DsatCase(record_id, history, dsat_reply, feedback, revision))
        if revision is not None:
            records.seed_pairs.append(PreferencePair(record_id, history, revision, dsat_reply, "drift_jsonl"))
    records.report = {
        **source.report_head("drift_jsonl", "dsat_data.jsonl"),
        "dsat_cases": len(records.dsat_cases),
        "seed_pairs": len(records.seed_pairs),
    }
    return records


# ---------------------------------------------------------------- WildFeedback `wildfeedback` config

def load_wildfeedback_pairs(source: SourceRows) -> Records:
    hint = ("These look like the sat_dsat_annotation config: set data.hub_config=sat_dsat_annotation."
            if "UtterranceId" in source.columns else "")
    require_columns(source, ("conversations", "chosen", "rejected"), "WildFeedback's wildfeedback config", hint)
    records = Records(rejects=source.unreadable_rejects())
    pairs = []
    for location, row in source.rows:
        record_id = str(row.get("id") or location)
        try:
            prompt = _sharegpt(row.get("conversations"), "conversations")
            if prompt[-1]["role"] != "user":
                raise BadRow("bad_prompt", "conversations must end with the human turn the replies answer")
            chosen = _sharegpt_reply(row.get("chosen"), "chosen")
            rejected = _sharegpt_reply(row.get("rejected"), "rejected")
        except BadRow as e:
            records.rejects.append(Rejected(record_id, e.reason, e.detail, location))
            continue
        pairs.append((location, PreferencePair(record_id, prompt, chosen, rejected, "wildfeedback")))
    records.preference_pairs = _unique_pairs(pairs, records.rejects)
    records.report = {
        **source.report_head("wildfeedback", "wildfeedback"),
        "preference_pairs": len(records.preference_pairs),
        "note": "rows carry no user feedback turn: no DSAT cases or guided prompts; pairs only",
    }
    return records


# ---------------------------------------------------------------- UltraFeedback

def load_ultrafeedback(source: SourceRows, binarize_seed: int) -> Records:
    if {"prompt", "chosen", "rejected"} <= source.columns:
        schema = "ultrafeedback_binarized"
    elif {"instruction", "completions"} <= source.columns:
        schema = "openbmb_ultrafeedback"
    else:
        found = ", ".join(sorted(source.columns)) or "none"
        raise SchemaError(
            f"{source.label}: not an UltraFeedback file: needs prompt, chosen, rejected "
            f"(HuggingFaceH4/ultrafeedback_binarized) or instruction, completions (openbmb/UltraFeedback); "
            f"columns found: {found}")
    if schema == "ultrafeedback_binarized" and source.rows and isinstance(source.rows[0][1].get("prompt"), list):
        raise SchemaError(
            f"{source.label}: `prompt` is a list of messages, but ultrafeedback_binarized has the prompt "
            "as text (and chosen/rejected as full conversations); for the paper code's jsonl use data=drift_jsonl")
    records = Records(rejects=source.unreadable_rejects())
    pairs, completions_skipped = [], 0
    for location, row in source.rows:
        try:
            if schema == "ultrafeedback_binarized":
                pair = _binarized_pair(row, location)
            else:
                pair, skipped = _openbmb_pair(row, location, binarize_seed)
                completions_skipped += skipped
        except BadRow as e:
            records.rejects.append(Rejected(str(row.get("prompt_id") or location), e.reason, e.detail, location))
            continue
        pairs.append((location, pair))
    records.preference_pairs = _unique_pairs(pairs, records.rejects)
    records.report = {
        **source.report_head("ultrafeedback", schema),
        "preference_pairs": len(records.preference_pairs),
        "note": "no user feedback in UltraFeedback: preference pairs only",
    }
    if schema == "openbmb_ultrafeedback":
        records.report["completions_skipped"] = completions_skipped
    return records


def _binarized_pair(row: dict, location: str) -> PreferencePair:
    chosen = _messages(row.get("chosen"), "chosen", CHAT_ROLES)
    rejected = _messages(row.get("rejected"), "rejected", CHAT_ROLES)
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise BadRow("bad_reply", f"{name} must be the prompt's messages followed by one assistant message")
    if chosen[:-1] != rejected[:-1]:
        raise BadRow("prompt_mismatch", "chosen and rejected do not share the same prompt messages")
    prompt = chosen[:-1]
    if prompt[-1]["role"] != "user":
        raise BadRow("bad_prompt", "the prompt messages must end with a user turn")
    pair_id = str(row.get("prompt_id") or location)
    return PreferencePair(pair_id, prompt, chosen[-1]["content"], rejected[-1]["content"], "ultrafeedback")


def _openbmb_pair(row: dict, location: str, binarize_seed: int) -> tuple[PreferencePair, int]:
    instruction = row.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise BadRow("empty_content", "instruction is empty or not text")
    completions = row.get("completions")
    if not isinstance(completions, list):
        raise BadRow("missing_field", "completions is not a list")
    scored = []
    for completion in completions:
        response = completion.get("response") if isinstance(completion, dict) else None
        score = completion.get("overall_score") if isinstance(completion, dict) else None
        if (isinstance(response, str) and response.strip() and isinstance(score, (int, float))
                and not isinstance(score, bool)):
            scored.append((float(score), response))
    skipped = len(completions) - len(scored)
    if len(scored) < 2:
        raise BadRow("too_few_completions",
                     f"{len(scored)} completion(s) with a response and a numeric overall_score; need 2")
    # H4's prompt_id is the sha256 of the prompt text; the draw depends only on seed and prompt
    prompt_id = hashlib.sha256(instruction.encode("utf-8")).hexdigest()
    best = max(range(len(scored)), key=lambda i: scored[i][0])
    lower = [response for score, response in scored if score < scored[best][0]]
    if not lower:
        raise BadRow("no_preference", f"all {len(scored)} completions have the same overall_score")
    rejected = random.Random(f"{binarize_seed}:{prompt_id}").choice(lower)
    prompt = ({"role": "user", "content": instruction},)
    return PreferencePair(prompt_id, prompt, scored[best][1], rejected, "ultrafeedback"), skipped


# ---------------------------------------------------------------- row checks shared by the readers

def _message_items(value, field: str, role_key: str, content_key: str):
    """(where, item) for each item of a non-empty list of {role_key, content_key} dicts, checked one
    by one as the caller reads them (so the first bad item is the one named)."""
    shape = f"{{{role_key}, {content_key}}}"
    if value is None:
        raise BadRow("missing_field", f"{field} is missing")
    if not isinstance(value, list) or not value:
        raise BadRow("bad_message", f"{field} must be a non-empty list of {shape} messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or role_key not in message or content_key not in message:
            raise BadRow("bad_message", f"{field}[{i}] is not a {shape} message")
        yield f"{field}[{i}]", message


def _messages(value, field: str, roles: tuple[str, ...]) -> tuple[dict, ...]:
    return tuple(_message(message["role"], message["content"], where, roles)
                 for where, message in _message_items(value, field, "role", "content"))


def _message(role, content, where: str, roles) -> dict:
    if role not in roles:
        raise BadRow("unknown_role", f"{where} has role {role!r}; expected one of {', '.join(roles)}")
    if not isinstance(content, str):
        raise BadRow("non_string_content", f"{where} content is a {type(content).__name__}, not text")
    if not content.strip():
        raise BadRow("empty_content", f"{where} content is empty")
    return {"role": role, "content": content}


def _single_reply(value, field: str) -> str:
    messages = _messages(value, field, CHAT_ROLES)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise BadRow("bad_reply", f"{field} must be a list with exactly one assistant message")
    return messages[0]["content"]


def _preference(value) -> str:
    if value is None:
        raise BadRow("missing_field", "user_preference is missing")
    content = value.get("content") if isinstance(value, dict) else value
    if not isinstance(content, str):
        raise BadRow("non_string_content", "user_preference must be {content: text}")
    if not content.strip():
        raise BadRow("empty_content", "user_preference content is empty")
    return content


def _sharegpt(value, field: str) -> tuple[dict, ...]:
    out = []
    for where, message in _message_items(value, field, "from", "value"):
        role = SHAREGPT_ROLES.get(message["from"])
        if role is None:
            raise BadRow("unknown_role", f"{where} has from={message['from']!r}; expected human or gpt")
        out.append(_message(role, message["value"], where, CHAT_ROLES))
    return tuple(out)


def _sharegpt_reply(value, field: str) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    messages = _sharegpt([value] if isinstance(value, dict) else value, field)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise BadRow("bad_reply", f"{field} must be one {{from: gpt, value}} message")
    return messages[0]["content"]


def _unique_pairs(pairs: list[tuple[str, PreferencePair]], rejects: list[Rejected]) -> list[PreferencePair]:
    unique, seen = [], {}
    for location, pair in pairs:
        if pair.chosen == pair.rejected:
            rejects.append(Rejected(pair.pair_id, "identical_chosen_rejected",
                                    "chosen and rejected are the same text", location))
            continue
        key = (freeze_messages(pair.prompt), pair.chosen, pair.rejected)
        if key in seen:
            rejects.append(Rejected(pair.pair_id, "duplicate_pair", f"same prompt, chosen and rejected as {seen[key]}",
                                    location))
            continue
        seen[key] = pair.pair_id
        unique.append(pair)
    return unique
