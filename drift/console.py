"""What a run prints, and the same text in its folder's log.

The console of a run is meant to be read: one line when a stage starts and one when it ends (what,
how many, how long), the tables at the end, and nothing from the libraries underneath (their
progress bars, wandb's banners and history). Three pieces:

- ``tee_to_log(path)``: everything written to this process's stdout and stderr -- and so by every
  child process, the sampler's included -- goes to the console as before and into ``path``. It works
  on the file descriptors, not on ``sys.stdout``, so nothing that prints can slip past it. A line that
  a progress bar rewrote with carriage returns lands in the log once, as it last read.
- ``quiet_libraries()``: no third-party progress bars (transformers' weight loading and shard writing,
  the GGUF dequantization, the hub), no advisory warnings; inherited by child processes.
- ``progress_wanted(setting)``: our own bars (training steps, sampling) only on a terminal; the
  answer is decided once, before the tee replaces the terminal with a pipe, and handed to child
  processes through the environment.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Iterator

# set by the process that owns the console: "1" when its output was a terminal before any tee
ON_TERMINAL = "DRIFT_ON_TERMINAL"
LOG_NAME = "train.log"
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
_END = b"\x00drift-tee-end\x00"


def on_terminal() -> bool:
    """Whether what this process prints reaches a person's terminal (tee or not)."""
    inherited = os.environ.get(ON_TERMINAL)
    if inherited is not None:
        return inherited == "1"
    return sys.stderr.isatty()


def progress_wanted(setting: bool) -> bool:
    """logging.progress_bar=true shows bars where a person watches, never in a log or a pipe."""
    return bool(setting) and on_terminal()


def quiet_libraries() -> None:
    """Silence the libraries' own progress bars and banners, here and in every child process.

    tqdm reads TQDM_DISABLE as the default of ``disable``: bars that do not ask for themselves (the
    GGUF dequantization's, transformers' loading and writing ones) stay off, ours pass ``disable``
    explicitly."""
    os.environ.setdefault(ON_TERMINAL, "1" if sys.stderr.isatty() else "0")
    for key, value in (("TQDM_DISABLE", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                       ("WANDB_SILENT", "true"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    if "transformers" in sys.modules:  # imported already: its switches were read at import
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


class LogLines:
    """Bytes as a terminal shows them -> the lines a log should keep: a line rewritten with carriage
    returns (a progress bar) is kept as it last read, terminal escape codes are dropped."""

    def __init__(self):
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        return b"".join(self._final(line) + b"\n" for line in lines)

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        return self._final(rest) + b"\n" if rest.strip(b"\r") else b""

    @staticmethod
    def _final(line: bytes) -> bytes:
        line = _ANSI.sub(b"", line).rstrip(b"\r")
        return line.rsplit(b"\r", 1)[-1]


@contextlib.contextmanager
def tee_to_log(path: str | os.PathLike) -> Iterator[Path]:
    """Within the block, fds 1 and 2 go to the console (the former stdout) and to ``path`` (appended)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(ON_TERMINAL, "1" if sys.stderr.isatty() else "0")
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    console = os.dup(1)
    saved_err = os.dup(2)
    log = open(path, "ab")
    lines = LogLines()

    def pump() -> None:
        while True:
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            done = _END in chunk
            chunk = chunk.split(_END, 1)[0]
            os.write(console, chunk)
            log.write(lines.feed(chunk))
            log.flush()
            if done:
                break
        log.write(lines.flush())
        log.flush()

    thread = threading.Thread(target=pump, name="drift-log-tee", daemon=True)
    thread.start()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    failure = ""
    try:
        yield path
    except BaseException as error:
        if not isinstance(error, SystemExit):  # sys.exit's message, if any, was printed inside already
            # Python prints the traceback on the console once the exception leaves; the log gets it here
            failure = traceback.format_exc()
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(console, 1)
        os.dup2(saved_err, 2)
        # a child that outlives us (wandb's service) may still hold the pipe open: end with a marker,
        # not with end-of-file
        os.write(write_end, _END)
        os.close(write_end)
        thread.join(timeout=10)
        log.write(failure.encode())
        os.close(read_end)
        os.close(console)
        os.close(saved_err)
        log.close()


class Clock:
    """The run's elapsed time, for the stage lines: ``[ 1:05] iter_1 train: ...``."""

    def __init__(self):
        self.started = time.monotonic()

    def stamp(self) -> str:
        minutes, seconds = divmod(int(time.monotonic() - self.started), 60)
        return f"[{minutes:>2}:{seconds:02d}]"


def seconds_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 100 else f"{int(seconds) // 60} min {int(seconds) % 60:02d} s"
