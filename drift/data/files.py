"""Reading source rows (local jsonl / json / parquet, or the hub); writing them is drift.io's.

A row is a plain dict. Rows come with a locator ("dsat_data.jsonl:17") so that every error and
every reject names the record a user has to look at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from drift.data.records import Rejected
from drift.io import jsonl_lines


class SchemaError(ValueError):
    """The file or dataset is not in the schema the config says; raised before any row is used."""


@dataclass
class SourceRows:
    """Rows of one file or hub split, with the columns seen and the rows that were not JSON."""

    label: str  # the file name or "hub_name[config]/split", used in messages
    rows: list[tuple[str, dict]]  # (locator, row)
    columns: set[str]
    unreadable: list[tuple[str, str]]  # (locator, why): lines that are not a JSON object

    def report_head(self, source: str, schema: str) -> dict:
        """The first keys of every source's report: what was read, as what, and how many rows
        (the unreadable ones included: they are rejects, not missing)."""
        return {"source": source, "schema": schema, "input": self.label,
                "rows": len(self.rows) + len(self.unreadable)}

    def unreadable_rejects(self, reason: str = "unreadable_row") -> list[Rejected]:
        """The lines that are not a JSON object, quarantined like any bad row."""
        return [Rejected(location, reason, why, location) for location, why in self.unreadable]


def read_rows(path: str | None = None, *, hub_name: str | None = None, hub_config: str | None = None,
              split: str = "train") -> SourceRows:
    """Rows of a local file (wins when given) or of a hub dataset split."""
    if path:
        return _read_local(Path(path))
    if hub_name:
        return _read_hub(hub_name, hub_config, split)
    raise ValueError("give data.path (a local file) or data.hub_name (a hub dataset)")


def require_columns(source: SourceRows, required: Iterable[str], what: str, hint: str = "") -> None:
    """Fail at once, naming the missing columns, when the source is not in the expected schema."""
    missing = [c for c in required if c not in source.columns]
    if missing:
        found = ", ".join(sorted(source.columns)) or "none (no readable rows)"
        raise SchemaError(
            f"{source.label}: missing column(s) {', '.join(missing)} for {what}; columns found: {found}."
            + (f" {hint}" if hint else "")
        )


def _read_local(path: Path) -> SourceRows:
    label = path.name
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        rows = [(f"{label}:{i + 1}", row) for i, row in enumerate(table.to_pylist())]
        return SourceRows(label, rows, set(table.column_names), [])
    if suffix not in (".jsonl", ".json"):
        raise SchemaError(f"{path}: unsupported file type {suffix!r}; give a .jsonl, .json or .parquet file")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if suffix == ".json":
        # a .json file may hold one array of objects, a {column: [values]} table, or JSON lines
        # (the hub's WildFeedback files are read by `datasets` either way)
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, list):
            return _from_objects(label, data)
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            lengths = {len(v) for v in data.values()}
            if len(lengths) != 1:
                raise SchemaError(f"{path}: a column table whose columns have different lengths {sorted(lengths)}")
            keys = list(data)
            objects = [dict(zip(keys, values)) for values in zip(*data.values())]
            return _from_objects(label, objects)
        if isinstance(data, dict):
            return _from_objects(label, [data])
    return _from_lines(label, text)


def _from_objects(label: str, objects: list) -> SourceRows:
    rows, unreadable, columns = [], [], set()
    for i, obj in enumerate(objects):
        locator = f"{label}:{i + 1}"
        if isinstance(obj, dict):
            rows.append((locator, obj))
            columns.update(obj)
        else:
            unreadable.append((locator, f"item {i + 1} is a {type(obj).__name__}, not a JSON object"))
    return SourceRows(label, rows, columns, unreadable)


def _from_lines(label: str, text: str) -> SourceRows:
    rows, unreadable, columns = [], [], set()
    for line in jsonl_lines(text):
        locator = f"{label}:{line.number}"
        problem = line.problem()
        if problem is not None:
            unreadable.append((locator, f"line {line.number} is {problem}"))
            continue
        rows.append((locator, line.value))
        columns.update(line.value)
    return SourceRows(label, rows, columns, unreadable)


def _read_hub(hub_name: str, hub_config: str | None, split: str) -> SourceRows:
    import datasets

    label = f"{hub_name}[{hub_config or 'default'}]/{split}"
    try:
        dataset = datasets.load_dataset(hub_name, hub_config, split=split)
    except Exception as e:  # network, auth, unknown name or split: all end the same way
        raise RuntimeError(
            f"could not load {label} from the hub ({type(e).__name__}: {e}). Without network, download "
            "the file once and pass it as data.path=/path/to/file (.jsonl, .json or .parquet)"
        ) from e
    rows = [(f"{label}:{i + 1}", dict(row)) for i, row in enumerate(dataset)]
    return SourceRows(label, rows, set(dataset.column_names), [])
