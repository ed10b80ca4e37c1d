"""A worker handle on a fake process: its states, outcomes, signals and their escalation."""

from __future__ import annotations

import os
import signal

import pytest

from dispatcher.schema import Outcome
from dispatcher.server import memory
from dispatcher.server.cancel_escalation import KILL_AFTER_TERM
from dispatcher.server.handle_status import WorkerStatus
from dispatcher.server.jobs import Job
from dispatcher.server.protocol import CANCEL_SIGNALS, PIPELINE_DEPTH, REFILL_BELOW, STOP_LINE
from dispatcher.server.workers import WorkerHandle
from support.scheduling import FakeProcess, FakeTimers, make_job

GRACE = 2.0
"""``cancel_grace`` of the handles here."""

SIGTERM, SIGKILL = signal.SIGTERM, signal.SIGKILL
CANCEL_1, CANCEL_2, CANCEL_3 = CANCEL_SIGNALS[1], CANCEL_SIGNALS[2], CANCEL_SIGNALS[3]
"""The signals that cancel a worker's first, second and third run requests."""


@pytest.fixture
def timers() -> FakeTimers:
    return FakeTimers()


@pytest.fixture
def process() -> FakeProcess:
    return FakeProcess()


def new_handle(timers: FakeTimers, process: FakeProcess | None = None) -> WorkerHandle:
    handle = WorkerHandle(7, timers, GRACE, clock=timers.clock)
    if process is not None:
        handle.attach(process)
    return handle


@pytest.fixture
def ready(timers: FakeTimers, process: FakeProcess) -> WorkerHandle:
    """A worker that has reported ready."""
    handle = new_handle(timers, process)
    assert handle.ready()
    return handle


# -- transitions -------------------------------------------------------------------------


def test_a_new_worker_is_starting_and_counts_as_live(timers: FakeTimers) -> None:
    handle = new_handle(timers)
    assert handle.status is WorkerStatus.STARTING
    assert handle.is_live
    assert not handle.is_ready
    assert handle.job is None


def test_attach_gives_the_handle_its_process(timers: FakeTimers, process: FakeProcess) -> None:
    handle = new_handle(timers, process)
    assert handle.pid == process.pid
    assert handle.status is WorkerStatus.STARTING
    assert process.signals == []


def test_ready_then_run_then_finish(timers: FakeTimers, process: FakeProcess) -> None:
    handle = new_handle(timers, process)
    timers.advance(1)
    assert handle.ready()
    assert handle.started.is_set()
    assert (handle.status, handle.idle_since) == (WorkerStatus.READY, 1.0)
    job = make_job()
    handle.run(job)
    assert handle.status is WorkerStatus.BUSY
    assert handle.job is job
    assert process.lines == [job.line]
    timers.advance(2)
    assert handle.finish("ok") == (job, Outcome.OK)
    assert (handle.status, handle.idle_since, handle.job) == (WorkerStatus.READY, 3.0, None)
    assert handle.tasks_done == 1
    assert handle.is_ready


def test_run_on_a_starting_worker_is_refused(timers: FakeTimers) -> None:
    with pytest.raises(RuntimeError, match="cannot run a job"):
        new_handle(timers).run(make_job())


def test_a_busy_worker_is_sent_jobs_ahead_in_one_write_and_refilled_only_when_low(
    ready: WorkerHandle, process: FakeProcess
) -> None:
    first = make_job()
    assert ready.room_ahead == 0  # not busy: nothing to hold ahead of
    ready.run(first)
    with pytest.raises(RuntimeError, match="cannot run a job"):
        ready.run(make_job())
    assert ready.room_ahead == PIPELINE_DEPTH
    held = [make_job() for _ in range(PIPELINE_DEPTH)]
    ready.hold_ahead(held)
    assert process.lines == [first.line, b"".join(job.line for job in held)]
    assert ready.room_ahead == 0
    with pytest.raises(RuntimeError, match="cannot hold 1 more"):
        ready.hold_ahead([make_job()])
    for _ in range(PIPELINE_DEPTH - REFILL_BELOW + 1):
        assert ready.room_ahead == 0
        ready.finish("ok")
    assert len(ready.ahead) == REFILL_BELOW - 1
    assert ready.room_ahead == PIPELINE_DEPTH - REFILL_BELOW + 1
    assert ready.job is held[PIPELINE_DEPTH - REFILL_BELOW]


