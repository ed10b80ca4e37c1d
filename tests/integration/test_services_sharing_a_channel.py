"""A service started beside another on one of its channels says that each task runs on both.

pg_notify delivers every NOTIFY to every session listening on its channel, so a service
started twice by mistake (a second terminal, a unit left running) runs each task twice; the
second one says so as it starts listening, naming the first.
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


def named(config: dict[str, Any], node_id: str, channel: str | None = None) -> dict[str, Any]:
    """A copy of *config* for the node *node_id*, listening on *channel* if given."""
    config = copy.deepcopy(config)
    config["service"]["node_id"] = node_id
    if channel is not None:
        config["brokers"]["pg_notify"]["channels"] = [channel]
        config["brokers"]["pg_notify"]["default_publish_channel"] = channel
    return config


def test_a_second_service_on_a_channel_warns_that_tasks_run_twice(
    start_service: Callable[..., ServiceProcess], service_config: dict[str, Any], channel: str
) -> None:
    first = start_service(named(service_config, "first-on-it"))
    elsewhere = start_service(named(service_config, "elsewhere", unique_channel()))
    second = start_service(named(service_config, "second-on-it"))

    [line] = second.wait_for_log(SHARED)
    assert "WARNING" in line
    assert f"'first-on-it' {SHARED} {channel}" in line
    assert "runs on both" in line
    assert "elsewhere" not in line  # it listens on another channel
    # Each warned, if at all, before it said it was listening: the others found no one.
    assert SHARED not in first.log
    assert SHARED not in elsewhere.log
