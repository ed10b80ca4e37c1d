"""A message of megabytes is decoded off the service's event loop, in order on its channel.

Decoded on the loop, a 3 MB message held up everything for the time of its decoding: a
small message sent on another channel just after its last chunk became a job after it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from dispatcher.publish import split_message
from dispatcher.schema import sign
from support.postgres import unique_channel
from support.service import Evidence, ServiceProcess

RECORD = "support.service_tasks.record"
StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]

KEY = {"id": "ops-1", "secret": "integration secret"}


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


@pytest.mark.timeout(120)
def test_control_commands_refused_behind_a_large_message_are_answered_in_every_form(
    start_service: StartService,
    service_config: dict[str, Any],
    pg_conn: psycopg.Connection[Any],
    channel: str,
    evidence: Evidence,
) -> None:
    big = recorded(evidence.path, "big", bulk=3_000_000)
    service_config["security"] = {"keys": [KEY]}
    # The large message fills what may be held behind it: what comes after it is refused.
    service_config["service"]["limits"] = {"max_held_bytes": len(big)}
    start_service(service_config)

    def signed(text: str) -> str:
        return sign(text, KEY["id"], KEY["secret"].encode(), time.time())

    forms: dict[str, Callable[[str], list[str]]] = {
        "plain": lambda text: [text],
        "signed": lambda text: [signed(text)],
        "chunked": lambda text: split_message(text, 200),
        "signed_chunked": lambda text: split_message(signed(text), 200),
    }
    payloads = []
    for form, carried in forms.items():
        pg_conn.execute(f'LISTEN "{channel}_{form}"')
        command = {"control": "alive", "reply_to": f"{channel}_{form}"}
        payloads += carried(json.dumps(command))
    with pg_conn.transaction():  # delivered together, in this order, once committed
        for payload in [*split_message(big), *payloads]:
            pg_conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    replies = {
        notify.channel: json.loads(notify.payload)
        for notify in pg_conn.notifies(timeout=30, stop_after=len(forms))
    }
    assert sorted(replies) == sorted(f"{channel}_{form}" for form in forms)
    for reply in replies.values():
        assert reply["error"].startswith("too many messages held behind large ones"), reply