def test_run_on_a_stopping_or_exited_worker_is_refused(ready: WorkerHandle) -> None:
    ready.stop()
    with pytest.raises(RuntimeError):
        ready.run(make_job())
    ready.exited()
    with pytest.raises(RuntimeError):
        ready.run(make_job())


def test_stop_sends_the_stop_line_to_a_ready_worker(
    ready: WorkerHandle, process: FakeProcess
) -> None:
    ready.stop()
    ready.stop()  # once is enough
    assert process.lines == [STOP_LINE]
    assert process.signals == []
    assert ready.status is WorkerStatus.STOPPING
    assert not ready.is_live
    assert ready.exited() == (None, None, True)
    assert ready.status is WorkerStatus.EXITED
    assert ready.gone.is_set()


def test_stop_kills_a_starting_worker(timers: FakeTimers, process: FakeProcess) -> None:
    handle = new_handle(timers, process)
    handle.stop()
    assert process.signals == [SIGKILL]
    assert process.lines == []
    assert not handle.ready()  # its late ready report changes nothing
    assert handle.status is WorkerStatus.STOPPING


def test_a_worker_stopped_before_its_process_exists_is_killed_on_attach(
    timers: FakeTimers, process: FakeProcess
) -> None:
    handle = new_handle(timers)
    handle.stop()
    assert handle.status is WorkerStatus.STOPPING
    handle.attach(process)
    assert process.signals == [SIGKILL]


def test_a_busy_worker_asked_to_stop_finishes_its_task_then_stays_stopping(
    ready: WorkerHandle, process: FakeProcess
) -> None:
    job = make_job()
    ready.run(job)
    ready.stop()
    assert process.lines == [job.line, STOP_LINE]
    assert ready.finish("ok") == (job, Outcome.OK)
    assert ready.status is WorkerStatus.STOPPING
    assert not ready.is_ready


def test_a_ready_worker_that_exits_unasked_was_not_expected(ready: WorkerHandle) -> None:
    assert ready.exited() == (None, None, False)
    assert ready.status is WorkerStatus.EXITED


def test_a_busy_worker_that_dies_loses_its_task(ready: WorkerHandle) -> None:
    job = make_job()
    ready.run(job)
    assert ready.exited() == (job, Outcome.WORKER_LOST, False)
    assert ready.job is None


def test_a_worker_that_dies_while_starting_sets_its_events(timers: FakeTimers) -> None:
    handle = new_handle(timers, FakeProcess())
    assert handle.exited() == (None, None, False)
    assert handle.started.is_set()  # nobody waits for its ready report any more
    assert handle.gone.is_set()


def test_terminate_takes_the_job_away_and_sigterms(
    ready: WorkerHandle, process: FakeProcess
) -> None:
    job = make_job()
    ready.run(job)
    assert ready.terminate() is job
    assert process.signals == [SIGTERM]
    assert ready.status is WorkerStatus.STOPPING
    assert ready.exited() == (None, None, True)  # the caller accounts for the job


def test_kill_ends_the_task_with_the_given_outcome(
    ready: WorkerHandle, process: FakeProcess
) -> None:
    job = make_job()
    ready.run(job)
    ready.kill(Outcome.MEMORY_EXCEEDED)
    assert process.signals == [SIGKILL]
    assert ready.status is WorkerStatus.STOPPING
    assert ready.exited() == (job, Outcome.MEMORY_EXCEEDED, True)


def test_kill_of_an_exited_worker_does_nothing(ready: WorkerHandle, process: FakeProcess) -> None:
    ready.exited()
    ready.kill()
    assert process.signals == []
    assert ready.status is WorkerStatus.EXITED


# -- outcomes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reported", "outcome"),
    [
        ("ok", Outcome.OK),
        ("error", Outcome.ERROR),
        ("cancelled", Outcome.CANCELLED),
        ("timeout", Outcome.ERROR),  # not a word a worker says
        ("killed", Outcome.ERROR),
        ("nonsense", Outcome.ERROR),
    ],
)
def test_finish_turns_the_reported_word_into_an_outcome(
    ready: WorkerHandle, reported: str, outcome: Outcome
) -> None:
    job = make_job()
    ready.run(job)
    assert ready.finish(reported) == (job, outcome)
    assert ready.status is WorkerStatus.READY


