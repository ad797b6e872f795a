"""microsoft/WildFeedback `sat_dsat_annotation` rows -> conversations -> DSAT cases, SAT replies, seed pairs.

The published schema has one row per utterance, with the dataset's own spellings:
``UtterranceId`` (0, 1, 2, ... inside a conversation: User at even ids, Agent at odd ids), ``TurnId``,
``Role`` (User | Agent), ``Content``, ``Preceeding``, ``State`` (FEEDBACK | REFINEMENT | REVISION |
CONTINUATION) and the labels ``Satisfaction`` / ``Disatisfaction``. The labels on a User utterance
judge the Agent reply just before it.

Conversations are grouped by a conversation-id column when there is one (`data.conversation_key`),
otherwise a new conversation starts where UtterranceId restarts at 0 (rows must then be in file
order, and a repeated UtterranceId 0 row starts a new conversation); inside one they are ordered
by (TurnId, UtterranceId).

Extraction, for a User turn u_i (i >= 2) judging the Agent reply a_{i-1}:
  DSAT label -> DsatCase(history = turns before a_{i-1}, dsat_reply = a_{i-1}, feedback = u_i)
  SAT label  -> SatReply(history = turns before a_{i-1}, reply = a_{i-1})
  DSAT at u_i, then the revision a_{i+1}, then SAT at u_{i+2} -> a seed pair
      (prompt = history before a_{i-1}, chosen = a_{i+1}, rejected = a_{i-1})
A turn labelled both SAT and DSAT counts as neither unless `data.both_labels` says otherwise.

A conversation with any bad row is not used: each bad row goes to the rejects with its reason,
and the report counts rejected conversations. The only row dropped on its own is an exact duplicate
of another row of the same conversation (reason duplicate_row); the conversation is kept.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from drift.data.config import CONVERSATION_KEY_CANDIDATES, DataConfig
from drift.data.files import SchemaError, SourceRows, require_columns
from drift.data.records import DsatCase, PreferencePair, Records, Rejected, SatReply

COLUMNS = ("UtterranceId", "TurnId", "Role", "Content", "State", "Satisfaction", "Disatisfaction")
STATES = ("FEEDBACK", "REFINEMENT", "REVISION", "CONTINUATION")
ROLES = {"user": "user", "agent": "assistant"}


@dataclass(frozen=True)
class Turn:
    utterance_id: int
    turn_id: int
    role: str  # "user" | "assistant"
    content: str
    state: str | None
    sat: bool
    dsat: bool
    location: str

    def message(self) -> dict:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    turns: tuple[Turn, ...]


def load_annotation(source: SourceRows, cfg: DataConfig, source_name: str) -> Records:
    """All of it: schema check, grouping, per-row checks, extraction, duplicate removal, report."""
    hint = (
        "These look like WildFeedback's `wildfeedback` config: set data.hub_config=wildfeedback."
        if {"conversations", "chosen", "rejected"} <= source.columns else ""
    )
    require_columns(source, COLUMNS, "WildFeedback sat_dsat_annotation", hint)
    records = Records(rejects=source.unreadable_rejects())

    key = resolve_conversation_key(source, cfg.conversation_key)
    groups = group_rows(source, key, records.rejects)
    conversations, n_rejected = [], 0
    for conversation_id, rows in groups:
        conversation = parse_conversation(conversation_id, rows, records.rejects)
        if conversation is None:
            n_rejected += 1
        else:
            conversations.append(conversation)

    unique = drop_duplicate_conversations(conversations, records.rejects)
    stats = extract(unique, cfg.both_labels, source_name, records)
    n = len(unique)
    records.report = {
        **source.report_head(source_name, "sat_dsat_annotation"),
        "conversation_key": key,
        "conversations_read": len(groups),
        "conversations_rejected": n_rejected,
        "conversations_duplicate": len(conversations) - n,
        "conversations": n,
        "conversations_with_dsat": stats["with_dsat"],
        "conversations_with_sat": stats["with_sat"],
        "pct_with_dsat": _pct(stats["with_dsat"], n),
        "pct_with_sat": _pct(stats["with_sat"], n),
        "dsat_cases": len(records.dsat_cases),
        "sat_replies": len(records.sat_replies),
        "seed_pairs": len(records.seed_pairs),
        "pct_seed_pairs": _pct(len(records.seed_pairs), n),
        "both_label_turns": stats["both"],
        "both_labels_policy": cfg.both_labels,
        "labels_on_agent_rows_ignored": stats["agent_labels"],
        "dsat_feedback_states": dict(sorted(stats["dsat_states"].items())),
    }
    return records


def resolve_conversation_key(source: SourceRows, conversation_key: str) -> str:
    if conversation_key == "utterance_restart":
        return conversation_key
    if conversation_key == "auto":
        for candidate in CONVERSATION_KEY_CANDIDATES:
            if candidate in source.columns:
                return candidate
        return "utterance_restart"
    if conversation_key not in source.columns:
        raise SchemaError(
            f"{source.label}: data.conversation_key={conversation_key!r} is not a column; columns found: "
            f"{', '.join(sorted(source.columns))}. Name the conversation-id column, or set "
            "data.conversation_key=utterance_restart to start a new conversation where UtterranceId is 0"
        )
    return conversation_key


def group_rows(source: SourceRows, key: str, rejects: list[Rejected]) -> list[tuple[str, list[tuple[str, dict]]]]:
    """(conversation_id, rows in file order) for each conversation, in order of first appearance."""
    if key == "utterance_restart":
        groups: list[tuple[str, list]] = []
        for location, row in source.rows:
            if not groups or _as_int(row.get("UtterranceId")) == 0:
                groups.append((f"conv{len(groups) + 1}", []))
            groups[-1][1].append((location, row))
        return groups
    by_key: dict[str, list] = {}
    for location, row in source.rows:
        value = row.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            rejects.append(Rejected(location, "missing_conversation_key", f"{key} is empty", location))
            continue
        by_key.setdefault(str(value), []).append((location, row))
    return list(by_key.items())


def parse_conversation(conversation_id: str, rows: list[tuple[str, dict]],
                       rejects: list[Rejected]) -> Conversation | None:
    """Check every row, then the conversation's shape; None (with rejects) when it cannot be used."""
    turns, problems = [], []
    for location, row in rows:
        turn, reason, detail = parse_row(location, row)
        if turn is None:
            uid = row.get("UtterranceId")
            problems.append(Rejected(f"{conversation_id}/u{uid}", reason, detail, location))
        else:
            turns.append(turn)

    # exact repeats of a row are harmless: drop the copy, keep the conversation
    kept, seen = [], {}
    for turn in turns:
        first = seen.get(turn.utterance_id)
        if first is None:
            seen[turn.utterance_id] = turn
            kept.append(turn)
        elif _same_row(first, turn):
            rejects.append(Rejected(f"{conversation_id}/u{turn.utterance_id}", "duplicate_row",
                                    f"repeats the row at {first.location}", turn.location))
        else:
            problems.append(Rejected(
                f"{conversation_id}/u{turn.utterance_id}", "duplicate_utterance_id",
                f"UtterranceId {turn.utterance_id} also at {first.location} with different content or labels",
                turn.location))
    if problems:
        _reject_conversation(conversation_id, len(rows), problems, rejects)
        return None

    kept.sort(key=lambda t: (t.turn_id, t.utterance_id))
    ids = [t.utterance_id for t in kept]
    if ids != list(range(len(kept))):
        missing = sorted(set(range(max(ids) + 1)) - set(ids))
        detail = (f"UtterranceIds {ids} are not 0..{len(kept) - 1} in TurnId order"
                  + (f"; missing {missing}" if missing else ""))
        problems.append(Rejected(conversation_id, "missing_turn", detail, kept[0].location))
    else:
        for turn in kept:
            expected = "user" if turn.utterance_id % 2 == 0 else "assistant"
            if turn.role != expected:
                problems.append(Rejected(
                    f"{conversation_id}/u{turn.utterance_id}", "unexpected_role_order",
                    f"UtterranceId {turn.utterance_id} should be {'User' if expected == 'user' else 'Agent'} "
                    "(User at even ids, Agent at odd ids)", turn.location))
                break
    first = kept[0]
    if not problems and first.role == "user" and (first.sat or first.dsat):
        problems.append(Rejected(
            f"{conversation_id}/u{first.utterance_id}", "label_without_agent_reply",
            "the first User turn carries a SAT/DSAT label but there is no Agent reply before it to judge",
            first.location))
    if problems:
        _reject_conversation(conversation_id, len(rows), problems, rejects)
        return None
    return Conversation(conversation_id, tuple(kept))


