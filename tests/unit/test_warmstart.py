"""method.warmstart_from: a run links an earlier run's finished warm start instead of training one,
only when its recorded stage keys are the ones this run would record; the weights it starts from are
the earlier run's, byte for byte."""

import json
import os
import shutil

import pytest
from safetensors.torch import load_file

from drift.compose import compose
from drift.config import Config, ConfigError
from drift.pipeline import run
from drift.plan import stage_plan
from drift.preflight import check_run

TINY = [
    "model=tiny", "method.warmstart_epochs=1", "method.iterations=0", "trainer.lr=1e-3",
    "trainer.per_device_batch_size=8", "trainer.device=cpu", "logging.wandb_mode=disabled",
    "logging.progress_bar=false",
]


def _config(tmp_path, *overrides: str) -> Config:
    return compose("config", [*TINY, f"output_dir={tmp_path}", *overrides], Config)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run that trained its own warm start (DRIFT, no iteration), and its config."""
    root = tmp_path_factory.mktemp("warmstart")
    config = _config(root, "method=drift")
    run(config, root / "first")
    return root, config


def _weights(run_dir):
    return load_file(run_dir / "iter_0" / "train" / "model" / "model.safetensors")


def test_a_second_method_starts_from_the_first_runs_warm_start_without_training_it(trained):
    root, _ = trained
    first = root / "first"
    summary = run(_config(root, "method=spin", f"method.warmstart_from={first}"), root / "second")
    second = root / "second"
    expected, actual = _weights(first), _weights(second)
    assert expected.keys() == actual.keys()
    assert all(expected[name].equal(actual[name]) for name in expected)
    # not retrained: the step log (with its wall-clock seconds) is the first run's own
    metrics = "iter_0/train/metrics.jsonl"
    assert (second / metrics).read_text() == (first / metrics).read_text()
    assert summary["stages"]["warmstart"]["from"] == str(first.resolve())
    assert summary["stages"]["warmstart"]["steps"] == (len((first / metrics).read_text().splitlines()))


def test_a_setting_that_shapes_the_warm_start_differs_the_error_names_it(trained):
    root, _ = trained
    config = _config(root, "method=drift", f"method.warmstart_from={root / 'first'}", "trainer.lr=2e-3", "method.rpo_alpha=0.5")
    with pytest.raises(ConfigError, match=r"method.rpo_alpha: 0.001 there, 0.5 here; trainer.lr: 0.001 there, 0.002 here"):
        run(config, root / "other_lr")
    assert not (root / "other_lr" / "iter_0" / "train").exists()


def test_settings_that_do_not_shape_it_may_differ(trained):
    root, config = trained
    ours = _config(root, "method=iterdpo", "data.guidance=restate", "method.iterations=2", "sampler.max_new_tokens=99",
                   "trainer.save_every_steps=3", "logging.progress_bar=true")
    records, sampler = check_run(config, root / "first").records, check_run(config, root / "first").sampler

    def warm_keys(cfg):
        return [stage.make_key(["x"] * len(stage.upstream)) for stage in stage_plan(cfg, records, sampler)
                if stage.name.startswith("iter_0/")]

    assert warm_keys(ours) == warm_keys(config)


def test_a_run_finished_before_keys_were_recorded_is_not_linked(trained, tmp_path):
    root, _ = trained
    older = tmp_path / "older"
    shutil.copytree(root / "first", older)
    done = older / "iter_0" / "train" / "done"
    marker = json.loads(done.read_text())
    del marker["key"]
    done.write_text(json.dumps(marker))
    with pytest.raises(ConfigError, match="finished by an older drift that recorded no settings"):
        run(_config(tmp_path, "method=drift", f"method.warmstart_from={older}"), tmp_path / "reuses")
    assert not (tmp_path / "reuses").exists()


def test_a_run_without_a_finished_warm_start_cannot_be_reused(tmp_path):
    unfinished = tmp_path / "unfinished" / "iter_0" / "train"
    unfinished.mkdir(parents=True)
    with pytest.raises(ConfigError, match="has no finished warm start"):
        run(_config(tmp_path, f"method.warmstart_from={tmp_path / 'unfinished'}"), tmp_path / "run")


def test_warmstart_from_without_a_warm_start_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="needs method.warmstart_epochs > 0"):
        _config(tmp_path, "method.warmstart_from=somewhere", "method.warmstart_epochs=0")


def test_the_linked_files_share_storage_where_the_file_system_allows(trained):
    root, _ = trained
    second = root / "second"
    if not second.exists():
        run(_config(root, "method=spin", f"method.warmstart_from={root / 'first'}"), second)
    model = "iter_0/train/model/model.safetensors"
    assert os.stat(second / model).st_ino == os.stat(root / "first" / model).st_ino


def test_a_changed_setting_is_refused_then_retrained_from_the_stage_it_shapes(trained, tmp_path):
    """The same folder run again with another learning rate: refused, naming it; with resume=retrain the
    warm start is trained again (the data and tokenize stages, which the learning rate does not shape,
    are kept) and its done marker says the new rate; back to the first rate, the weights are the first
    run's byte for byte: the retrained folder holds what its config says."""
    root, _ = trained
    folder = tmp_path / "run"
    shutil.copytree(root / "first", folder)
    model = "iter_0/train/model/model.safetensors"
    kept = {stage: (folder / stage / "done").read_bytes() for stage in ("iter_0/data", "iter_0/tokenize")}
    with pytest.raises(ConfigError, match=r"stage iter_0/train .*\(trainer.lr: 0.001 there, 0.002 here\).*resume=retrain"):
        run(_config(tmp_path, "method=drift", "trainer.lr=2e-3"), folder)
    assert (folder / model).read_bytes() == (root / "first" / model).read_bytes()

    run(_config(tmp_path, "method=drift", "trainer.lr=2e-3", "resume=retrain"), folder)
    assert json.loads((folder / "iter_0/train/done").read_text())["key"]["settings"]["trainer.lr"] == 2e-3
    assert (folder / model).read_bytes() != (root / "first" / model).read_bytes()
    assert {stage: (folder / stage / "done").read_bytes() for stage in kept} == kept

    run(_config(tmp_path, "method=drift", "resume=retrain"), folder)
    assert (folder / model).read_bytes() == (root / "first" / model).read_bytes()
