"""Whatever the schemas accept, the intake dispatches or rejects by name: never a bug.

Messages are generated at the edges the schemas allow (huge integers, integral floats,
nesting just under the limit, NUL, line and paragraph separators, escaped surrogates, long
strings), sent as one payload or as chunk envelopes (in any order, with integral-float
indexes), and each must end as a job for the pool or as a named rejection.
"""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dispatcher.schema import MAX_NESTING_DEPTH, decode_json, exceeds_depth, validator
from dispatcher.schema.chunks import split_message
from dispatcher.server.intake import Intake
from dispatcher.server.jobs import Job
from dispatcher.server.stats import ServiceStats
from support.examples import examples

REGISTERED = "app.tasks.work"
NAMED_REASONS = frozenset({"unknown_task", "invalid_chunk"})
"""What a message the schema accepts may still be refused for (an unregistered name; a
chunked one whose slices hold a lone surrogate)."""

YEAR_9999 = 253402300799
ONE_YEAR = 31536000


class RecordingPool:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def submit(self, job: Job) -> None:
        self.jobs.append(job)


any_character = st.characters(exclude_categories=())  # surrogates and NUL included
odd_text = st.one_of(
    st.text(any_character, max_size=20),
    st.sampled_from(["\x00", "\n", "\r\n", "\u2028", "\u2029", "\ud800", "\udfff", "\ufeff"]),
    st.builds(
        lambda c, n: c * n, st.sampled_from(["x", "é", "\U0001f600", "\\"]), st.integers(0, 30_000)
    ),
)
huge_integer = st.integers(min_value=-(10**4000), max_value=10**4000)
scalar = st.one_of(
    st.none(),
    st.booleans(),
    huge_integer,
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**60), 2**60).map(float),
    odd_text,
)
json_value = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)


def nested_list(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


deep_args = st.builds(
    nested_list, st.integers(MAX_NESTING_DEPTH - 3, MAX_NESTING_DEPTH - 2), scalar
)
seconds = st.one_of(
    st.integers(0, ONE_YEAR), st.floats(0, ONE_YEAR), st.integers(0, ONE_YEAR).map(float)
)
task_names = st.one_of(
    st.just(REGISTERED), st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,20}(\.[A-Za-z_]\w{0,8}){0,3}\Z")
)


@st.composite
def task_messages(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {"task": draw(task_names)}
    optional = {
        "uuid": st.text(any_character, min_size=1, max_size=255),
        "args": st.one_of(st.lists(json_value, max_size=4), deep_args.map(lambda a: [a])),
        "kwargs": st.dictionaries(odd_text, json_value, max_size=4),
        "time_pub": st.one_of(
            st.integers(0, YEAR_9999), st.floats(0, YEAR_9999), st.just(float(YEAR_9999))
        ),
        "timeout": seconds,
        "delay": seconds,
        "on_duplicate": st.sampled_from(["parallel", "discard", "serial", "queue_one"]),
        "bind": st.booleans(),
        "guid": odd_text,
        "channel": odd_text,
        "extra_key": json_value,
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            message[key] = draw(strategy)
    return message


def encodings(message: dict[str, Any], rng: random.Random) -> list[list[str]]:
    """The ways a publisher may send *message*: lists of payloads, in arrival order."""
    ascii_text = json.dumps(message)
    ways = [[ascii_text], [json.dumps(message, indent=1)]]
    raw = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    if not any("\ud800" <= c <= "\udfff" for c in raw):  # cannot travel as UTF-8 otherwise
        ways.append([raw])
    envelopes = split_message(ascii_text, limit=rng.choice([300, 2000, 7999]))
    rng.shuffle(envelopes)
    ways.append(envelopes)
    as_floats = []
    for envelope in envelopes:
        decoded = json.loads(envelope)
        decoded["index"], decoded["total"] = float(decoded["index"]), float(decoded["total"])
        as_floats.append(json.dumps(decoded))
    ways.append(as_floats)
    return ways


# ~20 s, near 80 on a loaded machine (300 pass; a quarter more discarded by assume()).
@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=task_messages(), seed=st.integers(0, 2**32))
def test_every_accepted_message_is_dispatched_or_rejected_by_name(
    message: dict[str, Any], seed: int
) -> None:
    assume(validator("task-message").is_valid(message))
    assume(not exceeds_depth(message))
    for payloads in encodings(message, random.Random(seed)):
        pool, stats = RecordingPool(), ServiceStats()
        intake = Intake(pool, stats, chunk_expiry=60)  # type: ignore[arg-type]
        intake.catalogue.learn(frozenset({REGISTERED}))
        for payload in payloads:
            intake.receive(payload, "chan")
        assert "internal_error" not in stats.rejected
        if pool.jobs:
            [job] = pool.jobs
            assert stats.rejected == {}
            sent = decode_json(job.line, MAX_NESTING_DEPTH + 1)  # the worker's line wraps it
            assert sent["message"]["task"] == message["task"]
        else:
            assert sum(stats.rejected.values()) == 1
            assert set(stats.rejected) <= NAMED_REASONS, stats.rejected
            assert message["task"] != REGISTERED or "invalid_chunk" in stats.rejected
