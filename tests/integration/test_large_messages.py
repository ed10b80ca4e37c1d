"""A message of megabytes is decoded off the service's event loop, in order on its channel.

Decoded on the loop, a 3 MB message held up everything for the time of its decoding: a
small message sent on another channel just after its last chunk became a job after it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from dispatcher.publish import split_message
from support.postgres import unique_channel
from support.service import Evidence, ServiceProcess

RECORD = "support.service_tasks.record"
StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]


def recorded(path: Any, label: str, bulk: int = 0) -> str:
    """A message of ``record(path, label)``; with *bulk*, that many characters more (dense)."""
    message: dict[str, Any] = {"task": RECORD, "args": [str(path), label]}
    if bulk:  # an extra key: kept and passed along, not recorded
        message["bulk"] = [[index, 2.5, "x", None, {"a": index}] for index in range(bulk // 30)]
    return json.dumps(message, separators=(",", ":"))


@pytest.mark.timeout(120)
def test_a_large_message_does_not_hold_up_another_channel_and_keeps_its_place_on_its_own(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    other = unique_channel()
    service_config["brokers"]["pg_notify"]["channels"] = [channel, other]
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    start_service(service_config)
    for envelope in split_message(recorded(evidence.path, "big", bulk=3_000_000)):
        notify(channel, envelope)
    notify(other, recorded(evidence.path, "other"))
    notify(channel, recorded(evidence.path, "after big"))
    records = evidence.wait_for(3, timeout=60)
    # One worker: the jobs start in the order the intake took them.
    assert [record["args"][0] for record in records] == ["other", "big", "after big"]