def test_exit_reported_ends_ok_and_the_worker_stops(ready: WorkerHandle) -> None:
    job = make_job()
    ready.run(job)
    assert ready.finish("exit") == (job, Outcome.OK)
    assert ready.status is WorkerStatus.STOPPING
    assert ready.exited() == (None, None, True)


def test_a_cancelled_report_after_a_cancel_is_cancelled(
    ready: WorkerHandle, process: FakeProcess
) -> None:
    job = make_job()
    ready.run(job)
    ready.cancel()
    assert process.signals == [CANCEL_1]
    assert ready.finish("cancelled") == (job, Outcome.CANCELLED)


def test_a_task_that_completes_despite_its_cancel_keeps_its_own_outcome(
    ready: WorkerHandle,
) -> None:
    job = make_job()
    ready.run(job)
    ready.cancel()
    assert ready.finish("ok") == (job, Outcome.OK)


# -- timeouts, cancels and their escalation ----------------------------------------------


def test_a_timeout_cancels_the_task_with_its_cancel_signal(
    ready: WorkerHandle, process: FakeProcess, timers: FakeTimers
) -> None:
    job = make_job(timeout=3)
    ready.run(job)
    timers.advance(2.75)
    assert process.signals == []
    timers.advance(0.25)
    assert process.signals == [CANCEL_1]
    assert ready.finish("cancelled") == (job, Outcome.TIMEOUT)
    timers.advance(60)  # no escalation for a task that stopped in time
    assert process.signals == [CANCEL_1]
    assert ready.status is WorkerStatus.READY


def test_a_timeout_escalates_to_sigterm_then_sigkill(
    ready: WorkerHandle, process: FakeProcess, timers: FakeTimers
) -> None:
    job = make_job(timeout=3)
    ready.run(job)
    timers.advance(3)
    timers.advance(GRACE - 0.25)
    assert process.signals == [CANCEL_1]
    timers.advance(0.25)
    assert process.signals == [CANCEL_1, SIGTERM]
    assert ready.status is WorkerStatus.STOPPING
    timers.advance(KILL_AFTER_TERM - 0.25)
    assert process.signals == [CANCEL_1, SIGTERM]
    timers.advance(0.25)
    assert process.signals == [CANCEL_1, SIGTERM, SIGKILL]
    assert ready.exited() == (job, Outcome.KILLED, True)


def test_a_task_that_stops_after_sigterm_is_not_sigkilled(
    ready: WorkerHandle, process: FakeProcess, timers: FakeTimers
) -> None:
    job = make_job(timeout=1)
    ready.run(job)
    timers.advance(1 + GRACE)
    assert process.signals == [CANCEL_1, SIGTERM]
    assert ready.finish("cancelled") == (job, Outcome.TIMEOUT)
    assert ready.status is WorkerStatus.STOPPING  # the worker is on its way out anyway
    timers.advance(KILL_AFTER_TERM)
    assert process.signals == [CANCEL_1, SIGTERM]


def test_a_cancel_escalates_like_a_timeout(
    ready: WorkerHandle, process: FakeProcess, timers: FakeTimers
) -> None:
    job = make_job()
    ready.run(job)
    ready.cancel()
    timers.advance(GRACE + KILL_AFTER_TERM)
    assert process.signals == [CANCEL_1, SIGTERM, SIGKILL]
    # A cancel asked for stays one when it needs force (a durable job is not run again).
    assert ready.exited() == (job, Outcome.CANCELLED, True)


def test_a_timeout_after_the_task_finished_does_nothing(
    ready: WorkerHandle, process: FakeProcess, timers: FakeTimers
) -> None:
    ready.run(make_job(timeout=3))
    timers.advance(1)
    ready.finish("ok")
    following = make_job()
    ready.run(following)  # the next task must not inherit the old deadline
    timers.advance(60)
    assert process.signals == []
    assert ready.job is following


