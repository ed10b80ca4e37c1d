"""Values both sides share have one home, dispatcher.schema, equal to the schema files."""

from __future__ import annotations

import importlib
import logging
from typing import get_args

import pytest

from dispatcher.schema import (
    CHANNELS_DIGEST_CHARS,
    CHUNK_KEY,
    CHUNK_VERSION,
    LOG_LEVELS,
    MAX_APPLICATION_NAME_BYTES,
    MAX_WHOLE_NODE_ID_BYTES,
    ON_DUPLICATE_MODES,
    SERVICE_NAME_PREFIX,
    SIGNED_KEY,
    SIGNED_VERSION,
    LogLevel,
    OnDuplicate,
    channels_digest,
    digest_has_channel,
    digest_tells_channels,
    load_schema,
    matches_node_id,
    node_id_of,
    parse_service_name,
    service_application_name,
    sql_publisher,
)


def test_on_duplicate_modes_equal_the_task_message_schema() -> None:
    schema = load_schema("task-message")
    assert list(ON_DUPLICATE_MODES) == schema["properties"]["on_duplicate"]["enum"]
    assert get_args(OnDuplicate) == ON_DUPLICATE_MODES


def test_on_duplicate_modes_equal_the_config_schema() -> None:
    options = load_schema("config")["$defs"]["task_options"]["properties"]
    assert list(ON_DUPLICATE_MODES) == options["on_duplicate"]["enum"]


def test_publisher_and_config_use_the_one_on_duplicate_type() -> None:
    import dispatcher.publish

    assert dispatcher.publish.OnDuplicate is OnDuplicate
    for home in ("dispatcher.publish.registry", "dispatcher.config.settings"):
        assert importlib.import_module(home).OnDuplicate is OnDuplicate, home


@pytest.mark.parametrize(
    ("schema", "key", "version"),
    [("chunk-envelope", CHUNK_KEY, CHUNK_VERSION), ("signed-envelope", SIGNED_KEY, SIGNED_VERSION)],
)
def test_envelope_keys_equal_their_schemas(schema: str, key: str, version: str) -> None:
    document = load_schema(schema)  # type: ignore[arg-type]
    assert key in document["required"]
    assert document["properties"][key]["const"] == version


def test_sql_publisher_writes_the_same_envelope_keys() -> None:
    text = sql_publisher()
    assert f"'{CHUNK_KEY}', '{CHUNK_VERSION}'" in text
    assert f"'{SIGNED_KEY}', '{SIGNED_VERSION}'" in text


def test_chunking_modules_share_the_one_chunk_key() -> None:
    import dispatcher.publish.chunking
    import dispatcher.schema.chunks

    assert dispatcher.schema.chunks.CHUNK_KEY is CHUNK_KEY
    assert dispatcher.publish.chunking.CHUNK_KEY is CHUNK_KEY


def test_log_levels_are_logging_levels_from_the_most_verbose() -> None:
    assert get_args(LogLevel) == LOG_LEVELS
    known = logging.getLevelNamesMapping()
    numbers = [known[name] for name in LOG_LEVELS]
    assert numbers == sorted(numbers)
    assert len(set(numbers)) == len(LOG_LEVELS)


def test_command_line_tools_offer_the_shared_log_levels() -> None:
    from dispatcher.server import cli, ctl_parser

    [service_level] = [a for a in cli.parser()._actions if a.dest == "log_level"]
    assert tuple(service_level.choices or ()) == LOG_LEVELS
    options = ctl_parser.parser().parse_args(["set_log_level", "debug"])
    assert options.level == "DEBUG"
    with pytest.raises(SystemExit):
        ctl_parser.parser().parse_args(["set_log_level", "loud"])


def test_whole_node_ids_fit_in_application_name_after_the_prefix_and_digest() -> None:
    # PostgreSQL keeps 63 bytes of application_name; the prefix takes 19 of them, the
    # digest of the channels 10 and a slash.
    assert len(SERVICE_NAME_PREFIX) == 19
    assert MAX_WHOLE_NODE_ID_BYTES == MAX_APPLICATION_NAME_BYTES - 19 - 11 == 33
    whole = "n" * MAX_WHOLE_NODE_ID_BYTES
    name = service_application_name(whole, ["tasks"])
    assert name == f"{SERVICE_NAME_PREFIX}{channels_digest(['tasks'])}/{whole}"
    assert len(name) == MAX_APPLICATION_NAME_BYTES
    assert len(service_application_name(whole + "x")) == MAX_APPLICATION_NAME_BYTES
    assert node_id_of(service_application_name(whole + "xyz")) == whole


