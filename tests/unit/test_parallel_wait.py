"""The wait of ranks > 0 while rank 0 works alone (the sampler's turn): a file marker, no collective."""

import threading
import time

import pytest
import torch

import drift.parallel as parallel
from drift.parallel import MAIN_READY, Runtime, run_on_main, wait_for_main


def _runtime(rank: int) -> Runtime:
    return Runtime(rank, 2, rank, torch.device("cpu"), torch.float32)


def test_wait_returns_once_the_marker_appears(tmp_path):
    threading.Timer(0.3, lambda: (tmp_path / MAIN_READY).write_text("")).start()
    started = time.monotonic()
    wait_for_main(tmp_path, what="sampling", timeout_s=30, poll_s=0.02)
    assert 0.25 < time.monotonic() - started < 10


def test_wait_times_out_with_the_marker_it_waited_for(tmp_path):
    with pytest.raises(TimeoutError, match=f"waited 0 s for rank 0 sampling: no {tmp_path / MAIN_READY}"):
        wait_for_main(tmp_path, what="sampling", timeout_s=0.2, poll_s=0.02)


def test_a_failure_on_rank_0_reaches_the_waiting_rank(tmp_path, monkeypatch):
    # two ranks as threads; the barrier that clears stale markers is the only collective
    arrived = threading.Barrier(2)
    monkeypatch.setattr(parallel, "barrier", lambda runtime: arrived.wait(timeout=30))
    (tmp_path / ".rank0-failed").write_text("a stale failure of an earlier run")  # must not count
    errors = {}

    def rank_1() -> None:
        try:
            run_on_main(_runtime(1), tmp_path, lambda: "rank 1 must not run this", what="sampling", poll_s=0.02)
        except RuntimeError as error:
            errors[1] = error

    waiter = threading.Thread(target=rank_1)
    waiter.start()

    def sampler() -> None:
        time.sleep(0.2)
        raise ValueError("the sampler process failed (exit 1)")

    with pytest.raises(ValueError):
        run_on_main(_runtime(0), tmp_path, sampler, what="sampling", poll_s=0.02)
    waiter.join(timeout=30)
    assert "rank 0 failed while sampling (ValueError: the sampler process failed (exit 1))" in str(errors[1])


def test_rank_0_returns_its_result_and_the_others_none(tmp_path, monkeypatch):
    arrived = threading.Barrier(2)
    monkeypatch.setattr(parallel, "barrier", lambda runtime: arrived.wait(timeout=30))
    (tmp_path / MAIN_READY).write_text("")  # stale: cleared before anyone looks
    results = {}
    waiter = threading.Thread(target=lambda: results.setdefault(1, run_on_main(
        _runtime(1), tmp_path, lambda: "not here", what="sampling", poll_s=0.02)))
    waiter.start()

    def work() -> str:
        time.sleep(0.3)
        assert 1 not in results  # rank 1 still waits: the stale marker did not release it
        return "samples"

    results[0] = run_on_main(_runtime(0), tmp_path, work, what="sampling", poll_s=0.02)
    waiter.join(timeout=30)
    assert results == {0: "samples", 1: None}
