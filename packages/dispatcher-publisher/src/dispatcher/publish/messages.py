"""Building a task message from a submission's options, checked before anything is sent."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Final, NamedTuple

from dispatcher.config import (
    ConfigError,
    NotConfiguredError,
    SigningKey,
    get_settings,
)
from dispatcher.publish import interception
from dispatcher.publish.arguments import argument_problem
from dispatcher.publish.brokers import JobBroker
from dispatcher.publish.errors import InvalidSubmission, PublishError
from dispatcher.publish.fast_path import surely_valid
from dispatcher.publish.json_values import (
    first_unsendable,
    may_hold_converted_key,
    may_hold_too_long_integer,
    shown,
)
from dispatcher.publish.mistakes import check_queue, check_task_name
from dispatcher.publish.per_config import PerConfig
from dispatcher.publish.pg_text import text_problem
from dispatcher.publish.registry import Queue, RegisteredTask, check_max_attempts, registry
from dispatcher.publish.routing import default_broker, job_broker_for
from dispatcher.publish.signing import signed, signing_key
from dispatcher.publish.submission import Submission, make_submission
from dispatcher.publish.uuids import submission_uuid
from dispatcher.schema import (
    CHANNEL_NAME_RULE,
    CHUNK_KEY,
    MAX_MESSAGE_BYTES,
    MAX_NESTING_DEPTH,
    MAX_NOTIFY_PAYLOAD_BYTES,
    SIGNED_KEY,
    OnDuplicate,
    exceeds_depth,
    is_valid_channel_name,
    split_message,
    validator,
)
from dispatcher.schema.errors import format_path, json_type_name

RESERVED_KEYS: Final = frozenset(
    {"task", "uuid", "args", "kwargs", "time_pub", "timeout", "delay", "on_duplicate", "bind"}
    | {"channel", "control", CHUNK_KEY, SIGNED_KEY}
)
"""Message keys the SDK sets itself, which ``extra`` may not contain."""

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


ProcessorOptions = Mapping[str, Any] | Iterable[Any] | None
"""dispatcherd's ``processor_options``: its params objects (anything with a ``to_dict()``),
plain dicts, a sequence of them, or ``None``."""

PROCESSOR_OPTION_KEYS: Final = ("delay", "on_duplicate")
"""The keys ``processor_options`` may set: the submission options of the same names."""


def processor_option_values(processor_options: ProcessorOptions) -> dict[str, Any]:
    """The options dispatcherd's *processor_options* set, as ``{option: value}``.

    Accepts one dict or params object, or an iterable of them; a params object is anything
    with a ``to_dict()`` method (such as dispatcherd's ``Delayer.Params``,
    ``Blocker.Params`` or ``CompatParams``). Later parts override earlier ones, as in
    dispatcherd.

    :raises ValueError: naming the part or key that is not understood.
    """
    if processor_options is None:
        return {}
    if isinstance(processor_options, Mapping) or callable(
        getattr(processor_options, "to_dict", None)
    ):
        parts: Iterable[Any] = (processor_options,)
    elif isinstance(processor_options, str | bytes) or not isinstance(processor_options, Iterable):
        raise ValueError(
            f"expected dispatcherd params objects or dicts, got {type(processor_options).__name__}"
        )
    else:
        parts = processor_options
    values: dict[str, Any] = {}
    for part in parts:
        if isinstance(part, Mapping):
            items = part
        else:
            to_dict = getattr(part, "to_dict", None)
            if not callable(to_dict):
                raise ValueError(
                    f"expected a dispatcherd params object or a dict, got {type(part).__name__}"
                )
            items = to_dict()
            if not isinstance(items, Mapping):
                raise ValueError(f"{type(part).__name__}.to_dict() did not return a dict")
        for key, value in items.items():
            if key not in PROCESSOR_OPTION_KEYS:
                raise ValueError(
                    f"unknown option {key!r} (known: {', '.join(PROCESSOR_OPTION_KEYS)})"
                )
            values[key] = value
    return values


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
        raise _invalid(name, f"bind: expected boolean, got {got}")
    elif not bind and defaults.bind:
        raise _invalid(
            name, "bind: False, but the task is @task(bind=True): a worker always binds it"
        )
    if bind:
        message["bind"] = True
    if extra:
        if not isinstance(extra, Mapping):
            raise _invalid(name, f"extra: expected a dict, got {type(extra).__name__}")
        not_text = [key for key in extra if type(key) is not str]
        if not_text:
            raise _invalid(name, f"extra: keys must be strings, got {shown(not_text[0])}")
        clashes = sorted(str(key) for key in extra if key in EXTRA_REFUSED)
        if clashes:
            said = "; ".join(
                f"{key} cannot be set through extra: {_extra_advice(key)}" for key in clashes
            )
            raise _invalid(name, f"extra: {said}")
        message.update(extra)

    # A registered task's name was checked at registration, and the rest of the message is
    # built here: a few comparisons prove it valid. Anything else, the schema decides.
    checked = entry is not None and surely_valid(message)
    if not checked:
        checker = validator("task-message")
        if not checker.is_valid(message):
            try:
                problems = "; ".join(
                    f"{_as_given(problem.path)}: {problem.reason}"
                    for problem in checker.problems(message)
                )
            except ValueError:  # explaining writes the values out: too long an integer cannot be
                problems = ""
            raise _invalid(name, problems or _unexplained(message))
        if entry is None:
            check_task_name(name)
    if uuid is not None and (problem := text_problem(uuid)) is not None:
        raise _invalid(name, f"uuid: {problem}")  # a job's key, and what get_job() looks for

    target = queue if queue is not None else defaults.queue
    if callable(target):
        target = _called(name, target)
    route = _known_route(target)
    channel = route.channel if route is not None else _resolve_channel(name, target)
    if max_attempts is None:
        max_attempts = defaults.max_attempts
    elif (problem := check_max_attempts(max_attempts)) is not None:
        raise _invalid(name, f"max_attempts: {problem}")
    if route is None:
        route = _remember_route(target, channel, _job_broker(name, channel) is not None)
    durable = route.durable
    if max_attempts is not None and not durable and not _durability_unknown():
        raise _invalid(
            name,
            f"max_attempts: applies to durable queues only, and {shown(channel)} is not one "
            "(durable queues are listed under brokers.pg_queue.queues)",
        )
    # A checked message of the five keys set above: only its arguments need the encoder.
    text = _serialise(name, message, plain=checked and len(message) == len(_PLAIN_KEYS))
    if not durable and route.key is not None:
        text = signed(text, route.key)
    if len(text) > MAX_MESSAGE_BYTES:
        raise _invalid(
            name, f"the message is {len(text)} bytes of JSON, over the limit of {MAX_MESSAGE_BYTES}"
        )
    if entry is not None:  # once the message is known to be sendable: more basic errors first
        called = argument_problem(entry, message["args"], message["kwargs"], entry.bind or bind)
        if called is not None:
            raise _invalid(name, called)
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
        raise _invalid(name, f"processor_options: {exc}") from None
    for key, given in (("delay", delay), ("on_duplicate", on_duplicate)):
        if key in values and given is not None and values[key] != given:
            raise _invalid(
                name,
                f"processor_options: {key} is {shown(values[key])} there but {shown(given)} as an "
                "option",
            )
    return values.get("delay", delay), values.get("on_duplicate", on_duplicate)


def _invalid(name: str, reason: str) -> InvalidSubmission:
    # A name that is no task name may be empty or hold anything (a space, a line break, a
    # NUL): shown quoted, after words that say what it is.
    if type(name) is str and name.isprintable() and name and not _SPACE.search(name):
        return InvalidSubmission(f"cannot submit {name}: {reason}")
    return InvalidSubmission(f"cannot submit the task {name!r}: {reason}")


_SPACE: Final = re.compile(r"\s")


def _as_list(name: str, args: Sequence[Any] | None) -> list[Any]:
    if args is None:
        return []
    if (
        type(args) is list
        or type(args) is tuple
        or (isinstance(args, Sequence) and not isinstance(args, str | bytes))
    ):
        return list(args)
    raise _invalid(name, f"args: expected a list or tuple, got {type(args).__name__}")


def _as_dict(name: str, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if type(kwargs) is dict or isinstance(kwargs, Mapping):
        return dict(kwargs)
    raise _invalid(name, f"kwargs: expected a dict, got {type(kwargs).__name__}")


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
        raise _invalid(name, f"queue: the queue function raised {exc!r}") from exc


def _resolve_channel(name: str, queue: str | None) -> str:
    """The channel for *queue* (``None``: the default one), checked."""
    if queue is None:
        queue = _default_channel(name)
    if not is_valid_channel_name(queue):
        reason = f"queue: {shown(queue)} is not a valid channel name ({CHANNEL_NAME_RULE})"
        raise _invalid(name, reason)
    return queue


class _Route(NamedTuple):
    """Where the submissions for one queue go, under one config."""

    channel: str
    """The channel (or durable queue) itself, checked."""
    durable: bool
    """Whether a job broker stores them (unsigned, whole), rather than a NOTIFY."""
    key: SigningKey | None
    """The key NOTIFY messages are signed with, if any."""


MAX_REMEMBERED_ROUTES: Final = 1024
"""Routes remembered per config (queue functions may name many queues): then forgotten."""

_routes: PerConfig[dict[str | None, _Route]] = PerConfig(lambda settings: {})
"""The routes found under each config used lately, by the queue a submission names (``None``:
the default queue). A config never changes, nor do its brokers' queues."""


