"""The data config: which source to read, from where, and how to turn it into records.

The Hydra group ``conf/data/*.yaml`` holds one file per source; each sets only the fields where its
source differs from the defaults below (drift.config.Config types it with this dataclass).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Optional

from drift.checks import PromptFormat, check, check_choice, choices

DataSource = Literal["fixture", "wildfeedback", "ultrafeedback", "drift_jsonl", "testbed", "testbed_compact"]
# microsoft/WildFeedback configs we read; `user_preference` exists on the hub but its columns are
# not documented anywhere we could check, so we refuse it instead of guessing.
WildfeedbackConfig = Literal["sat_dsat_annotation", "wildfeedback"]
# what to do with a User turn labelled both SAT and DSAT ("Thanks, but that is wrong")
BothLabels = Literal["neither", "dsat", "sat", "reject"]
# `auto`: use the first of CONVERSATION_KEY_CANDIDATES present in the file, else split where
# UtterranceId restarts at 0; `utterance_restart`: always split that way; anything else: a column.
CONVERSATION_KEY_MODES = ("auto", "utterance_restart")
CONVERSATION_KEY_CANDIDATES = (
    "ConversationId",
    "conversation_id",
    "ConversationID",
    "conversation_hash",
    "ConvId",
    "conv_id",
)


@dataclass
class DataConfig:
    # source kind, one of DataSource
    name: str = "fixture"
    # local .jsonl / .json / .parquet file; wins over hub_name. fixture, testbed(_compact): None = the shipped file
    path: Optional[str] = None
    # PromptFormat: chat_template (the model's) or raw_text (the paper code's "User: ...\nAssistant: ..." text)
    prompt_format: str = "chat_template"
    # how the guided prompt puts the user's feedback (drift.data.prompts.GUIDANCE): feedback_only
    # (the default: the guidance check on the testbed measured it best for the embedded model),
    # restate, feedback_instruction, or system_turn (the paper code's instruction as a system turn)
    guidance: str = "feedback_only"
    # prompt budget in tokens; None leaves it to the caller (the trainer knows the model)
    max_prompt_length: Optional[int] = None
    # hub dataset read with `datasets.load_dataset(hub_name, hub_config, split=split)` when no path
    hub_name: Optional[str] = None
    # wildfeedback: sat_dsat_annotation | wildfeedback (also names the schema of a local file)
    hub_config: Optional[str] = None
    split: str = "train"
    # sat_dsat_annotation: the column holding the conversation id, or auto | utterance_restart
    conversation_key: str = "auto"
    # a User turn labelled both SAT and DSAT: one of BothLabels
    both_labels: str = "neither"
    # openbmb/UltraFeedback: rejected = a random lower-scored completion, drawn with this seed
    binarize_seed: int = 42

    def validate(self) -> None:
        from drift.data.prompts import GUIDANCE

        check_choice("data.name", self.name, DataSource)
        check_choice("data.prompt_format", self.prompt_format, PromptFormat)
        check(self.guidance in GUIDANCE, f"data.guidance must be one of {', '.join(GUIDANCE)}, got {self.guidance!r}")
        check(self.max_prompt_length is None or (
            not isinstance(self.max_prompt_length, bool) and isinstance(self.max_prompt_length, int)
            and self.max_prompt_length > 0
        ), f"data.max_prompt_length must be a positive integer or null, got {self.max_prompt_length!r}")
        check_choice("data.both_labels", self.both_labels, BothLabels)
        check(isinstance(self.conversation_key, str) and bool(self.conversation_key.strip()),
              "data.conversation_key must be a column name, 'auto' or 'utterance_restart', "
              f"got {self.conversation_key!r}")
        if self.name == "wildfeedback":
            check(self.hub_config != "user_preference",
                  "data.hub_config=user_preference is not supported: the columns of that WildFeedback "
                  "config are not documented; use sat_dsat_annotation (DSAT cases, SAT replies, seed "
                  "pairs) or wildfeedback (preference pairs)")
            check(self.hub_config in choices(WildfeedbackConfig),
                  f"data.hub_config must be one of {', '.join(choices(WildfeedbackConfig))} for "
                  f"data.name=wildfeedback, got {self.hub_config!r}")
        else:
            # fixture and drift_jsonl have one schema; ultrafeedback's two are told apart by columns
            check(self.hub_config in (None, "default"),
                  f"data.hub_config is only used by data.name=wildfeedback; set it to null for "
                  f"data.name={self.name}, got {self.hub_config!r}")
        check(not (self.name == "drift_jsonl" and not self.path),
              "data.path must point to a jsonl file in the paper code's schema (prompt, rejected, "
              "user_preference) for data.name=drift_jsonl, e.g. data.path=data/dsat_data.jsonl")
        check(not (self.name in ("wildfeedback", "ultrafeedback") and not (self.path or self.hub_name)),
              f"data.name={self.name} needs data.path (a local .jsonl/.json/.parquet file) or "
              "data.hub_name (a hub dataset, needs network)")
        check(not self.path or os.path.isfile(self.path),
              f"data.path={self.path!r} is not a file; give a .jsonl, .json or .parquet file")
