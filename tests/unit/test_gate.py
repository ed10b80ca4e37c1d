"""The ``on_duplicate`` gate: which duplicates run, wait or are dropped, and in what order."""

from __future__ import annotations

import pytest

from dispatcher.server.gate import Admission, DuplicateGate
from support.scheduling import make_job


@pytest.mark.parametrize("mode", [None, "parallel"])
def test_untracked_duplicates_all_run(mode: str | None) -> None:
    gate = DuplicateGate()
    jobs = [make_job("app.sync", 1, on_duplicate=mode) for _ in range(3)]
    assert [gate.admit(job) for job in jobs] == [Admission.RUN] * 3
    assert gate.blocked_count == 0
    assert gate.finished(jobs[0]) is None


def test_discard_drops_a_duplicate_of_an_active_job_until_it_ends() -> None:
    gate = DuplicateGate()
    first, second, later = (make_job("app.sync", 1, on_duplicate="discard") for _ in range(3))
    assert gate.admit(first) is Admission.RUN
    assert gate.admit(second) is Admission.DISCARD
    assert gate.finished(first) is None
    assert gate.admit(later) is Admission.RUN


def test_discard_drops_a_duplicate_of_a_blocked_job() -> None:
    gate = DuplicateGate()
    running = make_job("app.sync", 1, on_duplicate="serial")
    waiting = make_job("app.sync", 1, on_duplicate="serial")
    assert gate.admit(running) is Admission.RUN
    assert gate.admit(waiting) is Admission.BLOCK
    assert gate.admit(make_job("app.sync", 1, on_duplicate="discard")) is Admission.DISCARD
    assert gate.blocked_count == 1


def test_serial_releases_blocked_duplicates_one_at_a_time_in_arrival_order() -> None:
    gate = DuplicateGate()
    first, second, third = (make_job("app.sync", 1, on_duplicate="serial") for _ in range(3))
    assert [gate.admit(job) for job in (first, second, third)] == [
        Admission.RUN,
        Admission.BLOCK,
        Admission.BLOCK,
    ]
    assert gate.blocked_count == 2
    assert gate.finished(first) is second
    assert gate.blocked_count == 1
    # what was released is active already: a duplicate arriving now waits behind it
    assert gate.admit(make_job("app.sync", 1, on_duplicate="discard")) is Admission.DISCARD
    assert gate.finished(second) is third
    assert gate.finished(third) is None
    assert gate.blocked_count == 0


def test_serial_duplicates_with_other_arguments_are_independent() -> None:
    gate = DuplicateGate()
    assert gate.admit(make_job("app.sync", 1, on_duplicate="serial")) is Admission.RUN
    assert gate.admit(make_job("app.sync", 2, on_duplicate="serial")) is Admission.RUN
    assert gate.admit(make_job("app.other", 1, on_duplicate="serial")) is Admission.RUN


def test_queue_one_keeps_at_most_one_waiting() -> None:
    gate = DuplicateGate()
    running, waiting, extra = (make_job("app.sync", 1, on_duplicate="queue_one") for _ in range(3))
    assert gate.admit(running) is Admission.RUN
    assert gate.admit(waiting) is Admission.BLOCK
    assert gate.admit(extra) is Admission.DISCARD
    assert list(gate.blocked()) == [waiting]
    assert gate.finished(running) is waiting
    # one may wait again behind the one now running
    again = make_job("app.sync", 1, on_duplicate="queue_one")
    assert gate.admit(again) is Admission.BLOCK


def test_a_job_blocks_only_while_a_duplicate_is_active() -> None:
    gate = DuplicateGate()
    first = make_job("app.sync", 1, on_duplicate="serial")
    gate.admit(first)
    assert gate.finished(first) is None
    assert gate.admit(make_job("app.sync", 1, on_duplicate="queue_one")) is Admission.RUN


def test_finished_of_a_job_the_gate_does_not_track_releases_nothing() -> None:
    gate = DuplicateGate()
    running = make_job("app.sync", 1, on_duplicate="serial")
    gate.admit(running)
    gate.admit(make_job("app.sync", 1, on_duplicate="serial"))
    assert gate.finished(make_job("app.sync", 1)) is None
    assert gate.finished(make_job("app.sync", 2, on_duplicate="serial")) is None
    assert gate.blocked_count == 1


def test_remove_takes_matching_blocked_jobs_and_keeps_the_others_in_order() -> None:
    gate = DuplicateGate()
    running = make_job("app.sync", 1, on_duplicate="serial")
    gate.admit(running)
    waiting = [make_job("app.sync", 1, on_duplicate="serial") for _ in range(3)]
    other_running = make_job("app.sync", 2, on_duplicate="serial")
    gate.admit(other_running)
    other_waiting = make_job("app.sync", 2, on_duplicate="serial")
    for job in [*waiting, other_waiting]:
        assert gate.admit(job) is Admission.BLOCK
    assert gate.blocked_count == 4

    removed = gate.remove(lambda job: job.uuid in (waiting[1].uuid, other_waiting.uuid))

    assert sorted(job.uuid for job in removed) == sorted([waiting[1].uuid, other_waiting.uuid])
    assert gate.blocked_count == 2
    assert list(gate.blocked()) == [waiting[0], waiting[2]]
    assert gate.finished(other_running) is None
    assert gate.finished(running) is waiting[0]
    assert gate.finished(waiting[0]) is waiting[2]


def test_remove_everything_empties_the_gate() -> None:
    gate = DuplicateGate()
    running = make_job("app.sync", 1, on_duplicate="serial")
    gate.admit(running)
    gate.admit(make_job("app.sync", 1, on_duplicate="serial"))
    assert len(gate.remove(lambda job: True)) == 1
    assert gate.blocked_count == 0
    assert list(gate.blocked()) == []
    assert gate.finished(running) is None


@pytest.mark.parametrize("mode", ["serial", "queue_one"])
def test_a_job_to_block_over_max_blocked_is_refused(mode: str) -> None:
    gate = DuplicateGate()
    for n in (1, 2):
        gate.admit(make_job("app.sync", n, on_duplicate=mode))
    assert gate.admit(make_job("app.sync", 1, on_duplicate=mode), max_blocked=1) is Admission.BLOCK
    refused = make_job("app.sync", 2, on_duplicate=mode)
    assert gate.admit(refused, max_blocked=1) is Admission.REFUSE
    assert gate.blocked_count == 1
    assert refused not in list(gate.blocked())


def test_max_blocked_does_not_refuse_jobs_that_run_or_are_discarded() -> None:
    gate = DuplicateGate()
    gate.admit(make_job("app.sync", 1, on_duplicate="discard"))
    assert gate.admit(make_job("app.sync", 2, on_duplicate="serial"), 0) is Admission.RUN
    assert gate.admit(make_job("app.sync", 1, on_duplicate="discard"), 0) is Admission.DISCARD
    assert gate.admit(make_job("app.sync", 2, on_duplicate="serial"), 0) is Admission.REFUSE
