"""Chunk envelopes: every slice fits one NOTIFY, and the slices join back in any order."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.publish import ChunkAssembler, split_message
from dispatcher.publish.chunking import ChunkError
from dispatcher.schema import MAX_NOTIFY_PAYLOAD_BYTES, validator


@settings(max_examples=60, deadline=None)
@given(
    value=st.text(min_size=0, max_size=30_000),
    limit=st.integers(min_value=200, max_value=MAX_NOTIFY_PAYLOAD_BYTES),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_split_then_assemble_in_any_order(value: str, limit: int, seed: int) -> None:
    text = json.dumps({"task": "a.b", "args": [value]})
    envelopes = split_message(text, limit=limit)
    for envelope in envelopes:
        assert len(envelope.encode()) <= limit
        validator("chunk-envelope").validate(json.loads(envelope))
    random.Random(seed).shuffle(envelopes)
    assembler = ChunkAssembler()
    results = [assembler.add(json.loads(envelope)) for envelope in envelopes]
    assert results.count(None) == len(envelopes) - 1
    assert next(r for r in results if r is not None) == text
    assert len(assembler) == 0


def test_worst_case_characters_still_fit() -> None:
    text = json.dumps(["\x01" * 5000, '"' * 5000, "\\" * 5000])
    for envelope in split_message(text):
        assert len(envelope) <= MAX_NOTIFY_PAYLOAD_BYTES


def test_partial_messages_expire() -> None:
    now = [100.0]
    assembler = ChunkAssembler(expiry=30, clock=lambda: now[0])
    first, second = (json.loads(e) for e in split_message("x" * 300, limit=250, message_id="m"))
    assert assembler.add(first) is None
    now[0] += 29
    assert assembler.expire() == []
    now[0] += 2
    assert assembler.expire() == ["m"]
    assert len(assembler) == 0
    assert assembler.add(second) is None  # a late slice of an expired message: ignored
    assert (len(assembler), assembler.late_slices) == (0, 1)


def test_contradicting_envelopes_are_refused() -> None:
    assembler = ChunkAssembler()
    base = {"__dispatcherd_chunk__": "v1", "message_id": "m", "payload": "x"}
    with pytest.raises(ChunkError, match="index 2 is not below its total 2"):
        assembler.add({**base, "index": 2, "total": 2})
    assert assembler.add({**base, "index": 0, "total": 3}) is None
    with pytest.raises(ChunkError, match="says 2 chunks, earlier ones said 3"):
        assembler.add({**base, "index": 1, "total": 2})
    assert len(assembler) == 0


def test_too_small_a_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="leaves no room"):
        split_message("{}", limit=50)
