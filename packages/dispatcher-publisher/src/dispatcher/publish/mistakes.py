"""Warnings about likely mistakes in a submission: a queue no service serves, a mistyped name.

Both go to the ``dispatcher.publish`` logger at WARNING, once per name: the submission still
goes ahead (the name may be right for a service this config does not describe). Each check
runs off the hot path: the queue's when its route is first found under a config, the task
name's behind one set look-up.
"""

from __future__ import annotations

import difflib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from dispatcher.config import Settings
from dispatcher.publish import interception
from dispatcher.publish.errors import InvalidSubmission, PublishError
from dispatcher.publish.per_config import PerConfig
from dispatcher.publish.registry import registry
from dispatcher.publish.routing import broker_for
from dispatcher.schema import InvalidArgumentType

logger = logging.getLogger("dispatcher.publish")

TYPO_MIN_WORD: Final = 5
"""The shortest word of a queue's name a one-character slip in which is taken for a typo:
a slip in a shorter one makes another word as often (``orders_us``, ``orders_uk``)."""

TYPO_MIN_WORD_TWO_SLIPS: Final = 8
"""The shortest word of a queue's name two slips in which are taken for a typo."""

_WORDS: Final = re.compile(r"[0-9]+|[^\W\d_]+")
"""The words of a queue's name: runs of letters, runs of digits (separators and case aside)."""

TASK_NAME_CUTOFF: Final = 0.75
"""How alike two parts of task names must be to suggest one for the other (``sned`` and
``send``: 0.75; ``nope`` and ``slow``: 0.25)."""

MAX_REMEMBERED_NAMES: Final = 4096
"""Names remembered as checked; past that they are forgotten (and may be warned about again)."""

_checked_queues: PerConfig[dict[str, str | None]] = PerConfig(lambda settings: {})
"""The queues checked under each config used lately, and the refusal of each (if any)."""
_checked_tasks: set[str] = set()


