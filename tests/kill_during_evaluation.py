"""Run a script that trains and evaluates, SIGKILLing the process inside the held-out evaluation: after
the first checkpoint's replies are sampled (and cached), before they are scored.

usage: kill_during_evaluation.py SCRIPT [ARGS...]

Like kill_after_checkpoint.py, the hook wraps a library function from outside, so the evaluation
carries no fault injection of its own.
"""

import os
import runpy
import signal
import sys

import drift.eval.heldout as heldout


def die_before_scoring(samples, rows):
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    script, *arguments = sys.argv[1:]
    heldout.score_rows = die_before_scoring
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")
