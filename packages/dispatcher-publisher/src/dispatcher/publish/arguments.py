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
        shown = _callers_signature(shape, entry).replace(return_annotation=inspect.Signature.empty)
        note = ""
        if bind and not entry.bind:
            note = " (bind=True passes the bound task first, and the task is not @task(bind=True))"
        return f"args, kwargs: {exc}: the task is {entry.name}{shown}{note}"
    if len(shape.accepted) < _ACCEPTED_SHAPES:
        shape.accepted.add(call)
    return None


def bind_problem(target: object) -> str | None:
    """Say why *target* cannot be a ``bind=True`` task, or ``None``.

    It cannot when it takes no positional argument for the bound task the worker passes
    first (after the instance, for a class task). A signature that cannot be read is not
    checked.
    """
    shape = _shape(target)
    if shape is None or shape.most is None or shape.most > shape.leading:
        return None
    function = "its run()" if shape.leading else "it"
    return (
        f"bind=True passes the bound task as the first argument, but {function} takes no "
        "positional argument for it: add a first parameter (dispatcher: BoundTask), or "
        "leave bind out"
    )


def shown_signature(entry: RegisteredTask) -> inspect.Signature | None:
    """The arguments *entry*'s callers pass (``delay()``'s), as ``help()`` shows them.

    That is the task's signature without what the worker fills in first (the instance of a
    class task, the bound object of a ``bind=True`` one), returning a ``Submission``.
    ``None`` when the signature cannot be read.
    """
    shape = _shape(entry.target)
    if shape is None:
        return None
    return _callers_signature(shape, entry).replace(return_annotation=_Shown("Submission"))


def display_signature(signature: inspect.Signature) -> inspect.Signature:
    """*signature* with its annotations written as in the source, not quoted.

    Under ``from __future__ import annotations`` every annotation is a string, which a
    signature shows quoted (``to: 'str'``).
    """
    parameters = [
        p.replace(annotation=_Shown(p.annotation)) if isinstance(p.annotation, str) else p
        for p in signature.parameters.values()
    ]
    returned = signature.return_annotation
    if isinstance(returned, str):
        returned = _Shown(returned)
    return signature.replace(parameters=parameters, return_annotation=returned)


class _Shown:
    """An annotation kept as text, shown as it was written."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _callers_signature(shape: _Shape, entry: RegisteredTask) -> inspect.Signature:
    hidden = shape.leading + entry.bind  # what the task's callers never pass
    parameters = list(shape.signature.parameters.values())[hidden:]
    return display_signature(shape.signature.replace(parameters=parameters))


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
