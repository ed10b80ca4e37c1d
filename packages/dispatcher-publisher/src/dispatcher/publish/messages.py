"""Building a task message from a submission's options, checked before anything is sent."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from dispatcher.publish.arguments import argument_problem
from dispatcher.publish.errors import InvalidSubmission
from dispatcher.publish.fast_path import surely_valid
from dispatcher.publish.invalid_submission import invalid_submission
from dispatcher.publish.json_values import shown
from dispatcher.publish.message_routes import (
    durability_unknown,
    job_broker,
    known_route,
    remember_route,
    resolve_channel,
)
from dispatcher.publish.message_text import (
    PLAIN_KEYS,
    RESERVED_KEYS,
    as_given,
    serialise,
    unexplained,
)
from dispatcher.publish.mistakes import check_task_name
from dispatcher.publish.pg_text import text_problem
from dispatcher.publish.processor_options import ProcessorOptions, processor_option_values
from dispatcher.publish.registry import Queue, RegisteredTask, check_max_attempts, registry
from dispatcher.publish.signing import signed
from dispatcher.publish.submission import Submission, make_submission
from dispatcher.publish.uuids import submission_uuid
from dispatcher.schema import (
    MAX_MESSAGE_BYTES,
    MAX_NOTIFY_PAYLOAD_BYTES,
    OnDuplicate,
    split_message,
    validator,
)
from dispatcher.schema.errors import json_type_name

SUBMISSION_ARGUMENTS: Final = frozenset(
    {"args", "kwargs", "queue", "uuid", "timeout", "delay", "on_duplicate", "bind"}
    | {"connection", "max_attempts", "processor_options"}
)
"""The arguments of ``submit_task()`` (and ``apply_async()``) other than ``extra``: passed in
``extra``, one would be a message key that does nothing, or the SDK's own key."""

EXTRA_REFUSED: Final = RESERVED_KEYS | SUBMISSION_ARGUMENTS
"""The keys ``extra`` may not hold."""


def _extra_advice(key: str) -> str:
    """What to do instead of putting *key* in ``extra``."""
    if key in SUBMISSION_ARGUMENTS:
        return f"pass {key}=... to submit_task() or apply_async() instead"
    if key == "task":
        return "the task is submit_task()'s first argument"
    return "the SDK sets it"


def prepare_submission(
    task: str | Callable[..., Any],
    *,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    queue: Queue = None,
    uuid: str | None = None,
    timeout: float | None = None,
    delay: float | None = None,
    on_duplicate: OnDuplicate | None = None,
    bind: bool | None = None,
    extra: Mapping[str, Any] | None = None,
    max_attempts: int | None = None,
    processor_options: ProcessorOptions = None,
) -> Submission:
    """Build and check the message for one submission, without sending it.

    Options left as ``None`` take the defaults given to ``@task``, when *task* is registered.
    *processor_options* (dispatcherd's) may set ``delay`` and ``on_duplicate`` instead; an
    option given both ways must have the same value.
    A task for a durable queue (one a :class:`~dispatcher.publish.brokers.JobBroker` claims,
    such as ``brokers.pg_queue``'s) keeps its JSON text whole and unsigned, for the row;
    *max_attempts* applies to those only.

    :raises InvalidSubmission: naming the option and the reason, when anything is wrong.
    """
    if isinstance(task, str):
        name, entry = task, registry.get(task)
    else:
        name, entry = _registered(task)
    defaults = entry if entry is not None else _NO_DEFAULTS
    if processor_options is not None:
        delay, on_duplicate = _from_processor_options(name, processor_options, delay, on_duplicate)
    message: dict[str, Any] = {
        "task": name,
        "uuid": uuid if uuid is not None else submission_uuid(),
        "args": list(args) if type(args) is tuple else _as_list(name, args),
        "kwargs": dict(kwargs) if type(kwargs) is dict else _as_dict(name, kwargs),
        "time_pub": time.time(),
    }
    # Options left as None take the task's defaults, and are left out when still None.
    if timeout is None:
        timeout = defaults.timeout
    if timeout is not None:
        message["timeout"] = timeout
    if delay is None:
        delay = defaults.delay
    if delay is not None:
        message["delay"] = delay
    if on_duplicate is None:
        on_duplicate = defaults.on_duplicate
    if on_duplicate is not None:
        message["on_duplicate"] = on_duplicate
    if bind is None:
        bind = defaults.bind
    elif not isinstance(bind, bool):
        what = shown(bind)
        got = what if what.startswith("an integer of") else f"{json_type_name(bind)} {what}"
        raise invalid_submission(name, f"bind: expected boolean, got {got}")
    elif not bind and defaults.bind:
        raise invalid_submission(
            name, "bind: False, but the task is @task(bind=True): a worker always binds it"
        )
    if bind:
        message["bind"] = True
    if extra:
        if not isinstance(extra, Mapping):
            raise invalid_submission(name, f"extra: expected a dict, got {type(extra).__name__}")
        not_text = [key for key in extra if type(key) is not str]
        if not_text:
            raise invalid_submission(name, f"extra: keys must be strings, got {shown(not_text[0])}")
        clashes = sorted(str(key) for key in extra if key in EXTRA_REFUSED)
        if clashes:
            said = "; ".join(
                f"{key} cannot be set through extra: {_extra_advice(key)}" for key in clashes
            )
            raise invalid_submission(name, f"extra: {said}")
        message.update(extra)

    # A registered task's name was checked at registration, and the rest of the message is
    # built here: a few comparisons prove it valid. Anything else, the schema decides.
    checked = entry is not None and surely_valid(message)
    if not checked:
        checker = validator("task-message")
        if not checker.is_valid(message):
            try:
                problems = "; ".join(
                    f"{as_given(problem.path)}: {problem.reason}"
                    for problem in checker.problems(message)
                )
            except ValueError:  # explaining writes the values out: too long an integer cannot be
                problems = ""
            raise invalid_submission(name, problems or unexplained(message))
        if entry is None:
            check_task_name(name)
    if uuid is not None and (problem := text_problem(uuid)) is not None:
        raise invalid_submission(
            name, f"uuid: {problem}"
        )  # a job's key, and what get_job() looks for

    target = queue if queue is not None else defaults.queue
    if callable(target):
        target = _called(name, target)
    route = known_route(target)
    channel = route.channel if route is not None else resolve_channel(name, target)
    if max_attempts is None:
        max_attempts = defaults.max_attempts
    elif (problem := check_max_attempts(max_attempts)) is not None:
        raise invalid_submission(name, f"max_attempts: {problem}")
    if route is None:
        route = remember_route(target, channel, job_broker(name, channel) is not None)
    durable = route.durable
    if max_attempts is not None and not durable and not durability_unknown():
        raise invalid_submission(
            name,
            f"max_attempts: applies to durable queues only, and {shown(channel)} is not one "
            "(durable queues are listed under brokers.pg_queue.queues)",
        )
    # A checked message of the five keys set above: only its arguments need the encoder.
    text = serialise(name, message, plain=checked and len(message) == len(PLAIN_KEYS))
    if not durable and route.key is not None:
        text = signed(text, route.key)
    if len(text) > MAX_MESSAGE_BYTES:
        raise invalid_submission(
            name, f"the message is {len(text)} bytes of JSON, over the limit of {MAX_MESSAGE_BYTES}"
        )
    if entry is not None:  # once the message is known to be sendable: more basic errors first
        called = argument_problem(entry, message["args"], message["kwargs"], entry.bind or bind)
        if called is not None:
            raise invalid_submission(name, called)
    if durable or len(text) <= MAX_NOTIFY_PAYLOAD_BYTES:
        payloads: tuple[str, ...] = (text,)
    else:
        payloads = tuple(split_message(text))
    return make_submission(message["uuid"], channel, message, payloads, max_attempts, durable)


