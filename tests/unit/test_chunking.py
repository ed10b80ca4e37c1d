"""Chunk envelopes: every slice fits one NOTIFY, and the slices join back in any order."""

from __future__ import annotations

import json
import random
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.publish import ChunkAssembler, split_message
from dispatcher.publish.chunking import ChunkError
from dispatcher.schema import MAX_NOTIFY_PAYLOAD_BYTES, validator
from support.examples import examples


@settings(max_examples=examples(60), deadline=None)
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


def _first_slice(message_id: str, total: int = 3, payload: str = "x" * 100) -> dict[str, object]:
    return {
        "__dispatcherd_chunk__": "v1",
        "message_id": message_id,
        "index": 0,
        "total": total,
        "payload": payload,
    }


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_integral_float_index_and_total_join_like_integers() -> None:
    assembler = ChunkAssembler()
    base = {"__dispatcherd_chunk__": "v1", "message_id": "m"}
    assert assembler.add({**base, "index": 1.0, "total": 2.0, "payload": "b"}) is None
    assert assembler.add({**base, "index": 0, "total": 2, "payload": "a"}) == "ab"
    assert assembler.add({**base, "index": 0.0, "total": 1.0, "payload": "c"}) == "c"


def test_the_oldest_partial_is_evicted_beyond_the_message_cap() -> None:
    clock = FakeClock()
    assembler = ChunkAssembler(clock=clock, max_messages=3)
    for name in "abcd":
        clock.now += 1
        assert assembler.add(_first_slice(name)) is None
    assert len(assembler) == 3
    assert (assembler.take_evicted(), assembler.evictions) == (["a"], 1)
    assert assembler.take_evicted() == []
    assert assembler.add({**_first_slice("a"), "index": 1}) is None  # late: ignored
    assert assembler.late_slices == 1
    for index in (1, 2):  # the survivors still complete
        result = assembler.add({**_first_slice("b"), "index": index, "payload": str(index)})
    assert result == "x" * 100 + "12"


def test_memory_is_counted_per_character_width_and_the_oldest_go_first() -> None:
    ascii_slice, wide_slice = "a" * 1000, "\U0001f600" * 1000  # 1 and 4 bytes a character
    assert sys.getsizeof(wide_slice) > 3 * sys.getsizeof(ascii_slice)
    assembler = ChunkAssembler(max_memory=sys.getsizeof(wide_slice) + 2_000)
    assembler.add(_first_slice("m1", payload=ascii_slice))
    assembler.add(_first_slice("m2", payload=ascii_slice))
    held = assembler.memory
    assert held >= 2 * sys.getsizeof(ascii_slice)
    assembler.add(_first_slice("m3", payload=wide_slice))
    assert assembler.memory <= assembler.max_memory
    assert assembler.take_evicted() == ["m1"]
    assembler.add(_first_slice("m4", payload=wide_slice))
    assert assembler.take_evicted() == ["m2", "m3"]
    assert len(assembler) == 1


def test_a_message_bigger_than_the_memory_cap_evicts_itself() -> None:
    assembler = ChunkAssembler(max_memory=5_000)
    assembler.add(_first_slice("small"))
    assembler.add(_first_slice("big", payload="y" * 3_000))
    assert assembler.add({**_first_slice("big", payload="y" * 3_000), "index": 1}) is None
    assert assembler.take_evicted() == ["small", "big"]
    assert (len(assembler), assembler.memory) == (0, 0)


def test_memory_is_released_when_messages_complete_expire_or_are_refused() -> None:
    clock = FakeClock()
    assembler = ChunkAssembler(expiry=10, clock=clock, max_bytes=150)
    assembler.add(_first_slice("done", total=2, payload="d"))
    assert assembler.add({**_first_slice("done", total=2, payload="e"), "index": 1}) == "de"
    assembler.add(_first_slice("old"))
    clock.now += 11
    assert assembler.expire() == ["old"]
    assembler.add(_first_slice("contradicts"))
    with pytest.raises(ChunkError):
        assembler.add({**_first_slice("contradicts", total=4), "index": 1})
    assembler.add(_first_slice("large"))
    with pytest.raises(ChunkError, match="exceeds 150 bytes"):
        assembler.add({**_first_slice("large"), "index": 1})
    assert (len(assembler), assembler.memory) == (0, 0)


def test_a_repeated_slice_replaces_the_first_without_counting_twice() -> None:
    assembler = ChunkAssembler()
    assembler.add(_first_slice("m"))
    held = assembler.memory
    assembler.add(_first_slice("m", payload="z" * 100))
    assert assembler.memory == held
    assembler.add({**_first_slice("m"), "index": 1, "payload": ""})
    assert assembler.add({**_first_slice("m"), "index": 2, "payload": ""}) == "z" * 100


def test_expire_stops_at_the_first_partial_still_young() -> None:
    clock = FakeClock()
    assembler = ChunkAssembler(expiry=10, clock=clock)
    for name in ("a", "b", "c"):
        assembler.add(_first_slice(name))
        clock.now += 5
    assert assembler.expire() == ["a"]  # started 15 s ago; b 10 s ago is not older
    clock.now += 0.5
    assert assembler.expire() == ["b"]
    assert len(assembler) == 1


def test_cost_per_envelope_does_not_grow_with_pending_partials() -> None:
    # 50,000 first slices through an assembler holding 10,000: a scan of every partial per
    # envelope would take minutes; bounded work takes a fraction of a second.
    assembler = ChunkAssembler(max_messages=10_000, max_memory=1 << 40)
    started = time.process_time()
    for number in range(50_000):
        assembler.add(_first_slice(f"m{number}", total=10_000, payload="p"))
        assembler.expire()
    assert time.process_time() - started < 10
    assert (len(assembler), assembler.evictions) == (10_000, 40_000)


def test_surrogate_pairs_cut_across_slices_are_joined_and_lone_ones_refused() -> None:
    assembler = ChunkAssembler()
    base = {"__dispatcherd_chunk__": "v1", "message_id": "m", "total": 2}
    halves = json.loads('["[\\"\\ud83d", "\\ude00\\"]"]')  # as a UTF-16 sender cuts them
    assert assembler.add({**base, "index": 0, "payload": halves[0]}) is None
    assert assembler.add({**base, "index": 1, "payload": halves[1]}) == '["\U0001f600"]'
    with pytest.raises(ChunkError, match="holds a lone surrogate"):
        assembler.add({**base, "message_id": "n", "total": 1, "index": 0, "payload": "\ud800"})


def test_counters_and_partials_snapshot_in_dispatcherd_shape() -> None:
    now = [100.0]
    assembler = ChunkAssembler(clock=lambda: now[0])
    envelopes = [json.loads(e) for e in split_message("x" * 5000, limit=2048, message_id="m1")]
    assembler.add(envelopes[0])
    now[0] = 102.5
    assert assembler.partials() == {
        "m1": {
            "seconds_since_start": 2.5,
            "expected_total": len(envelopes),
            "chunks": [{"chunk_id": 0, "length": len(envelopes[0]["payload"])}],
        }
    }
    for envelope in envelopes[1:]:
        assembler.add(envelope)
    [single] = [json.loads(e) for e in split_message("{}", message_id="m2")]
    assert assembler.add(single) == "{}"
    assert (assembler.received, assembler.assembled) == (len(envelopes) + 1, 2)
    assert assembler.partials() == {}