def test_a_task_that_ends_before_its_timeout_leaves_no_deadline(
    ready: WorkerHandle, timers: FakeTimers
) -> None:
    # Kept until due, the deadlines of quick tasks with a timeout of a day would keep a
    # day of jobs.
    ready.run(make_job(timeout=86400))
    ready.finish("ok")
    assert timers.pending() == 0
    ready.run(make_job(timeout=86400))
    ready.exited()
    assert timers.pending() == 0


def test_an_escalation_does_not_hit_the_next_task(
    ready: WorkerHandle, process: FakeProcess, timers: FakeTimers
) -> None:
    ready.run(make_job())
    ready.cancel()
    timers.advance(GRACE / 2)
    ready.finish("cancelled")
    following = make_job()
    ready.run(following)
    timers.advance(GRACE + KILL_AFTER_TERM)
    assert process.signals == [CANCEL_1]
    assert ready.finish("ok") == (following, Outcome.OK)


def test_a_second_cancel_sends_no_second_signal_and_keeps_the_first_reason(
    ready: WorkerHandle, process: FakeProcess, timers: FakeTimers
) -> None:
    job = make_job(timeout=1)
    ready.run(job)
    timers.advance(1)
    ready.cancel(Outcome.CANCELLED)
    assert process.signals == [CANCEL_1]
    assert ready.finish("cancelled") == (job, Outcome.TIMEOUT)


def test_cancel_of_an_idle_worker_does_nothing(
    ready: WorkerHandle, process: FakeProcess, timers: FakeTimers
) -> None:
    ready.cancel()
    timers.advance(60)
    assert process.signals == []
    assert ready.status is WorkerStatus.READY


def test_a_memory_kill_during_an_escalation_keeps_the_killed_outcome(
    ready: WorkerHandle, timers: FakeTimers
) -> None:
    job = make_job(timeout=1)
    ready.run(job)
    timers.advance(1 + GRACE)  # SIGTERM sent: the task is being killed
    ready.kill(Outcome.MEMORY_EXCEEDED)
    assert ready.exited() == (job, Outcome.KILLED, True)


# -- writing to the process ------------------------------------------------------------------


def test_a_partial_write_asks_for_a_flush(timers: FakeTimers, process: FakeProcess) -> None:
    flushes: list[WorkerHandle] = []
    handle = WorkerHandle(7, timers, GRACE, on_backlog=flushes.append, clock=timers.clock)
    handle.attach(process)
    handle.ready()
    handle.run(make_job())
    assert flushes == []
    process.partial = True
    handle.reply(b'{"op":"reply","reply":{}}\n')
    assert flushes == [handle]
    handle.stop()
    assert flushes == [handle, handle]


# -- memory limit ----------------------------------------------------------------------


def test_memory_check_kills_a_worker_over_the_limit(timers: FakeTimers) -> None:
    process = FakeProcess(os.getpid())  # this process: its resident memory is above 1 KiB
    handle = new_handle(timers, process)
    handle.ready()
    job = make_job()
    handle.run(job)
    memory.check([handle], limit=1024)
    assert process.signals == [SIGKILL]
    memory.check([handle], limit=1024)  # already being killed: once is enough
    assert process.signals == [SIGKILL]
    assert handle.exited() == (job, Outcome.MEMORY_EXCEEDED, True)