def close_name(name: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The candidate closest to *name* when one is close enough to be a typo of it.

    *cutoff* is the least similarity, from 0 to 1, of a candidate taken.
    """
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=cutoff)
    return found[0] if found else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the candidate close to *name*, else ``""``."""
    close = close_name(name, candidates)
    return "" if close is None else f"; did you mean {close!r}?"


def close_task_name(
    name: str,
    names: Iterable[str],
    deadline: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> str | None:
    """The task name among *names* that *name* is likely a typo of, if there is one.

    Dotted names are compared part by part, so that sharing a module does not make two
    names alike (``tasks.sleep`` is no suggestion for ``tasks.nope``). Among the names of
    *name*'s module, the last parts are compared (``send_confirmaton``, ``send_confirmation``);
    among the others, the modules and the last parts both must be close (``myap.tasks.x``,
    ``myapp.tasks.x``), and a name of the same module is preferred.

    Each comparison costs up to a fraction of a millisecond (long names), so thousands of
    names cost up to a second: with a *deadline* (a time of *clock*), the search gives up
    once it has passed, checked before each comparison.

    :raises TimeoutError: when *deadline* passed before every name was compared.
    """
    module, _, last = name.rpartition(".")
    best: tuple[bool, float] | None = None
    found: str | None = None
    for candidate in sorted(names):  # of equally close names, the first in order
        if deadline is not None and clock() >= deadline:
            raise TimeoutError(f"no task name close to {name!r} found in time")
        candidate_module, _, candidate_last = candidate.rpartition(".")
        score = _similarity(last, candidate_last)
        same_module = candidate_module == module
        if not same_module and score >= TASK_NAME_CUTOFF:
            score = min(score, _similarity(module, candidate_module))
        if score < TASK_NAME_CUTOFF:
            continue
        rank = (same_module, score)
        if best is None or rank > best:
            best, found = rank, candidate
    return found


def did_you_mean_task(name: str, names: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the task name close to *name* (:func:`close_task_name`)."""
    close = close_task_name(name, names)
    return "" if close is None else f"; did you mean {close!r}?"


def _similarity(text: str, other: str) -> float:
    """How alike *text* and *other* are, from 0 to 1 (``difflib``'s ratio)."""
    matcher = difflib.SequenceMatcher(None, text, other)
    if matcher.real_quick_ratio() < TASK_NAME_CUTOFF or matcher.quick_ratio() < TASK_NAME_CUTOFF:
        return 0.0  # cheap upper bounds, as difflib.get_close_matches uses them
    return matcher.ratio()


def is_typo_of(name: str, meant: str) -> bool:
    """Whether the queue name *name* is likely a slip of the fingers for *meant*.

    That is, the same words but for case and separators (``Payments``, ``payments-eu`` for
    ``payments_eu``, ``orderssync`` for ``orders_sync``), or the same words but one, which
    is one slip away from its counterpart (a letter missing, extra, wrong, or two letters
    swapped: ``paymnets``, ``payment``), two in a long one (``notifcaitons``). Not another
    word: one with other digits (``tenant1_tasks``, ``tenant2_tasks``), one a letter or two
    longer in front (``orders_sync``, ``orders_async``), a short one (``orders_us``,
    ``orders_uk``), words added, left out or in another order.
    """
    if name == meant:
        return False
    words, meant_words = _WORDS.findall(name.lower()), _WORDS.findall(meant.lower())
    if "".join(words) == "".join(meant_words):
        return True
    if len(words) != len(meant_words):
        return False
    differing = [(w, m) for w, m in zip(words, meant_words, strict=True) if w != m]
    if len(differing) != 1:
        return False
    word, meant_word = differing[0]
    if word.isdigit() or meant_word.isdigit():
        return False  # another number: a name of a series (tenant1, tenant2)
    if word.endswith(meant_word) or meant_word.endswith(word):
        return False  # a prefix added: another word (sync, async; send, resend)
    longest = max(len(word), len(meant_word))
    if longest < TYPO_MIN_WORD:
        return False
    slips = 1 if longest < TYPO_MIN_WORD_TWO_SLIPS else 2
    return _slips(word, meant_word, slips) <= slips


def _slips(text: str, other: str, most: int) -> int:
    """How many slips make *other* of *text*; past *most*, any number above it.

    A slip: a character inserted, deleted or replaced, or two adjacent ones swapped.
    """
    if abs(len(text) - len(other)) > most:
        return most + 1
    before: list[int] | None = None
    previous = list(range(len(other) + 1))
    for i, char in enumerate(text, 1):
        row = [i]
        for j, other_char in enumerate(other, 1):
            cost = min(
                previous[j] + 1,
                row[j - 1] + 1,
                previous[j - 1] + (char != other_char),
            )
            if (
                before is not None
                and i > 1
                and j > 1
                and char == other[j - 2]
                and text[i - 2] == other_char
            ):
                cost = min(cost, before[j - 2] + 1)
            row.append(cost)
        if min(row) > most:
            return most + 1
        before, previous = previous, row
    return previous[-1]


def check_queue(queue: str, settings: Settings) -> None:
    """Warn, once per queue and config, when *queue* goes by NOTIFY where no service listens.

    That is a queue the pg_notify broker carries (no other broker claims it) while not one of
    the ``brokers.pg_notify.channels`` the config lists. Nothing when it lists none.

    :raises InvalidSubmission: when *queue* is likely a typo of a durable queue's name
        (:func:`is_typo_of`): it would otherwise turn a job stored for sure into a NOTIFY
        nobody hears.
    """
    checked = _checked_queues.get(settings)
    if len(checked) >= MAX_REMEMBERED_NAMES:
        checked.clear()
    if queue in checked:
        refusal = checked[queue]
        if refusal is not None:
            raise InvalidSubmission(refusal)
        return
    checked[queue] = None
    notify = settings.brokers.pg_notify
    listed = notify is not None and bool(notify.channels) and queue in notify.channels
    try:
        if listed or broker_for(queue, settings).name != "pg_notify":
            return
    except PublishError:
        return  # sending says what is wrong
    durable = settings.brokers.pg_queue.queues if settings.brokers.pg_queue is not None else ()
    near_durable = next((name for name in durable if is_typo_of(queue, name)), None)
    if near_durable is not None:
        refusal = checked[queue] = (
            f"queue {queue!r} is not one of brokers.pg_queue.queues in {settings.source}, "
            f"but close to the durable queue {near_durable!r}: sent by NOTIFY instead, its "
            "tasks would be lost where nobody listens (list it under brokers.pg_notify.channels "
            "to send there on purpose)"
        )
        raise InvalidSubmission(refusal)
    if notify is None or not notify.channels:
        return
    logger.warning(
        "queue %r is not one of brokers.pg_notify.channels (%s)%s in %s: no service "
        "configured there listens on it, tasks sent to it are lost unless another service "
        "does%s",
        queue,
        ", ".join(notify.channels),
        " nor of brokers.pg_queue.queues" if durable else "",
        settings.source,
        did_you_mean(queue, (*notify.channels, *durable)),
    )


def check_task_name(name: str) -> None:
    """Warn, once per name, when the unregistered task *name* is close to a registered one.

    A name unknown here may be a task of another code base, so only a near miss is reported.
    While a testing mode takes the submissions, it refuses or accepts the name instead.

    :raises InvalidSubmission: when the testing mode in force refuses the name.
    """
    interceptor = interception.current
    if interceptor is not None:
        refusal = interceptor.refusal(name)
        if refusal is not None:
            raise InvalidSubmission(refusal)
        return
    if name in _checked_tasks:
        return
    if len(_checked_tasks) >= MAX_REMEMBERED_NAMES:
        _checked_tasks.clear()
    _checked_tasks.add(name)
    close = close_task_name(name, registry.names())
    if close is not None:
        logger.warning(
            "task %r is not registered in this process; did you mean %r? "
            "(submitting it by name anyway)",
            name,
            close,
        )


SUBMIT_OPTIONS: Final = frozenset(
    {
        "queue",
        "uuid",
        "timeout",
        "delay",
        "on_duplicate",
        "bind",
        "extra",
        "connection",
        "max_attempts",
        "processor_options",
    }
)
"""The options ``apply_async()`` takes besides ``args`` and ``kwargs`` (``submit_task``'s)."""

_CELERY_OPTIONS: Final = {
    "countdown": "Celery's countdown is delay= here (seconds)",
    "eta": "Celery's eta is delay= here, in seconds from now",
    "expires": "there is no expiry; timeout= bounds how long the task may run",
    "time_limit": "Celery's time_limit is timeout= here (seconds)",
    "soft_time_limit": "Celery's soft_time_limit is timeout= here (it raises DispatcherCancel)",
    "task_id": "Celery's task_id is uuid= here",
    "routing_key": "routing is by queue= here",
    "exchange": "routing is by queue= here",
    "priority": "there are no priorities: tasks start in the order they arrive",
    "retry": "a connection the server closed is replaced before sending, and a durable "
    "job's insert is sent again once; a task's retries are max_attempts= on a durable queue",
    "retry_policy": "a task's retries are max_attempts= on a durable queue "
    "(backoff: brokers.pg_queue.retry_backoff)",
    "serializer": "messages are always JSON",
    "compression": "messages are always JSON, chunked when large",
}
"""Celery's ``apply_async`` options, and what stands for them here (or that nothing does)."""


def check_submit_options(options: Mapping[str, object], caller: str) -> None:
    """Refuse an option *caller* (``apply_async``) does not take, saying what to use instead.

    :raises TypeError: as Python does for an unexpected keyword argument, with a hint.
    """
    unknown = sorted(options.keys() - SUBMIT_OPTIONS)
    if not unknown:
        return
    key = unknown[0]
    hint = _CELERY_OPTIONS.get(key)
    why = f" ({hint})" if hint else did_you_mean(key, SUBMIT_OPTIONS)
    raise InvalidArgumentType(f"{caller}() got an unexpected keyword argument {key!r}{why}")
