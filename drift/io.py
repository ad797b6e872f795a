"""Every file drift writes goes through here: text, JSON and JSONL, written atomically.

A writer fills a temp file in the target's own folder and then renames it over the target with
``os.replace``, which is atomic on one filesystem: a reader (or a resumed run) sees the old file or
the new one, never half of one. A write that fails part way removes its temp file and leaves the
old target as it was.

A stage folder is finished when its ``done`` marker exists; the marker is written last, through the
same temp file + rename, and holds the stage's summary as JSON.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Iterable

DONE = "done"


class JsonlError(ValueError):
    """A line of a JSONL file is not valid JSON; the message names the file and the line."""


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temp file beside it and a rename."""
    _write_atomic(Path(path), lambda stream: stream.write(text))


def write_json_atomic(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """`obj` as JSON with a trailing newline; `indent=None` writes it on one line."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    write_text_atomic(path, text)


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """One JSON object per line; `rows` may be a generator (it is consumed while writing)."""

    def write_rows(stream) -> None:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")

    _write_atomic(Path(path), write_rows)


def mark_done(folder: str | os.PathLike, summary: dict) -> None:
    """Mark a stage folder finished; call it after every other output of the stage is written."""
    write_json_atomic(Path(folder) / DONE, summary, indent=None)


def read_done(folder: str | os.PathLike) -> dict | None:
    """The summary a finished stage recorded, or None when the folder has no ``done`` marker."""
    path = Path(folder) / DONE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL file, skipping blank lines; a line that is not JSON raises JsonlError."""
    path = Path(path)
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise JsonlError(
                f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno}); "
                "the file was probably written by hand or truncated; fix or delete that line"
            ) from e
    return rows


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # in the target's folder, so os.replace stays on one filesystem (where it is atomic); the
    # random part keeps two writers of the same file apart. Not tempfile.mkstemp: its files are
    # mode 0600, and outputs keep the umask's permissions as plain open() gives them.
    staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(staging, "x", encoding="utf-8") as stream:
            write(stream)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