def _known_route(queue: str | None) -> _Route | None:
    """The route already found for *queue* under the config in force, if any."""
    if queue is not None and type(queue) is not str:
        return None  # not a channel name: the long way says so
    try:
        settings = get_settings()
    except ConfigError:
        return None  # the long way says what is wrong, when it matters
    return _routes.get(settings).get(queue)


def _remember_route(queue: str | None, channel: str, durable: bool) -> _Route:
    """Make the route of *queue*, found the long way, and remember it for the config in force.

    A NOTIFY channel no service of the config listens on is warned about here, once.
    """
    route = _Route(channel, durable, signing_key())
    try:
        settings = get_settings()
    except NotConfiguredError:
        return route  # an explicit queue and connection need no config
    if not durable:
        check_queue(channel, settings)
    routes = _routes.get(settings)
    if len(routes) >= MAX_REMEMBERED_ROUTES:
        routes.clear()
    routes[queue] = route
    return route


def _job_broker(name: str, channel: str) -> JobBroker | None:
    """The broker that stores tasks for *channel* as jobs, or ``None`` if it is not durable."""
    broker = job_broker_for(channel)
    if broker is not None and channel not in broker.queues:
        raise _invalid(
            name,
            f"queue: {shown(channel)} is not one of the queues of brokers.{broker.name} "
            f"({', '.join(sorted(broker.queues))}): no service would claim it",
        )
    return broker


