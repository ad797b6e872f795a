"""drift.console: the run's log holds what its console showed (a child process's lines included),
progress-bar rewrites kept once as they last read, and our bars only on a terminal."""

import os
import pty
import subprocess
import sys
import textwrap
from pathlib import Path

from drift.console import LogLines, progress_wanted

ROOT = Path(__file__).resolve().parents[2]


def test_log_lines_keep_what_a_terminal_last_showed():
    lines = LogLines()
    assert lines.feed(b"step 1/3\rstep 2/") == b""
    assert lines.feed(b"3\rstep 3/3\r\nplain line\n\x1b[Abar\x1b[K 50%\rbar 100%\n") == b"step 3/3\nplain line\nbar 100%\n"
    assert lines.feed(b"no newline at the end") == b""
    assert lines.flush() == b"no newline at the end\n" and lines.flush() == b""


CHILD = textwrap.dedent("""
    import os, subprocess, sys
    from drift.console import progress_wanted, tee_to_log
    with tee_to_log(sys.argv[1]):
        print("from print")
        print("to stderr", file=sys.stderr)
        os.write(1, b"straight to fd 1\\n")
        subprocess.run([sys.executable, "-c", "print('from a child process')"], check=True)
        sys.stderr.write("bar 1/2\\rbar 2/2\\n")
        print("bars wanted:", progress_wanted(True))
    print("after the block: console only")
""")


def _run_child(tmp_path: Path, **io) -> Path:
    log = tmp_path / "train.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DRIFT_ON_TERMINAL", None)
    subprocess.run([sys.executable, "-c", CHILD, str(log)], env=env, check=True, timeout=60, **io)
    return log


def test_the_log_holds_what_the_console_showed_child_processes_included(tmp_path):
    log = _run_child(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text = log.read_text()
    assert text == ("from print\nto stderr\nstraight to fd 1\nfrom a child process\nbar 2/2\nbars wanted: False\n")


def test_bars_are_wanted_on_a_terminal_and_logged_as_they_last_read(tmp_path):
    leader, follower = pty.openpty()
    try:
        log = _run_child(tmp_path, stdout=follower, stderr=follower)
    finally:
        os.close(follower)
        os.close(leader)
    text = log.read_text()
    assert "bars wanted: True" in text and "bar 2/2\n" in text and "bar 1/2" not in text
    assert "after the block" not in text
    assert progress_wanted(False) is False
