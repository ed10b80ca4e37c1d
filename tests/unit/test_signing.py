"""Signed envelopes: signing, verifying, replays, and what the intake does with them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import Security, SigningKey
from dispatcher.schema import SIGNED_KEY, SignatureError, sign, validator, verify
from dispatcher.schema.chunks import split_message
from dispatcher.server.intake import Intake
from dispatcher.server.jobs import Job
from dispatcher.server.origin import INTERNAL, PG_NOTIFY, Origin
from dispatcher.server.rejection import Rejected
from dispatcher.server.signatures import ReplayGuard, SignatureCheck
from dispatcher.server.stats import ServiceStats
from support.paths import EXAMPLES

NOW = 1_732_876_000.0
KEYS = {"k1": b"first secret", "k2": b"second secret"}
TASK = '{"task":"app.tasks.work","uuid":"u1","args":[1]}'


def envelope(text: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(text)
    return decoded


def test_sign_makes_a_valid_envelope_that_verifies() -> None:
    text = sign(TASK, "k1", KEYS["k1"], NOW)
    assert text.isascii()
    signed = envelope(text)
    assert validator("signed-envelope").is_valid(signed)
    assert signed[SIGNED_KEY] == "v1"
    assert (signed["key_id"], signed["signed_at"], signed["body"]) == ("k1", f"{NOW:.6f}", TASK)
    verified = verify(signed, KEYS, NOW + 1, max_age=300)
    assert (verified.body, verified.key_id, verified.signed_at) == (TASK, "k1", NOW)
    assert verified.signature == signed["signature"]


def test_non_ascii_body_is_signed_as_utf8() -> None:
    body = '{"task":"app.tasks.greet","args":["Grüße, 世界"]}'
    signed = envelope(sign(body, "k1", KEYS["k1"], NOW))
    assert verify(signed, KEYS, NOW, max_age=300).body == body


@pytest.mark.parametrize(
    ("change", "reason", "text"),
    [
        ({"body": TASK.replace("[1]", "[2]")}, "bad_signature", "bad signature (key 'k1')"),
        ({"signed_at": f"{NOW + 1:.6f}"}, "bad_signature", "bad signature (key 'k1')"),
        ({"key_id": "k2"}, "bad_signature", "bad signature (key 'k2')"),
        ({"key_id": "k9"}, "unknown_key", "signed with unknown key 'k9'"),
        ({"signature": "0" * 64}, "bad_signature", "bad signature"),
        ({"signature": "0" * 63}, "invalid_signed_envelope", "signature: '000"),
        ({SIGNED_KEY: "v2"}, "invalid_signed_envelope", "__dispatcher_signed__: must be 'v1'"),
        ({"extra": 1}, "invalid_signed_envelope", "extra: unknown key"),
        (
            {"body": "1"},
            "invalid_signed_envelope",
            "body: '1' is not a valid signed body: too short (at least 2 characters)",
        ),
        (
            {"body": TASK.replace("[1]", '["\ud800"]')},
            "invalid_signed_envelope",
            "body: holds a lone surrogate",
        ),
    ],
)
def test_tampered_envelopes_are_refused(change: dict[str, Any], reason: str, text: str) -> None:
    signed = {**envelope(sign(TASK, "k1", KEYS["k1"], NOW)), **change}
    with pytest.raises(SignatureError) as caught:
        verify(signed, KEYS, NOW, max_age=300)
    assert caught.value.reason == reason
    assert text in str(caught.value)


@pytest.mark.parametrize(
    ("now", "text"),
    [
        (NOW + 300.5, "signed 300.5 s ago, more than max_age (300 s) away"),
        (NOW - 301, "signed 301.0 s in the future, more than max_age (300 s) away"),
    ],
)
def test_old_and_future_signatures_are_stale(now: float, text: str) -> None:
    signed = envelope(sign(TASK, "k1", KEYS["k1"], NOW))
    assert verify(signed, KEYS, NOW + 300, max_age=300).body == TASK  # the edge is valid
    with pytest.raises(SignatureError, match=r"^signature out of date: ") as caught:
        verify(signed, KEYS, now, max_age=300)
    assert caught.value.reason == "stale_signature"
    assert text in str(caught.value)


def test_rotation_verifies_with_any_key_and_signs_with_sign_with() -> None:
    old, new = SigningKey("old", b"old secret"), SigningKey("new", b"new secret")
    security = Security(keys=(old, new), sign_with="new")
    assert security.signing_key == new
    assert Security(keys=(old, new)).signing_key == old  # default: the first key
    assert Security().signing_key is None
    for key in (old, new):
        signed = envelope(sign(TASK, key.id, key.secret, NOW))
        assert verify(signed, security.secrets, NOW, max_age=300).key_id == key.id


def test_secrets_stay_out_of_reprs() -> None:
    security = Security(keys=(SigningKey("k1", b"hunter2-secret"),))
    assert "hunter2" not in repr(security)
    assert "k1" in repr(security)


@pytest.mark.parametrize("path", sorted((EXAMPLES / "signed-envelope" / "valid").glob("*.json")))
def test_conformance_examples_are_signed_with_the_example_key(path: Path) -> None:
    """Other implementations check their HMAC against these (secret: ``example-secret``)."""
    signed = envelope(path.read_text(encoding="utf-8"))
    keys = {signed["key_id"]: b"example-secret"}
    assert verify(signed, keys, float(signed["signed_at"]), max_age=1).body == signed["body"]


def test_replay_guard_refuses_a_second_time_and_forgets_when_stale() -> None:
    guard = ReplayGuard(max_age=10)
    assert guard.first_time("a", signed_at=100, now=100)
    assert not guard.first_time("a", signed_at=100, now=105)
    assert guard.first_time("b", signed_at=104, now=111)  # "a" is stale now: forgotten
    assert len(guard) == 1
    assert guard.forgotten == 0


def test_replay_guard_is_bounded_and_counts_what_it_forgets_early() -> None:
    guard = ReplayGuard(max_age=300, capacity=2)
    for signature in ("a", "b", "c"):
        assert guard.first_time(signature, signed_at=100, now=100)
    assert (len(guard), guard.forgotten) == (2, 1)
    assert guard.first_time("a", signed_at=100, now=100)  # the oldest was forgotten
    assert not guard.first_time("c", signed_at=100, now=100)


# -- on receipt: SignatureCheck and the intake ----------------------------------------------


def check(*required: str, now: float = NOW) -> SignatureCheck:
    security = Security(
        keys=(SigningKey("k1", KEYS["k1"]),),
        require_signed=required,  # type: ignore[arg-type]
    )
    return SignatureCheck(security, clock=lambda: now)


def decode(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise Rejected("not_object", "not an object")
    return value


def test_unsigned_messages_pass_unless_their_kind_is_required() -> None:
    control = {"control": "alive", "reply_to": "r"}
    task = envelope(TASK)
    assert check().open(TASK, task, PG_NOTIFY, decode) == (TASK, task)
    assert check("control").open(TASK, task, PG_NOTIFY, decode) == (TASK, task)
    with pytest.raises(Rejected) as caught:
        check("control").open("{}", control, PG_NOTIFY, decode)
    assert caught.value.reason == "unsigned"
    assert caught.value.control == control  # answered with the error on reply_to
    assert str(caught.value) == (
        "unsigned control message over pg_notify: this service requires control messages "
        "to be signed (security.require_signed)"
    )
    with pytest.raises(Rejected, match="unsigned task message over socket"):
        check("task").open(TASK, task, Origin("socket"), decode)
    # Made inside the service (producers, the run command): no signature needed.
    assert check("task", "control").open(TASK, task, INTERNAL, decode) == (TASK, task)


def test_an_unsigned_run_command_is_refused_where_tasks_must_be_signed() -> None:
    """``run`` submits the task message it carries: it may not carry one in unsigned where
    task messages must be signed, even when control messages need no signature."""
    run = {"control": "run", "control_data": envelope(TASK), "reply_to": "r"}
    for origin in (PG_NOTIFY, Origin("socket")):
        with pytest.raises(Rejected) as caught:
            check("task").open(json.dumps(run), run, origin, decode)
        assert caught.value.reason == "unsigned"
        assert caught.value.control == run  # answered with the error on reply_to
        assert str(caught.value) == (
            f"unsigned run command over {origin.broker}: it submits a task, and this service "
            "requires task messages to be signed (security.require_signed)"
        )
    alive = {"control": "alive"}
    assert check("task").open("{}", alive, PG_NOTIFY, decode) == ("{}", alive)
    assert check().open("{}", run, PG_NOTIFY, decode) == ("{}", run)
    signed = sign(json.dumps(run), "k1", KEYS["k1"], NOW)
    assert check("task").open(signed, envelope(signed), PG_NOTIFY, decode)[1] == run


def test_a_signed_message_is_opened_once() -> None:
    text = sign(TASK, "k1", KEYS["k1"], NOW)
    opener = check("task")
    assert opener.open(text, envelope(text), PG_NOTIFY, decode) == (TASK, envelope(TASK))
    with pytest.raises(Rejected, match="replayed message: signature ") as caught:
        opener.open(text, envelope(text), PG_NOTIFY, decode)
    assert caught.value.reason == "replayed"
    assert opener.summary() == {
        "keys": ["k1"],
        "require_signed": ["task"],
        "max_age": 300,
        "remembered": 1,
        "forgotten": 0,
    }


def test_a_stored_row_is_opened_at_every_delivery_and_its_envelope_not_again_by_notify() -> None:
    """A durable row's retries are no replays, but its envelope, read from the table and sent
    by NOTIFY within max_age, is one."""
    text = sign(TASK, "k1", KEYS["k1"], NOW)
    row = Origin("pg_queue", receipt="1", authenticated=True)
    opener = check("task")
    for _attempt in range(2):
        assert opener.open(text, envelope(text), row, decode) == (TASK, envelope(TASK))
    with pytest.raises(Rejected) as caught:
        opener.open(text, envelope(text), PG_NOTIFY, decode)
    assert caught.value.reason == "replayed"
    # A row signed before max_age is run, and not remembered: a NOTIFY of it is stale.
    old = sign(TASK, "k1", KEYS["k1"], NOW - 301)
    assert opener.open(old, envelope(old), row, decode) == (TASK, envelope(TASK))
    assert opener.summary()["remembered"] == 1


def test_a_stored_control_row_is_checked_as_a_notify_message_is() -> None:
    """INSERT on the jobs table does not grant control: a control row must be signed where
    control messages must be, within max_age and once."""
    control = '{"control":"cancel","control_data":{"all":true}}'
    row = Origin("pg_queue", receipt="1", authenticated=True)
    opener = check("task", "control")
    with pytest.raises(Rejected) as caught:
        opener.open(control, envelope(control), row, decode)
    assert (caught.value.reason, caught.value.control) == ("unsigned", envelope(control))
    assert str(caught.value) == (
        "unsigned control message over pg_queue: this service requires control messages to "
        "be signed (security.require_signed), stored as rows too: INSERT on the jobs table "
        "does not grant control commands"
    )
    assert opener.open(TASK, envelope(TASK), row, decode) == (TASK, envelope(TASK))
    text = sign(control, "k1", KEYS["k1"], NOW)
    assert opener.open(text, envelope(text), row, decode) == (control, envelope(control))
    for copy, reason in (
        (text, "replayed"),
        (sign(control, "k1", KEYS["k1"], NOW - 301), "stale_signature"),
    ):
        with pytest.raises(Rejected) as caught:
            opener.open(copy, envelope(copy), row, decode)
        assert (caught.value.reason, caught.value.control) == (reason, envelope(control))


def test_a_refused_signed_control_message_is_answered_when_its_body_can_be_read() -> None:
    body = '{"control":"cancel","reply_to":"r1","control_data":{"all":true}}'
    forged = envelope(sign(body, "k1", b"guessed secret", NOW))
    with pytest.raises(Rejected) as caught:
        check().open("", forged, PG_NOTIFY, decode)
    assert caught.value.reason == "bad_signature"
    assert caught.value.control == json.loads(body)


def test_the_body_may_not_be_another_envelope() -> None:
    inner = sign(TASK, "k1", KEYS["k1"], NOW)
    for body in (inner, split_message(TASK * 400)[0]):
        text = sign(body, "k1", KEYS["k1"], NOW)
        with pytest.raises(Rejected, match="not another envelope") as caught:
            check().open(text, envelope(text), PG_NOTIFY, decode)
        assert caught.value.reason == "invalid_signed_envelope"


class RecordingPool:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def submit(self, job: Job) -> None:
        self.jobs.append(job)


def test_intake_runs_the_body_of_a_chunked_signed_message_and_refuses_unsigned_tasks() -> None:
    pool, stats = RecordingPool(), ServiceStats()
    intake = Intake(pool, stats, chunk_expiry=60, signatures=check("task"))  # type: ignore[arg-type]
    intake.catalogue.learn(frozenset({"app.tasks.work"}))
    body = json.dumps({"task": "app.tasks.work", "uuid": "big", "args": ["x" * 20_000]})
    for chunk in split_message(sign(body, "k1", KEYS["k1"], NOW)):
        intake.receive(chunk, "c")
    intake.receive(TASK, "c")
    [job] = pool.jobs
    assert json.loads(job.line)["message"] == json.loads(body)
    assert stats.rejected == {"unsigned": 1}
    assert stats.received == 1


def test_intake_answers_a_refused_control_message_through_its_origin() -> None:
    answered: list[tuple[dict[str, Any], str, Origin, Rejected | None]] = []
    intake = Intake(
        RecordingPool(),  # type: ignore[arg-type]
        ServiceStats(),
        chunk_expiry=60,
        on_control=lambda *call: answered.append(call),
        signatures=check("control"),
    )
    socket = Origin("socket")
    intake.receive('{"control": "alive", "reply_to": "r"}', "socket:1", socket)
    [(message, channel, origin, refused)] = answered
    assert (message, channel, origin) == ({"control": "alive", "reply_to": "r"}, "socket:1", socket)
    assert refused is not None
    assert refused.reason == "unsigned"