def test_memory_check_spares_workers_under_the_limit_unreadable_or_stopping(
    timers: FakeTimers, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = {1: 100, 2: 5000, 3: None, 4: 5000}
    monkeypatch.setattr(memory, "resident_bytes", sizes.get)
    small, big, unreadable, stopping = (FakeProcess(pid) for pid in sizes)
    handles = [new_handle(timers, p) for p in (small, big, unreadable, stopping)]
    for handle in handles:
        handle.ready()
    handles[3].stop()
    memory.check(handles, limit=1000)
    assert [p.signals for p in (small, big, unreadable, stopping)] == [[], [SIGTERM], [], []]
    assert handles[1].exited() == (None, None, True)


def test_memory_check_stops_an_idle_worker_with_sigterm_then_sigkill(
    timers: FakeTimers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Idle, it may still be logging its last task's output: SIGTERM has it written first.
    monkeypatch.setattr(memory, "resident_bytes", lambda pid: 5000)
    lingering, ending = FakeProcess(1), FakeProcess(2)
    handles = [new_handle(timers, p) for p in (lingering, ending)]
    for handle in handles:
        handle.ready()
    memory.check(handles, limit=1000)
    memory.check(handles, limit=1000)  # being stopped: once is enough
    assert [lingering.signals, ending.signals] == [[SIGTERM], [SIGTERM]]
    assert all(h.status is WorkerStatus.STOPPING and not h.is_live for h in handles)
    assert handles[1].exited() == (None, None, True)
    timers.advance(KILL_AFTER_TERM)
    assert [lingering.signals, ending.signals] == [[SIGTERM, SIGKILL], [SIGTERM]]


# -- jobs held ahead ---------------------------------------------------------------------


def test_a_job_held_ahead_runs_when_the_current_one_ends_and_its_timeout_starts_then(
    ready: WorkerHandle, process: FakeProcess, timers: FakeTimers
) -> None:
    first, held = make_job(), make_job(timeout=1)
    ready.run(first)
    ready.hold_ahead([held])
    timers.advance(5)  # the held job's clock has not started: no cancel
    assert process.signals == []
    assert ready.finish("ok") == (first, Outcome.OK)
    assert ready.status is WorkerStatus.BUSY
    assert ready.job is held
    assert not ready.ahead
    timers.advance(1)
    assert process.signals == [CANCEL_2]
    assert ready.finish("cancelled") == (held, Outcome.TIMEOUT)
    assert ready.is_ready


def test_cancelling_a_held_job_signals_its_own_request_and_it_ends_cancelled(
    ready: WorkerHandle, process: FakeProcess, timers: FakeTimers
) -> None:
    first, held = make_job(), make_job()
    ready.run(first)
    ready.hold_ahead([held])
    assert ready.cancel_ahead(held)
    assert not ready.cancel_ahead(held)  # once is enough: it is not cancelled again
    assert process.signals == [CANCEL_2]
    assert not ready.cancel_ahead(make_job())
    assert ready.finish("ok") == (first, Outcome.OK)
    assert ready.finish("cancelled") == (held, Outcome.CANCELLED)


def test_a_held_job_that_was_cancelled_and_still_runs_gets_its_worker_terminated(
    ready: WorkerHandle, process: FakeProcess, timers: FakeTimers
) -> None:
    ready.run(make_job())
    held = make_job()
    ready.hold_ahead([held])
    ready.cancel_ahead(held)
    ready.finish("ok")
    timers.advance(GRACE)
    assert process.signals == [CANCEL_2, SIGTERM]


def test_cancelling_the_running_job_after_some_ran_names_its_request(
    ready: WorkerHandle, process: FakeProcess
) -> None:
    for _ in range(2):
        ready.run(make_job())
        ready.finish("ok")
    ready.run(make_job())
    ready.hold_ahead([make_job()])  # held ahead: request 4
    ready.cancel()
    assert process.signals == [CANCEL_3]


def test_a_worker_that_dies_gives_back_its_held_jobs_not_started(
    ready: WorkerHandle, process: FakeProcess
) -> None:
    running, held = make_job(), make_job()
    ready.run(running)
    ready.hold_ahead([held])
    assert ready.exited()[:2] == (running, Outcome.WORKER_LOST)
    assert ready.take_ahead() == ([held], [])
    assert ready.take_ahead() == ([], [])


def test_a_worker_killed_or_exiting_does_not_start_its_held_job(
    ready: WorkerHandle, timers: FakeTimers
) -> None:
    ready.run(make_job())
    held = make_job()
    ready.hold_ahead([held])
    ready.finish("exit")  # DispatcherExit: the worker exits after this task
    assert ready.job is None
    assert list(ready.ahead) == [held]
    other = new_handle(timers, FakeProcess())
    other.ready()
    other.run(make_job())
    other.hold_ahead([make_job()])
    other.kill(Outcome.MEMORY_EXCEEDED)
    other.finish("ok")
    assert other.job is None
    assert len(other.take_ahead()[0]) == 1


def test_a_job_that_came_after_its_start_by_is_given_back_not_ended(
    ready: WorkerHandle, timers: FakeTimers, process: FakeProcess
) -> None:
    first, late, after = make_job(), make_job(timeout=1), make_job()
    ready.run(first)
    ready.hold_ahead([late, after])
    ready.finish("ok")
    assert ready.finish("expired") == (None, Outcome.CANCELLED)  # no job ended
    assert ready.take_unstarted() == [late]
    assert ready.tasks_done == 1
    assert ready.job is after  # the next one starts as usual
    process.signals.clear()
    timers.advance(5)  # the given-back job's timeout (1 s) went with it
    assert process.signals == []


def its_turn(handle: WorkerHandle, held: Job) -> Job:
    """Run a job on *handle* with *held* held ahead, then end that job: *held* has its turn
    (its clock starts, as far as the service knows)."""
    handle.run(make_job())
    handle.hold_ahead([held])
    handle.finish("ok")
    return held


@pytest.mark.parametrize("reported", ["expired", "recalled"])
def test_a_timeout_counted_for_a_job_that_comes_back_unstarted_does_not_end_it(
    ready: WorkerHandle, timers: FakeTimers, reported: str
) -> None:
    held = its_turn(ready, make_job(timeout=1))
    timers.advance(1)  # timed out before the worker's report arrives
    assert ready.finish(reported) == (None, Outcome.TIMEOUT)  # no job ended: it never ran
    assert ready.take_unstarted() == [held]
    assert ready.tasks_done == 1


@pytest.mark.parametrize("reported", ["expired", "recalled"])
def test_a_job_cancelled_as_it_comes_back_unstarted_ends_cancelled_uncounted(
    timers: FakeTimers, process: FakeProcess, reported: str
) -> None:
    starts: list[str] = []
    handle = WorkerHandle(
        7, timers, GRACE, clock=timers.clock, on_start=lambda job, n: starts.append(job.uuid)
    )
    handle.attach(process)
    handle.ready()
    handle.run(make_job(uuid="first"))
    held = make_job(uuid="held")
    handle.hold_ahead([held])
    assert handle.recall_ahead()  # its start is unsure from now on
    handle.finish("ok")
    handle.cancel()  # the user cancels it before the worker's report arrives
    assert handle.finish(reported) == (held, Outcome.CANCELLED)  # as the user asked
    assert handle.take_unstarted() == []
    assert handle.tasks_done == 1
    assert starts == ["first"]  # it never started


def test_a_job_given_back_and_sent_again_keeps_only_its_new_timeout(
    ready: WorkerHandle, timers: FakeTimers, process: FakeProcess
) -> None:
    late = its_turn(ready, make_job(timeout=10))  # its clock starts at 0
    ready.finish("expired")
    assert ready.take_unstarted() == [late]
    timers.advance(5)
    ready.run(late)  # the same job again: its clock starts at 5
    timers.advance(5)  # the first clock's end: nothing
    assert process.signals == []
    timers.advance(5)
    assert process.signals == [CANCEL_SIGNALS[3]]  # its own timeout, in request 3


def test_a_recall_the_service_did_not_send_gives_back_the_job_and_retires_the_worker(
    ready: WorkerHandle, process: FakeProcess
) -> None:
    job = make_job()
    ready.run(job)
    assert ready.finish("recalled") == (None, Outcome.CANCELLED)  # SIGRTMIN+10 sent by hand
    assert ready.take_unstarted() == [job]
    assert ready.recalled  # it gives back whatever it is sent now: it is to be replaced
    assert process.signals == []


def test_a_job_cancelled_ahead_that_expired_still_ends_cancelled(ready: WorkerHandle) -> None:
    ready.run(make_job())
    late = make_job()
    ready.hold_ahead([late])
    ready.cancel_ahead(late)
    ready.finish("ok")
    assert ready.finish("expired") == (late, Outcome.CANCELLED)
    assert ready.take_unstarted() == []


def test_a_worker_that_dies_holding_a_cancelled_job_hands_it_over_as_cancelled(
    ready: WorkerHandle,
) -> None:
    running = make_job()
    ready.run(running)
    held = [make_job() for _ in range(3)]
    ready.hold_ahead(held)
    assert ready.cancel_ahead(held[1], Outcome.TIMEOUT)
    assert ready.pending_ahead == [held[0], held[2]]
    ready.exited()
    assert ready.take_ahead() == ([held[0], held[2]], [(held[1], Outcome.TIMEOUT)])