def _durability_unknown() -> bool:
    """Whether no config says which queues are durable, under :mod:`dispatcher.testing`.

    Its submissions are taken in-process, with no config needed: ``max_attempts`` is
    recorded, as it would be for the durable queue the task names in production.
    """
    if interception.current is None:
        return False
    try:
        get_settings()
    except NotConfiguredError:
        return True
    return False


def _default_channel(name: str) -> str:
    """The default queue of the broker tasks go through by default.

    Without a config, an installed interceptor's default queue, if it has one.
    """
    try:
        settings = get_settings()
    except NotConfiguredError:
        interceptor = interception.current
        if interceptor is None or interceptor.default_queue is None:
            raise
        return interceptor.default_queue
    try:
        broker = default_broker(settings)
    except PublishError as exc:
        raise _invalid(name, f"no channel to send it on: {exc}") from None
    if broker.default_queue is not None:
        return broker.default_queue
    raise _invalid(
        name,
        "no channel to send it on: pass queue=..., or give the task a queue with "
        f"@task(queue=...){no_default_queue(broker.name, settings.source)}",
    )


def no_default_queue(broker_name: str, source: str) -> str:
    """What the config *source* lacks for tasks to have a default queue.

    *broker_name* is the default broker's. The clause ends a message that first says what
    to pass instead: ``, or set ...`` or `` (...)``.
    """
    if broker_name == "pg_notify":
        return f", or set brokers.pg_notify.default_publish_channel in {source}"
    if broker_name == "pg_queue":
        return f" (brokers.pg_queue has a default only when it lists one queue, in {source})"
    return f" (brokers.{broker_name}, the default broker, names no default queue)"


def _not_json(value: object) -> Any:
    raise TypeError(f"a value of type {type(value).__name__} is not JSON-serialisable")