def test_node_id_of_reads_only_service_names() -> None:
    assert node_id_of(service_application_name("host-a", ["tasks"])) == "host-a"
    assert node_id_of("dispatcher-service:host-b") == "host-b"  # an older version's name
    assert node_id_of("dispatcher-publisher") is None
    assert node_id_of("psql") is None


def test_a_service_name_tells_which_channels_it_may_listen_on() -> None:
    name = parse_service_name(service_application_name("host-a", ["tasks", "emails"]))
    assert name is not None
    assert name.node_id == "host-a"
    assert name.may_listen_on("tasks")
    assert name.may_listen_on("emails")
    assert not name.may_listen_on("other_team")
    deaf = parse_service_name(service_application_name("host-q"))  # no pg_notify channels
    assert deaf is not None
    assert not deaf.may_listen_on("tasks")
    older = parse_service_name("dispatcher-service:host-b")
    assert older == ("host-b", None)
    assert older.may_listen_on("anything")  # cannot tell: counted, as before
    assert parse_service_name("dispatcher-queue:host-a") is None


def test_the_digest_of_channels_is_stable_and_never_misses_a_channel() -> None:
    # Services and clients of different processes (and versions) must agree on it.
    assert channels_digest([]) == "a" * CHANNELS_DIGEST_CHARS
    assert channels_digest(["tasks"]) == "aaaaqeaeaa"  # a change breaks mixed versions
    assert channels_digest(["tasks", "emails"]) == "aaaaqecebq"
    assert channels_digest(["tasks"]) == channels_digest(["tasks", "tasks"])
    channels = [f"channel_{n}" for n in range(20)]
    digest = channels_digest(channels)
    assert len(digest) == CHANNELS_DIGEST_CHARS
    assert all(digest_has_channel(digest, channel) for channel in channels)
    others = [f"other_{n}" for n in range(2000)]
    one = channels_digest(["tasks"])
    assert sum(digest_has_channel(one, other) for other in others) <= 5


def test_a_digest_too_full_to_tell_is_known_as_such() -> None:
    # A digest of many channels matches nearly any channel: with 50 channels, 86 matches
    # in 100 of channels it was not made of; with 200, all of them. Clients counted every
    # match as a service that must answer.
    for count in range(1, 5):  # 3 bits each: at most 12 of 50 set, a match to count on
        channels = [f"few_{count}_{n}" for n in range(count)]
        name = parse_service_name(service_application_name("host-f", channels))
        assert name is not None
        assert name.tells_channels
        assert digest_tells_channels(channels_digest(channels))
    channels = [f"crowded_{n}" for n in range(200)]
    crowded = parse_service_name(service_application_name("host-m", channels))
    assert crowded is not None
    assert crowded.may_listen_on("other_team")  # no way to tell from its name
    assert not crowded.tells_channels
    full = channels_digest([f"channel_{n}" for n in range(20)])
    others = [f"other_{n}" for n in range(2000)]
    assert sum(digest_has_channel(full, other) for other in others) > 200  # 1 in 10
    assert not digest_tells_channels(full)
    older = parse_service_name("dispatcher-service:host-b")
    assert older is not None
    assert older.tells_channels  # counted whatever the channel, as before


@pytest.mark.parametrize(
    ("seen", "node_id", "expected"),
    [
        ("host-a", "host-a", True),
        ("host-a", "host-ab", False),  # short enough to be whole: must be equal
        ("n" * 33, "n" * 60, True),  # cut short by PostgreSQL: its start
        ("n" * 33, "m" + "n" * 59, False),
        ("n" * 32, "n" * 60, False),
    ],
)
def test_node_ids_cut_short_match_their_start(seen: str, node_id: str, expected: bool) -> None:
    assert matches_node_id(seen, node_id) is expected
