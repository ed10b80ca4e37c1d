"""Which run request a cancel signal names, as a worker that holds jobs ahead reads it."""

from __future__ import annotations

import signal

import pytest

from dispatcher.server.protocol import CANCEL_SIGNALS, PIPELINE_DEPTH, cancel_target


def signal_of(request: int) -> int:
    return CANCEL_SIGNALS[request % len(CANCEL_SIGNALS)]


@pytest.mark.parametrize("last_started", range(0, 9))
def test_every_request_a_cancel_can_aim_at_is_named_exactly(last_started: int) -> None:
    # The service aims at the request it sees running or at one held ahead. The worker may
    # be up to PIPELINE_DEPTH requests past it (it ran them all before the service read
    # their ends), or not yet have started the request before it.
    for target in range(last_started - PIPELINE_DEPTH, last_started + PIPELINE_DEPTH + 2):
        if target < 1:
            continue
        named = cancel_target(signal_of(target), last_started)
        assert named == (None if target < last_started else target)


def test_the_signals_are_distinct_real_time_signals() -> None:
    assert len(set(CANCEL_SIGNALS)) == len(CANCEL_SIGNALS) == 2 * PIPELINE_DEPTH + 2
    assert all(signal.SIGRTMIN <= signum <= signal.SIGRTMAX for signum in CANCEL_SIGNALS)
