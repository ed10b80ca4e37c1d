"""Checking a submission's arguments against its task's signature, before anything is sent.

A call the worker could not make (too many arguments, a required one missing, an unknown
keyword) is refused where it is written, as Celery does by default, rather than sent to fail
later in a worker with a ``TypeError``. Only tasks registered in this process are checked,
against the signature they have here.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from dispatcher.publish.registry import RegisteredTask

_SLOT: Final[Any] = object()
"""Stands for what the worker passes before the arguments: the instance, the bound task."""

_POSITIONAL: Final = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class _Shape:
    """What a call needs, read once per task: a quick check for the common calls."""

    signature: inspect.Signature
    leading: int
    """Slots the worker fills before the arguments (``self`` of a class task)."""
    fewest: int
    """Positional arguments without a default, counting the leading slots."""
    most: int | None
    """Most positional arguments (``None``: ``*args``), counting the leading slots."""
    simple: bool
    """No keyword-only parameter without a default: keyword-free calls need only counting."""
    accepted: set[tuple[int, tuple[str, ...]]] = field(default_factory=set)
    """Calls found to fit, as (positional arguments, keyword names): binding depends on
    nothing else, so a call of a known shape is not bound again."""


_ACCEPTED_SHAPES: Final = 256
"""Most call shapes remembered per task."""


_shapes: dict[object, _Shape | None] = {}


def argument_problem(
    entry: RegisteredTask, args: Sequence[Any], kwargs: Mapping[str, Any], bind: bool
) -> str | None:
    """Say why the worker could not call *entry* with *args* and *kwargs*; ``None`` if it can.

    *bind*: whether the worker passes the bound task first. A target whose signature cannot
    be read (some built-ins) is not checked.
    """
    shape = _shape(entry.target)
    if shape is None:
        return None
    slots = shape.leading + bind
    if not kwargs and shape.simple:
        given = slots + len(args)
        if shape.fewest <= given and (shape.most is None or given <= shape.most):
            return None
    call = (slots + len(args), tuple(kwargs))
    if call in shape.accepted:
        return None
    try:
        shape.signature.bind(*(_SLOT,) * slots, *args, **kwargs)
    except TypeError as exc:
        hidden = shape.leading + entry.bind  # what the task's callers never pass
        parameters = list(shape.signature.parameters.values())[hidden:]
        shown = shape.signature.replace(
            parameters=parameters, return_annotation=inspect.Signature.empty
        )
        note = ""
        if bind and not entry.bind:
            note = " (bind=True passes the bound task first, and the task is not @task(bind=True))"
        return f"args, kwargs: {exc}: the task is {entry.name}{shown}{note}"
    if len(shape.accepted) < _ACCEPTED_SHAPES:
        shape.accepted.add(call)
    return None


def _shape(target: object) -> _Shape | None:
    try:
        return _shapes[target]
    except KeyError:
        shape = _shapes[target] = _read_shape(target)
        return shape
    except TypeError:  # not hashable: read each time
        return _read_shape(target)


def _read_shape(target: object) -> _Shape | None:
    if isinstance(target, type):  # a class task: the worker calls run() on an instance
        function, leading = getattr(target, "run", None), 1
    else:
        function, leading = target, 0
    if function is None or not callable(function):
        return None
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    parameters = list(signature.parameters.values())
    positional = [p for p in parameters if p.kind in _POSITIONAL]
    variadic = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    return _Shape(
        signature=signature,
        leading=leading,
        fewest=sum(p.default is inspect.Parameter.empty for p in positional),
        most=None if variadic else len(positional),
        simple=not any(
            p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
            for p in parameters
        ),
    )