def _from_processor_options(
    name: str,
    processor_options: ProcessorOptions,
    delay: float | None,
    on_duplicate: OnDuplicate | None,
) -> tuple[float | None, OnDuplicate | None]:
    """*delay* and *on_duplicate*, completed from dispatcherd's *processor_options*."""
    try:
        values = processor_option_values(processor_options)
    except ValueError as exc:
        raise invalid_submission(name, f"processor_options: {exc}") from None
    for key, given in (("delay", delay), ("on_duplicate", on_duplicate)):
        if key in values and given is not None and values[key] != given:
            raise invalid_submission(
                name,
                f"processor_options: {key} is {shown(values[key])} there but {shown(given)} as an "
                "option",
            )
    return values.get("delay", delay), values.get("on_duplicate", on_duplicate)


def _as_list(name: str, args: Sequence[Any] | None) -> list[Any]:
    if args is None:
        return []
    if (
        type(args) is list
        or type(args) is tuple
        or (isinstance(args, Sequence) and not isinstance(args, str | bytes))
    ):
        return list(args)
    raise invalid_submission(name, f"args: expected a list or tuple, got {type(args).__name__}")


def _as_dict(name: str, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if type(kwargs) is dict or isinstance(kwargs, Mapping):
        return dict(kwargs)
    raise invalid_submission(name, f"kwargs: expected a dict, got {type(kwargs).__name__}")


_NO_DEFAULTS: Final = RegisteredTask(name="unregistered", target=object)
"""The defaults of a task known only by its name: none."""


def _registered(task: Callable[..., Any]) -> tuple[str, RegisteredTask]:
    """The name and entry of the registered function or class *task*."""
    entry = registry.find(task)
    if entry is None and not callable(task):
        raise InvalidSubmission(
            f"cannot submit {shown(task)}: task: expected a task name (a string) or a function "
            f"registered with @task, got {type(task).__name__}"
        )
    if entry is None:
        described = getattr(task, "__qualname__", repr(task))
        raise InvalidSubmission(
            f"cannot submit {described}: it is not a registered task; decorate it with "
            "@task(...) or pass the task's name as a string"
        )
    return entry.name, entry


def _called(name: str, queue: Callable[[], str]) -> str:
    """The queue the queue function *queue* names now (unchecked)."""
    try:
        return queue()
    except Exception as exc:
        raise invalid_submission(name, f"queue: the queue function raised {exc!r}") from exc
