"""brokers.pg_queue.prefetch: how many jobs a service holds ahead of its free workers."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.config import ConfigError, load_settings
from dispatcher.server.brokers.pg_queue.prefetch import AHEAD_SECONDS, AUTO_CAP, RECENT, Prefetch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_auto_holds_ahead_behind_quick_jobs_only() -> None:
    clock = Clock()
    prefetch = Prefetch(None, clock)
    assert prefetch.ahead() == 0  # no job ran yet: a first burst may be of long jobs
    prefetch.ran([0.0004] * 5)  # no-op jobs: claims of a hundred
    assert prefetch.ahead() == AUTO_CAP
    prefetch.ran([0.05])
    assert prefetch.ahead() == 10  # about 0.5 s of work
    prefetch.ran([2.0])  # a long job: nothing ahead, the fleet's other services take them
    assert prefetch.ahead() == 0
    quick = 0
    while prefetch.ahead() < AUTO_CAP:  # quick ones bring it back, after dozens of them
        prefetch.ran([0.0004])
        quick += 1
    assert 40 < quick < 100


def test_auto_forgets_the_pace_after_a_quiet_spell() -> None:
    clock = Clock()
    prefetch = Prefetch(None, clock)
    prefetch.ran([0.0004])
    clock.now += RECENT - 1
    assert prefetch.ahead() == AUTO_CAP
    clock.now += 2  # the next burst may be long jobs: only free workers, until one ended
    assert prefetch.ahead() == 0
    prefetch.ran([0.0004])
    assert prefetch.ahead() == AUTO_CAP


def test_auto_holds_fewer_the_longer_every_worker_has_been_busy() -> None:
    """The pace of the jobs that ended was quick, but the workers have all been on long
    jobs since: a service holding a hundred ahead then kept quick jobs of a shared queue
    waiting for 15 s while another service could have started them at once."""
    clock, busy = Clock(), [0.0]
    prefetch = Prefetch(None, clock, busy_for=lambda: busy[0])
    prefetch.ran([0.0004] * 5)
    assert prefetch.ahead() == AUTO_CAP
    busy[0] = 0.002  # every worker just took a job: as quick as the pace says, maybe
    assert prefetch.ahead() == AUTO_CAP
    busy[0] = 0.05
    assert prefetch.ahead() == 10
    busy[0] = AHEAD_SECONDS + 0.01  # any job held now waits longer than the horizon
    assert prefetch.ahead() == 0
    busy[0] = 15.0
    assert prefetch.ahead() == 0
    busy[0] = 0.0  # a worker is free again: the pace of the jobs that ended
    assert prefetch.ahead() == AUTO_CAP
    prefetch.ran([0.05])
    busy[0] = 0.01  # shorter than the pace: the pace decides
    assert prefetch.ahead() == 10


def test_a_number_is_held_ahead_however_long_the_workers_are_busy() -> None:
    prefetch = Prefetch(7, Clock(), busy_for=lambda: 60.0)
    assert prefetch.ahead() == 7


@pytest.mark.parametrize("fixed", [0, 7, 100])
def test_a_number_is_held_ahead_whatever_the_pace(fixed: int) -> None:
    clock = Clock()
    prefetch = Prefetch(fixed, clock)
    assert prefetch.ahead() == fixed
    prefetch.ran([30.0])
    assert prefetch.ahead() == fixed


def test_prefetch_is_auto_by_default_or_a_number() -> None:
    def prefetch(**option: Any) -> object:
        section = {"conninfo": "dbname=x", "queues": ["q"], **option}
        loaded = load_settings({"version": 1, "brokers": {"pg_queue": section}}).brokers.pg_queue
        assert loaded is not None
        return loaded.prefetch

    assert [prefetch(), prefetch(prefetch="auto")] == ["auto", "auto"]
    assert [prefetch(prefetch=0), prefetch(prefetch=250)] == [0, 250]
    for bad in ("fast", -1, "100"):
        with pytest.raises(ConfigError, match="prefetch"):
            prefetch(prefetch=bad)
