"""Per-broker control allow-lists (``brokers.<name>.allow_control``)."""

from __future__ import annotations

from dispatcher.config import load_settings
from dispatcher.server.allowlist import ControlAllowList


def test_only_listed_commands_pass_over_a_broker_with_a_list() -> None:
    brokers = load_settings(
        {
            "version": 1,
            "brokers": {
                "pg_notify": {"conninfo": "dbname=x", "allow_control": ["alive", "statsu"]},
                "socket": {"path": "d.sock"},
            },
        }
    ).brokers
    allow = ControlAllowList(brokers)
    assert allow.refusal("alive", "pg_notify") is None
    assert allow.refusal("cancel", "pg_notify") == (
        "control command 'cancel' is not allowed over pg_notify (brokers.pg_notify.allow_control)"
    )
    assert allow.refusal("cancel", "socket") is None  # no list: every command
    assert allow.refusal("cancel", None) is None  # made inside the service
    assert allow.unknown({"alive", "status", "cancel"}) == [("pg_notify", "statsu")]


def test_an_empty_list_allows_nothing() -> None:
    brokers = load_settings(
        {"version": 1, "brokers": {"socket": {"path": "d.sock", "allow_control": []}}}
    ).brokers
    assert ControlAllowList(brokers).refusal("alive", "socket") == (
        "control command 'alive' is not allowed over socket (brokers.socket.allow_control)"
    )
