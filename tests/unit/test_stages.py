"""The stage contract's pieces: the one fingerprint, a key's differences as a sentence, the methods'
registry as the only reader of a method's name, ranks kept out of the data helpers, and the
backend checks that run before any work."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from drift.backends import check_attention, check_logprob_impl, check_sampler, cpu_has_bf16, resolve_sampler
from drift.checks import ConfigError, MethodName, choices
from drift.config import SamplerConfig
from drift.fingerprint import FileContents, fingerprint
from drift.methods import METHODS
from drift.stages import StageKey, differences, mismatch_sentence

DRIFT = Path(__file__).resolve().parents[2] / "drift"


def test_equal_data_has_one_fingerprint_and_any_change_another():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": (1, 2), "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 1.5}) != fingerprint({"a": "1"})
    assert fingerprint(["ab", "c"]) != fingerprint(["a", "bc"])  # lengths are part of the encoding
    ids = np.arange(5, dtype=np.int64)
    assert fingerprint(ids) == fingerprint(np.array([0, 1, 2, 3, 4])) and fingerprint(ids) != fingerprint(ids.astype(np.int32))
    weights = torch.linspace(0, 1, 6).reshape(2, 3)
    assert fingerprint(weights) == fingerprint(weights.clone()) != fingerprint(weights.reshape(3, 2))
    assert fingerprint(weights) != fingerprint(weights.to(torch.bfloat16))
    assert len(fingerprint("x")) == 32 and len(fingerprint("x", length=64)) == 64


def test_a_file_is_taken_by_its_contents_not_its_path(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"\x00\x01")
    (tmp_path / "b" / "w.bin").write_bytes(b"\x00\x01")
    assert fingerprint(FileContents(tmp_path / "a" / "w.bin")) == fingerprint(FileContents(tmp_path / "b" / "w.bin"))
    (tmp_path / "b" / "w.bin").write_bytes(b"\x00\x02")
    assert fingerprint(FileContents(tmp_path / "a" / "w.bin")) != fingerprint(FileContents(tmp_path / "b" / "w.bin"))


def test_a_mismatch_names_the_stage_the_keys_and_both_ways_on():
    recorded = StageKey({"start": "aa"}, {"method.beta": 0.1, "trainer.lr": 1e-3, "trainer.seed": 42})
    wanted = StageKey({"start": "bb"}, {"method.beta": 0.5, "trainer.lr": 1e-4, "trainer.seed": 42})
    lines = differences(recorded, wanted)
    assert lines == ["method.beta: 0.1 there, 0.5 here", "trainer.lr: 0.001 there, 0.0001 here", "its input start differs"]
    sentence = mismatch_sentence("iter_0/train", lines)
    assert sentence.startswith("stage iter_0/train ") and "run_name" in sentence and "resume=retrain" in sentence
    assert recorded.fingerprint != wanted.fingerprint and StageKey.from_record(recorded.record()) == recorded


def test_every_method_is_in_the_registry_and_nothing_else_compares_method_names():
    assert set(METHODS) == set(choices(MethodName))
    compare = re.compile(r"""method(\.name)?\s*(==|!=|in)\s*[("']""")
    offenders = [f"{path.relative_to(DRIFT)}:{number}" for path in DRIFT.rglob("*.py") if path.name != "methods.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if compare.search(line)]
    assert offenders == []


def test_the_reference_cache_and_the_data_helpers_know_nothing_of_ranks():
    helpers = [DRIFT / "reference.py", *(DRIFT / "data").rglob("*.py")]
    assert [str(path) for path in helpers if re.search(r"\bbarrier\(", path.read_text())] == []


def test_backends_are_checked_by_name_before_any_work():
    with pytest.raises(ConfigError, match=r"^sampler=vllm runs on GPUs, but trainer.device=cpu; use sampler=hf"):
        check_sampler(SamplerConfig(backend="vllm"), "cpu")
    resolved, said = resolve_sampler(SamplerConfig(), "cpu")
    dtype = "bfloat16" if cpu_has_bf16() else "float32"
    assert resolved.backend == "hf" and resolved.dtype == dtype
    assert said == f"sampler: hf {dtype} (sampler.backend=auto: no CUDA device)"
    assert resolve_sampler(SamplerConfig(dtype="float32"), "cpu")[0].dtype == "float32"
    with pytest.raises(ConfigError, match="trainer.logprob_impl=triton"):
        check_logprob_impl("triton", "cpu")
    check_logprob_impl("auto", "cpu")
    check_attention("sdpa")