def _make_encoder() -> Callable[[dict[str, Any]], str]:
    """Return a compact, strict JSON encoder (no NaN, no infinities)."""
    if c_make_encoder is None:  # pragma: no cover - Python builds without the C accelerator
        return json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    # The C encoder built once and called directly: json.dumps() builds it for every call.
    c_encoder = c_make_encoder(
        None, _not_json, encode_basestring_ascii, None, ":", ",", False, False, False
    )
    return lambda message: "".join(c_encoder(message, 0))


_encode: Final = _make_encoder()
_ascii_text: Final = encode_basestring_ascii
_PLAIN_KEYS: Final = ("task", "uuid", "args", "kwargs", "time_pub")


def _serialise(name: str, message: dict[str, Any], *, plain: bool = False) -> str:
    """The JSON text of *message*, as ``_encode(message)`` writes it.

    A *plain* message has the keys of :data:`_PLAIN_KEYS` in that order and no other, with
    ``task`` and ``uuid`` strings, ``args`` a list, ``kwargs`` a dict and ``time_pub`` a
    finite ``int`` or ``float`` (whose ``repr()`` is their JSON text): what
    :func:`prepare_submission` builds when no option is set, once checked. Its text is put
    together here; only the arguments go through the encoder.

    :raises InvalidSubmission: naming the value JSON cannot represent, or nested too deeply.
    """
    try:
        if plain:
            args = _encode(message["args"])
            kwargs = _encode(message["kwargs"]) if message["kwargs"] else "{}"
            text = (
                f'{{"task":{_ascii_text(message["task"])},"uuid":{_ascii_text(message["uuid"])},'
                f'"args":{args},"kwargs":{kwargs},"time_pub":{message["time_pub"]!r}}}'
            )
            # Arguments nest no deeper than they have characters: short ones cannot be too deep.
            may_be_deep = len(args) + len(kwargs) >= MAX_NESTING_DEPTH
            converted_keys = (
                may_hold_converted_key(args, 0)
                or may_hold_converted_key(kwargs, 1)
                or not _keys_are_strings(message["kwargs"])
            )
        else:
            text = _encode(message)
            may_be_deep = True
            converted_keys = may_hold_converted_key(text, 1)
    except (TypeError, ValueError, RecursionError) as exc:
        nested = too_deep(message)
        if nested is not None:
            raise _invalid(name, nested) from None
        try:
            found = first_unsendable(message)
        except RecursionError:
            found = ((), "the arguments are nested too deeply, or contain themselves")
        path, reason = found or ((), str(exc))
        raise _invalid(name, f"{_as_given(path)}: {reason}") from None
    if (converted_keys or may_hold_too_long_integer(text)) and (
        found := first_unsendable(message)
    ) is not None:
        raise _invalid(name, f"{_as_given(found[0])}: {found[1]}")
    # n arrays and objects cannot nest deeper than n: most messages skip the walk.
    if may_be_deep and text.count("[") + text.count("{") > MAX_NESTING_DEPTH:
        nested = too_deep(message)
        if nested is not None:
            raise _invalid(name, nested)
    return text


def _keys_are_strings(mapping: dict[Any, Any]) -> bool:
    """Whether every key of *mapping* is a string (joined at C speed: refused if one is not)."""
    try:
        "".join(mapping)
    except TypeError:
        return False
    return True


def _unexplained(message: dict[str, Any]) -> str:
    """Why *message* is invalid when the schema's detailed problems name nothing.

    A NaN compares neither below nor above a limit: the fast check refuses it, the detailed
    one finds nothing to say.
    """
    try:
        found = first_unsendable(message)
    except RecursionError:
        return "the arguments are nested too deeply, or contain themselves"
    return "invalid message" if found is None else f"{_as_given(found[0])}: {found[1]}"


def _as_given(path: Sequence[str | int]) -> str:
    """*path*, a place in the message, as the caller gave it: keys of ``extra`` under it."""
    if path and path[0] not in RESERVED_KEYS:
        return format_path(("extra", *path))
    return format_path(tuple(path))


def too_deep(message: dict[str, Any]) -> str | None:
    """Name the first value nested deeper than a service accepts, and say why."""
    inner = MAX_NESTING_DEPTH - 1  # the message object is the first level
    for key, value in message.items():
        if exceeds_depth(value, inner):
            return (
                f"{_as_given((str(key),))}: nested more than {inner} levels deep, or contains "
                f"itself (too_deep: a message may nest {MAX_NESTING_DEPTH} levels in all)"
            )
    return None
