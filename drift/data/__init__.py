"""Data: public sources -> DSAT cases, SAT replies, seed pairs, preference pairs; prompts; rejects.

    records = load_records(DataConfig(name="fixture"))
    ids, truncated = render_prompt_ids(guided_prompt(records.dsat_cases[0]), tokenizer,
                                       max_prompt_tokens=1024, keep_last=GUIDED_KEEP_LAST)
"""

from drift.data.config import DataConfig
from drift.data.files import SchemaError
from drift.data.prompts import (
    GUIDED_KEEP_LAST,
    IMPROVE_INSTRUCTION,
    ORIGINAL_KEEP_LAST,
    PromptTooLong,
    fit_prompts,
    guided_keep_last,
    guided_prompt,
    original_prompt,
    render_prompt_ids,
    render_prompt_text,
)
from drift.data.records import DsatCase, PreferencePair, Records, Rejected, SatReply
from drift.data.report import format_report, write_records
from drift.data.sources import FIXTURE_DIR, load_records

__all__ = [
    "DataConfig",
    "DsatCase",
    "FIXTURE_DIR",
    "GUIDED_KEEP_LAST",
    "IMPROVE_INSTRUCTION",
    "ORIGINAL_KEEP_LAST",
    "PreferencePair",
    "PromptTooLong",
    "Records",
    "Rejected",
    "SatReply",
    "SchemaError",
    "fit_prompts",
    "guided_keep_last",
    "format_report",
    "guided_prompt",
    "load_records",
    "original_prompt",
    "render_prompt_ids",
    "render_prompt_text",
    "write_records",
]
