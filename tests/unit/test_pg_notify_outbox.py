"""The pg_notify broker's outbox: the replies waiting go together, none folded into another."""

from __future__ import annotations

import json

from dispatcher.schema import MAX_NOTIFY_PAYLOAD_BYTES, split_message
from dispatcher.server.brokers.pg_notify.outbox import MAX_STATEMENT_BYTES, Outgoing, statements


def reply(channel: str, text: str) -> Outgoing:
    return Outgoing([(channel, text)])


def test_the_replies_waiting_go_in_one_statement_in_order() -> None:
    waiting = [reply("r1", '{"node_id":"a"}'), reply("r2", '{"error":"no","node_id":"a"}')]
    [statement] = statements(waiting)
    assert statement.replies == waiting
    assert statement.messages == [("r1", '{"node_id":"a"}'), ("r2", '{"error":"no","node_id":"a"}')]


def test_copies_of_one_reply_on_one_channel_stay_apart_and_read_the_same() -> None:
    # PostgreSQL would deliver identical NOTIFYs of one transaction once: a client that
    # sent 100 commands to one reply_to would count one reply.
    same = '{"error":"too many","node_id":"a"}'
    [statement] = statements([reply("r", same) for _ in range(100)] + [reply("s", same)])
    payloads = [payload for channel, payload in statement.messages if channel == "r"]
    assert len(set(payloads)) == 100
    assert all(json.loads(payload) == json.loads(same) for payload in payloads)
    assert statement.messages[-1] == ("s", same)  # another channel: no copy of it there


def test_a_statement_holds_a_bounded_size_and_a_large_reply_goes_whole() -> None:
    text = json.dumps({"x": "y" * (MAX_STATEMENT_BYTES // 2)})
    chunked = Outgoing([("r", chunk) for chunk in split_message(text)])
    small = [reply("r", f'{{"n":{n}}}') for n in range(3)]
    made = statements([small[0], chunked, small[1], chunked, small[2]])
    assert [s.replies for s in made] == [[small[0], chunked, small[1]], [chunked, small[2]]]
    assert all(s.size <= MAX_STATEMENT_BYTES for s in made)


def test_a_copy_that_spaces_would_make_too_long_goes_in_the_next_statement() -> None:
    longest = json.dumps({"x": "y" * (MAX_NOTIFY_PAYLOAD_BYTES - 9)})
    assert len(longest) == MAX_NOTIFY_PAYLOAD_BYTES
    first, second = reply("r", longest), reply("r", longest)
    assert [s.messages for s in statements([first, second])] == [
        [("r", longest)],
        [("r", longest)],
    ]


def test_nothing_waiting_makes_no_statement() -> None:
    assert statements([]) == []
