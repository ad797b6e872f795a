"""Every file drift writes goes through here: text, JSON, JSONL and binary files, written atomically,
and the one JSONL reader.

A writer fills a temp file in the target's own folder and then renames it over the target with
``os.replace``, which is atomic on one filesystem: a reader (or a resumed run) sees the old file or
the new one, never half of one. A write that fails part way removes its temp file and leaves the
old target as it was. A library that writes the file itself (matplotlib's ``savefig``) writes to
the path ``atomic_target`` gives it.

A folder (a model's HF folder, a checkpoint) is built the same way: ``atomic_dir`` gives a staging
folder beside the target and ``replace_dir`` swaps it in, keeping the previous copy under
``<target>.old`` for the instant between the two renames, so a kill at any moment leaves one
complete copy (the target, or ``<target>.old`` when the kill fell between the renames).

A stage folder is finished when its ``done`` marker exists; the marker is written last, through the
same temp file + rename, and holds the stage's summary as JSON.

The one exception is a log that grows a row per training step (metrics.jsonl): rewriting it whole
every step would cost O(steps²), so ``append_jsonl`` adds each row with one write that ends in its
newline. A process killed during that write leaves at most a torn last line without a newline,
which ``read_jsonl(path, torn_tail_ok=True)`` drops.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

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
            stream.write(jsonl_text([row]))

    _write_atomic(Path(path), write_rows)


def jsonl_text(rows: Iterable[dict]) -> str:
    """The text write_jsonl_atomic writes for `rows` (what a file's hash is taken over)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_target(path) as staging:
        staging.write_bytes(data)


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside `path` for a writer that opens the file itself; renamed over `path` when
    the block ends without an error, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_path(path)
    try:
        yield staging
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A new, empty staging folder beside `target` to fill; swapped in for `target` (replace_dir)
    when the block ends without an error, removed when it raises (the old target is untouched)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_path(target)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, target)


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Swap the folder `new` in for `target` (same file system) so that a kill at any moment leaves
    one complete copy: `target`, or `<target>.old` when it fell between the two renames (a folder
    cannot be renamed over a non-empty one, so the swap takes two)."""
    new, target = Path(new), Path(target)
    old = target.with_name(target.name + ".old")
    if old.exists():  # left by a swap killed between or after its renames
        if not target.exists():  # killed between them: `old` is the one complete copy, put it back
            os.replace(old, target)
        else:
            shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        shutil.rmtree(old)


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Add rows to a per-step log in one write, each ending in its newline (see the module's note)."""
    text = "".join(json.dumps(row) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()


def mark_done(folder: str | os.PathLike, summary: dict) -> None:
    """Mark a stage folder finished; call it after every other output of the stage is written."""
    write_json_atomic(Path(folder) / DONE, summary, indent=None)


def is_done(folder: str | os.PathLike) -> bool:
    return (Path(folder) / DONE).is_file()


def read_done(folder: str | os.PathLike) -> dict | None:
    """The summary a finished stage recorded, or None when the folder has no ``done`` marker."""
    path = Path(folder) / DONE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class JsonlLine:
    """One non-blank line of a JSONL text: its value, or why it has none."""

    number: int  # 1-based, as an editor shows it
    value: Any = None
    error: json.JSONDecodeError | None = None  # when the line does not parse
    # the text's last line, with no newline after it: all a writer killed mid-append can leave
    torn: bool = False

    def problem(self) -> str | None:
        """Why the line is not a JSON object, or None when it is one."""
        if self.error is not None:
            return f"not valid JSON ({self.error.msg} at column {self.error.colno})"
        return None if isinstance(self.value, dict) else f"a JSON {type(self.value).__name__}, not an object"


def jsonl_lines(text: str) -> Iterator[JsonlLine]:
    """Every non-blank line of a JSONL text, parsed; what a bad line means is the caller's to say
    (an error naming it, a reject, or a torn tail to drop).

    Lines end at "\n" only: str.splitlines would also cut at U+2028 and the other Unicode line
    breaks, which JSON strings may hold unescaped (ensure_ascii=False writes them so)."""
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        # after the last newline: the text does not end with one, so this line may be cut short
        torn = number == len(lines)
        try:
            yield JsonlLine(number, json.loads(line), torn=torn)
        except json.JSONDecodeError as e:
            yield JsonlLine(number, error=e, torn=torn)


def read_jsonl(path: str | os.PathLike, *, torn_tail_ok: bool = False) -> list[dict]:
    """The rows of a JSONL file, skipping blank lines; a line that is not JSON raises JsonlError.

    ``torn_tail_ok``: for a log written by ``append_jsonl`` (metrics.jsonl, pair_metrics.jsonl) that
    may still be growing or whose writer was killed, drop a last line that does not parse and has no
    newline after it; any other bad line is still damage and raises."""
    path = Path(path)
    rows = []
    for line in jsonl_lines(path.read_text(encoding="utf-8")):
        if line.error is None:
            rows.append(line.value)
        elif not (torn_tail_ok and line.torn):
            raise JsonlError(
                f"{path}:{line.number}: {line.problem()}; "
                "the file was probably written by hand or truncated; fix or delete that line"
            ) from line.error
    return rows


def _write_atomic(path: Path, write) -> None:
    with atomic_target(path) as staging, open(staging, "x", encoding="utf-8") as stream:
        write(stream)


def _staging_path(path: Path) -> Path:
    # in the target's folder, so os.replace stays on one filesystem (where it is atomic); the
    # random part keeps two writers of the same file apart. Not tempfile.mkstemp: its files are
    # mode 0600, and outputs keep the umask's permissions as plain open() gives them.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
