"""Records -> files (jsonl in the paper code's message-list schema), and the report in the paper's terms."""

from __future__ import annotations

from pathlib import Path

from drift.data.records import DsatCase, PreferencePair, Records, Rejected, SatReply
from drift.io import write_json_atomic, write_jsonl_atomic, write_text_atomic

# the paper's WildFeedback numbers (its Section 4.1), printed beside ours for the annotation schema
PAPER_WILDFEEDBACK = {
    "conversations": 88920,
    "conversations_with_dsat": 10632,
    "pct_with_dsat": 11.96,
    "conversations_with_sat": 4478,
    "pct_with_sat": 5.04,
    "seed_pairs": 491,
    "pct_seed_pairs": 0.55,
}
OUTPUT_FILES = ("dsat_cases.jsonl", "sat_replies.jsonl", "seed_pairs.jsonl", "preference_pairs.jsonl",
                "rejects.jsonl", "report.json", "report.md")


def case_row(case: DsatCase) -> dict:
    """The paper code's dsat_data.jsonl row (+ chosen for a seed pair): data=drift_jsonl reads it back."""
    row = {
        "case_id": case.case_id,
        "prompt": list(case.history),
        "rejected": [{"role": "assistant", "content": case.dsat_reply}],
        "user_preference": {"content": case.feedback},
    }
    if case.sat_revision is not None:
        row["chosen"] = [{"role": "assistant", "content": case.sat_revision}]
    if case.feedback_state is not None:
        row["feedback_state"] = case.feedback_state
    return row


def pair_row(pair: PreferencePair) -> dict:
    """TRL's conversational DPO row, as the paper's seed-data files."""
    return {
        "pair_id": pair.pair_id,
        "prompt": list(pair.prompt),
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
        "source": pair.source,
    }


def sat_row(reply: SatReply) -> dict:
    return {"reply_id": reply.reply_id, "prompt": list(reply.history),
            "chosen": [{"role": "assistant", "content": reply.reply}]}


def reject_row(reject: Rejected) -> dict:
    return {"record_id": reject.record_id, "reason": reject.reason, "detail": reject.detail,
            "location": reject.location}


def write_records(records: Records, out_dir: str | Path) -> list[Path]:
    """Write every output file atomically (temp file + rename); returns their paths."""
    out_dir = Path(out_dir)
    write_jsonl_atomic(out_dir / "dsat_cases.jsonl", map(case_row, records.dsat_cases))
    write_jsonl_atomic(out_dir / "sat_replies.jsonl", map(sat_row, records.sat_replies))
    write_jsonl_atomic(out_dir / "seed_pairs.jsonl", map(pair_row, records.seed_pairs))
    write_jsonl_atomic(out_dir / "preference_pairs.jsonl", map(pair_row, records.preference_pairs))
    write_jsonl_atomic(out_dir / "rejects.jsonl", map(reject_row, records.rejects))
    write_json_atomic(out_dir / "report.json", records.report)
    write_text_atomic(out_dir / "report.md", format_report(records.report))
    return [out_dir / name for name in OUTPUT_FILES]


def format_report(report: dict) -> str:
    """Markdown: the counts in the paper's terms, then what was rejected and why."""
    lines = [f"# Data report: {report.get('source')} ({report.get('schema')}, {report.get('input')})", ""]
    if report.get("schema") == "sat_dsat_annotation":
        paper = PAPER_WILDFEEDBACK
        lines += [
            "| | this data | paper (WildFeedback) |",
            "|---|---:|---:|",
            f"| conversations | {report['conversations']:,} | {paper['conversations']:,} |",
            f"| with DSAT | {report['conversations_with_dsat']:,} ({report['pct_with_dsat']:.2f}%) "
            f"| {paper['conversations_with_dsat']:,} ({paper['pct_with_dsat']:.2f}%) |",
            f"| with SAT | {report['conversations_with_sat']:,} ({report['pct_with_sat']:.2f}%) "
            f"| {paper['conversations_with_sat']:,} ({paper['pct_with_sat']:.2f}%) |",
            f"| DSAT->SAT seed pairs | {report['seed_pairs']:,} ({report['pct_seed_pairs']:.2f}%) "
            f"| {paper['seed_pairs']:,} ({paper['pct_seed_pairs']:.2f}%) |",
            "",
            f"- rows: {report['rows']:,}; conversations read: {report['conversations_read']:,}, "
            f"rejected: {report['conversations_rejected']:,}, duplicates: {report['conversations_duplicate']:,} "
            f"(conversation key: {report['conversation_key']})",
            f"- DSAT cases: {report['dsat_cases']:,}; SAT replies: {report['sat_replies']:,}",
            f"- User turns labelled both SAT and DSAT: {report['both_label_turns']:,} "
            f"(counted as: {report['both_labels_policy']})",
            f"- SAT/DSAT labels on Agent rows (ignored): {report['labels_on_agent_rows_ignored']:,}",
            "- State of the DSAT feedback turns: "
            + (", ".join(f"{k} {v}" for k, v in report["dsat_feedback_states"].items()) or "none"),
        ]
    else:
        lines.append(f"- rows: {report['rows']:,}")
        for key in ("dsat_cases", "seed_pairs", "preference_pairs", "completions_skipped"):
            if key in report:
                lines.append(f"- {key.replace('_', ' ')}: {report[key]:,}")
        if report.get("note"):
            lines.append(f"- note: {report['note']}")
    if "prompts_truncated" in report:
        truncated = ", ".join(f"{k} {v}" for k, v in report["prompts_truncated"].items())
        lines.append(f"- prompts over {report['max_prompt_tokens']} tokens ({report['prompt_format']}), "
                     f"oldest turns dropped: {truncated}")
    lines += ["", f"## Rejected: {report.get('rejects', 0):,} (see rejects.jsonl)", ""]
    by_reason = report.get("rejects_by_reason", {})
    if by_reason:
        lines += ["| reason | count |", "|---|---:|"] + [f"| {k} | {v:,} |" for k, v in by_reason.items()]
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"
