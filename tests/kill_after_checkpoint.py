"""Run a script that trains, SIGKILLing the process right after one stage writes one step's checkpoint.

usage: kill_after_checkpoint.py STAGE:STEP SCRIPT [ARGS...]
       torchrun --nproc-per-node 2 tests/kill_after_checkpoint.py iter_2:3 launch/train.py [OVERRIDES...]

The resume tests die the way a preempted job does: with the checkpoint on disk and nothing after
it. The hook wraps the trainer's checkpoint phase from outside, so the training loop carries no
fault injection of its own; under torchrun every rank runs this wrapper and kills itself.
"""

import os
import runpy
import signal
import sys

from drift.train import StageTrainer


def kill_after_checkpoint(stage_name: str, step: int) -> None:
    write_checkpoint = StageTrainer.checkpoint

    def checkpoint_then_die(trainer: StageTrainer) -> None:
        write_checkpoint(trainer)
        if trainer.stage.name == stage_name and trainer.state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)

    StageTrainer.checkpoint = checkpoint_then_die


if __name__ == "__main__":
    where, script, *arguments = sys.argv[1:]
    stage_name, _, step = where.rpartition(":")
    kill_after_checkpoint(stage_name, int(step))
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")
