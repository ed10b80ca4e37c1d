"""Node ids: the default from the host name and pid, unique per host, whole in connection names;
one of each service of a process."""

from __future__ import annotations

from typing import Final

import pytest

from dispatcher.config import load_settings
from dispatcher.schema import MAX_WHOLE_NODE_ID_BYTES, is_valid_channel_name
from dispatcher.server.node_ids import NODE_ID_ENV, default_node_id, node_id

REPLICAS = ["dispatcher-worker-7d9f8b6c5d-x2k4q", "dispatcher-worker-7d9f8b6c5d-abcde"]
"""Two pods of one Deployment: their names differ only in their last characters."""


def test_replicas_of_a_deployment_get_node_ids_of_their_own() -> None:
    # Each ran as pid 1, and the host name was cut to its first 25 characters: the two got
    # the same node id, dispatcher-worker-7d9f8b6-1.
    first, second = (default_node_id(host, pid=1) for host in REPLICAS)
    assert first != second
    assert first.startswith("dispatcher-w")
    assert first.endswith("-x2k4q-1")
    assert second.endswith("-abcde-1")


@pytest.mark.parametrize(
    "hosts",
    [
        REPLICAS,
        ["ip-10-0-1-23.eu-west-1.compute.internal", "ip-10-0-1-24.eu-west-1.compute.internal"],
        ["build-agent-long-prefix-01-of-the-farm.ci", "build-agent-long-prefix-02-of-the-farm.ci"],
    ],
)
def test_long_host_names_that_differ_anywhere_give_different_node_ids(hosts: list[str]) -> None:
    nodes = [default_node_id(host, pid=4_194_304) for host in hosts]
    assert len(set(nodes)) == len(nodes)
    for node in nodes:
        assert len(node) <= MAX_WHOLE_NODE_ID_BYTES  # seen whole by control clients
        assert is_valid_channel_name(node)


def test_a_short_host_name_is_kept_as_it_is() -> None:
    assert default_node_id("web-1", pid=42) == "web-1-42"
    assert default_node_id("a" * 25, pid=42) == "a" * 25 + "-42"
    assert default_node_id("host name/ü", pid=7) == "host-name---7"


@pytest.mark.parametrize("host", ["web-1", "a" * 25, *REPLICAS])
def test_the_further_services_of_a_process_get_their_own_node_ids_as_short(host: str) -> None:
    ids = [default_node_id(host, pid=4_194_304, instance=n) for n in (1, 2, 3, 12)]
    assert len(set(ids)) == len(ids)
    assert ids[1].endswith("-4194304-2")
    for node in ids:
        assert len(node) <= MAX_WHOLE_NODE_ID_BYTES
        assert is_valid_channel_name(node)


SETTINGS: Final = {"version": 1, "brokers": {"socket": {"path": "d.sock"}}}


@pytest.mark.parametrize("given", ["pod-a", "web-7d9f8b6c5d-x2k4q", "x" * 33, "y" * 63])
def test_the_further_services_of_a_process_number_the_node_id_of_the_environment(
    given: str,
) -> None:
    """Every service of the process took $DISPATCHER_NODE_ID as it was: one id for all."""
    environ = {NODE_ID_ENV: given}
    ids = [node_id(load_settings(SETTINGS), environ, instance=n) for n in (1, 2, 3, 12)]
    assert ids[0] == given  # the first one's is exact
    assert len(set(ids)) == len(ids)
    for node in ids[1:]:
        assert len(node) <= MAX_WHOLE_NODE_ID_BYTES  # seen whole by control clients
        assert is_valid_channel_name(node)
    assert ids[1].endswith("-2")
    if len(given) <= MAX_WHOLE_NODE_ID_BYTES - 3:
        assert ids[1:] == [f"{given}-2", f"{given}-3", f"{given}-12"]


def test_a_node_id_the_config_sets_is_taken_as_it_is_by_every_service() -> None:
    settings = load_settings({**SETTINGS, "service": {"node_id": "named"}})
    assert node_id(settings, {NODE_ID_ENV: "pod-a"}, instance=2) == "named"