def parse_row(location: str, row: dict) -> tuple[Turn | None, str, str]:
    """(turn, "", "") for a good row, else (None, reason, detail)."""
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        return None, "missing_field", f"row has no {', '.join(missing)}"
    utterance_id, turn_id = _as_int(row["UtterranceId"]), _as_int(row["TurnId"])
    if utterance_id is None or utterance_id < 0:
        return None, "bad_utterance_id", f"UtterranceId {row['UtterranceId']!r} is not a non-negative integer"
    if turn_id is None:
        return None, "bad_turn_id", f"TurnId {row['TurnId']!r} is not an integer"
    role = row["Role"]
    if not isinstance(role, str) or role.strip().lower() not in ROLES:
        return None, "unknown_role", f"Role {role!r} is not User or Agent"
    content = row["Content"]
    if not isinstance(content, str):
        return None, "non_string_content", f"Content is a {type(content).__name__}, not text"
    if not content.strip():
        return None, "empty_content", "Content is empty"
    state = row["State"]
    if state is None or (isinstance(state, str) and not state.strip()):
        state = None
    elif not isinstance(state, str) or state.strip().upper() not in STATES:
        return None, "unknown_state", f"State {state!r} is not one of {', '.join(STATES)}"
    else:
        state = state.strip().upper()
    sat, dsat = _as_bool(row["Satisfaction"]), _as_bool(row["Disatisfaction"])
    if sat is None or dsat is None:
        return None, "invalid_label", (
            f"Satisfaction={row['Satisfaction']!r}, Disatisfaction={row['Disatisfaction']!r}: labels must be booleans")
    return Turn(utterance_id, turn_id, ROLES[role.strip().lower()], content, state, sat, dsat, location), "", ""


