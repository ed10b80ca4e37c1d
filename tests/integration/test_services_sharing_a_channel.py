"""A service started beside another on the same channels says that each task runs on both.

pg_notify delivers every NOTIFY to every session listening on its channel, so a service
started twice by mistake (a second terminal, a unit left running) runs each task twice; the
second one says so as it starts listening, naming the first. A channel shared on purpose
beside a channel of each service's own (a broadcast channel) is no such mistake.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from support.postgres import unique_channel
from support.service import ServiceProcess

pytestmark = pytest.mark.timeout(120)

SHARED = "also listens on"
"""What the warning says, between the other service's node id and the channels."""


def named(config: dict[str, Any], node_id: str, *channels: str) -> dict[str, Any]:
    """A copy of *config* for the node *node_id*, listening on *channels* if given."""
    config = copy.deepcopy(config)
    config["service"]["node_id"] = node_id
    if channels:
        config["brokers"]["pg_notify"]["channels"] = list(channels)
        config["brokers"]["pg_notify"]["default_publish_channel"] = channels[0]
    return config


def test_a_second_service_on_a_channel_warns_that_tasks_run_twice(
    start_service: Callable[..., ServiceProcess], service_config: dict[str, Any], channel: str
) -> None:
    first = start_service(named(service_config, "first-on-it"))
    elsewhere = start_service(named(service_config, "elsewhere", unique_channel()))
    # A channel of its own beside the shared one: a broadcast channel, shared on purpose.
    broadcast = start_service(named(service_config, "broadcast", unique_channel(), channel))
    second = start_service(named(service_config, "second-on-it"))

    [line] = second.wait_for_log(SHARED)
    assert "WARNING" in line
    assert f"'first-on-it' {SHARED} {channel}" in line
    assert "runs on both" in line
    assert "elsewhere" not in line  # it listens on another channel
    assert "broadcast" not in line  # its channels are not the same
    # Each warned, if at all, before it said it was listening: the others found no one
    # with the same channels.
    assert SHARED not in first.log
    assert SHARED not in elsewhere.log
    assert SHARED not in broadcast.log
