"""launch/train.py with a bad config: one sentence and exit code 2, before anything is loaded and
before Hydra writes anything."""

import subprocess
import sys
from pathlib import Path

from drift.compose import CONF_DIR

CONF = str(CONF_DIR)


def test_entry_point_fails_before_loading_the_model(tmp_path):
    # the model path does not exist: if anything were loaded first, the error would be about it
    command = [
        sys.executable, "launch/train.py", "method.beta=0", "model.name_or_path=/nonexistent/model",
        f"output_dir={tmp_path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(CONF).parent, timeout=120)
    assert result.returncode == 2
    assert "config error: method.beta must be > 0, got 0" in result.stderr
    assert "nonexistent" not in result.stderr


def test_a_value_of_the_wrong_type_is_one_sentence_before_anything_loads(tmp_path):
    command = [sys.executable, "launch/train.py", "trainer.lr=abc", f"output_dir={tmp_path}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(CONF).parent, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "config error: trainer.lr must be a number, got 'abc'\n"
    assert not list(tmp_path.iterdir())  # not even the run folder


def test_a_config_that_fails_validation_leaves_no_run_folder(tmp_path):
    # trainer.optimizer=adam composes (a string) and only validate() rejects it: Hydra would have made
    # <output_dir>/<run_name>/.hydra/ and train.log already if validation waited for the task function
    command = [sys.executable, "launch/train.py", "trainer.optimizer=adam", f"output_dir={tmp_path}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(CONF).parent, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "config error: trainer.optimizer must be 'rmsprop', 'adamw' or 'sgd', got 'adam'\n"
    assert not list(tmp_path.iterdir())