def drop_duplicate_conversations(conversations: list[Conversation], rejects: list[Rejected]) -> list[Conversation]:
    unique, first_id = [], {}
    for conversation in conversations:
        key = tuple((t.role, t.content) for t in conversation.turns)
        if key in first_id:
            rejects.append(Rejected(conversation.conversation_id, "duplicate_conversation",
                                    f"same turns as {first_id[key]}", conversation.turns[0].location))
        else:
            first_id[key] = conversation.conversation_id
            unique.append(conversation)
    return unique


def extract(conversations: list[Conversation], both_labels: str, source_name: str, records: Records) -> dict:
    """Append the DSAT cases, SAT replies and seed pairs of valid conversations to `records`."""
    stats = {"with_dsat": 0, "with_sat": 0, "both": 0, "agent_labels": 0, "dsat_states": Counter()}
    seen_cases: dict[tuple, str] = {}
    seen_sat: dict[tuple, str] = {}
    for conversation in conversations:
        turns = conversation.turns
        labels = []  # effective (sat, dsat) of each turn
        for turn in turns:
            sat, dsat = turn.sat, turn.dsat
            if turn.role == "assistant":
                stats["agent_labels"] += int(sat or dsat)
                sat = dsat = False
            elif sat and dsat:
                stats["both"] += 1
                if both_labels == "reject":
                    records.rejects.append(Rejected(
                        f"{conversation.conversation_id}/u{turn.utterance_id}", "both_labels",
                        "User turn labelled both SAT and DSAT (data.both_labels=reject); its label is not used",
                        turn.location))
                sat, dsat = both_labels == "sat", both_labels == "dsat"
            labels.append((sat, dsat))
        stats["with_dsat"] += int(any(d for _, d in labels))
        stats["with_sat"] += int(any(s for s, _ in labels))

        for i, turn in enumerate(turns):
            sat, dsat = labels[i]
            if not (sat or dsat):
                continue
            # parse_conversation guarantees i >= 2 here: turns alternate from a User turn at 0
            history = tuple(t.message() for t in turns[: i - 1])
            judged = turns[i - 1].content
            record_id = f"{conversation.conversation_id}/t{turn.turn_id}"
            if sat:
                key = (freeze_messages(history), judged)
                if key in seen_sat:
                    records.rejects.append(Rejected(record_id, "duplicate_sat_reply",
                                                    f"same history and reply as {seen_sat[key]}", turn.location))
                else:
                    seen_sat[key] = record_id
                    records.sat_replies.append(SatReply(record_id, history, judged))
            if dsat:
                key = (freeze_messages(history), judged, turn.content)
                if key in seen_cases:
                    records.rejects.append(Rejected(record_id, "duplicate_case",
                                                    f"same history, DSAT reply and feedback as {seen_cases[key]}",
                                                    turn.location))
                    continue
                seen_cases[key] = record_id
                revision = None
                if i + 2 < len(turns) and labels[i + 2][0]:
                    revision = turns[i + 1].content
                    records.seed_pairs.append(PreferencePair(record_id, history, revision, judged, source_name))
                records.dsat_cases.append(DsatCase(record_id, history, judged, turn.content, revision, turn.state))
                stats["dsat_states"][turn.state or "none"] += 1
    return stats


def _reject_conversation(conversation_id: str, n_rows: int, problems: list[Rejected], rejects: list[Rejected]) -> None:
    for problem in problems:
        problem.detail += f"; conversation {conversation_id} ({n_rows} rows) not used"
        rejects.append(problem)


def _same_row(a: Turn, b: Turn) -> bool:
    return (a.turn_id, a.role, a.content, a.state, a.sat, a.dsat) == (b.turn_id, b.role, b.content, b.state, b.sat, b.dsat)


def freeze_messages(messages) -> tuple:
    """A hashable copy of a message list, for spotting duplicates."""
    return tuple((m["role"], m["content"]) for m in messages)


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _as_bool(value) -> bool | None:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0", ""):
        return value.strip().lower() in ("true", "yes", "1")
    return None


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0
