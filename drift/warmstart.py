"""One warm start for several runs: `method.warmstart_from=<run folder>`.

The paper trains one warm start and starts every method from it. A comparison of methods here does
the same: the later runs link the first run's finished warm start (``iter_0/``) into their own folder
instead of training it again. Whether they may is the stage contract's question (drift.stages):
drift.preflight compares the keys recorded in that run's ``iter_0/data``, ``iter_0/tokenize`` and
``iter_0/train`` with the keys this run would record (the model, the data, the trainer's settings,
beta, rpo_alpha, the warm-start epochs), before any work, and names the settings that differ.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from drift.io import DONE, atomic_dir


def link_warmstart(source_run: str | os.PathLike, run_dir: Path) -> None:
    """Link the finished warm start of ``source_run`` into ``run_dir/iter_0`` (files are hard links where
    the file system allows: checkpoints are only ever replaced, never written in place). Its keys
    were checked against this run's by drift.preflight. Nothing to do on a resumed run."""
    target = Path(run_dir) / "iter_0"
    if (target / "train" / DONE).exists():
        return
    source = Path(source_run).resolve() / "iter_0"
    with atomic_dir(target) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True, copy_function=_link_or_copy)


def _link_or_copy(source: str, target: str) -> str:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)
    return target
