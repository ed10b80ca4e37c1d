"""The checks of what ``@task`` registers that its options' types do not cover.

Classmethods and methods are refused, a task of the script being run is warned about, and
``processor_options`` are read into *delay* and *on_duplicate*.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from dispatcher.publish.errors import RegistrationError
from dispatcher.publish.json_values import shown
from dispatcher.publish.processor_options import ProcessorOptions, processor_option_values
from dispatcher.schema import OnDuplicate

logger = logging.getLogger("dispatcher.publish")


def classmethod_refusal(
    declared: classmethod[Any, Any, Any], name: str | None
) -> RegistrationError:
    """The error refusing *declared*, a classmethod, as a task (named *name* if given)."""
    function = declared.__func__
    task_name = name if name is not None else f"{function.__module__}.{function.__qualname__}"
    return RegistrationError(
        f"cannot register {task_name}: a classmethod cannot be a task (a worker calls a task "
        "with the submitted arguments only, and nothing would fill cls): make it a "
        "module-level function, or a @staticmethod (@staticmethod above @task)"
    )


def method_problem(target: object, qualname: str) -> str | None:
    """Say why *target* is no task if it is a method defined in a class body; else ``None``.

    Such a method's first parameter (``self``, ``cls``) is what calling it through an
    instance or the class fills in; a worker calls a task with the submitted arguments only.
    """
    if not inspect.isfunction(target):
        return None
    owner = qualname.rpartition(".")[0]
    if not owner or owner.endswith("<locals>"):
        return None  # a module-level function, or one defined in a function
    code = target.__code__
    first = code.co_varnames[0] if code.co_argcount else None
    if first not in ("self", "cls"):
        return None
    return (
        f"{qualname} is a method (its first parameter is {first}): a worker calls a task with "
        f"the submitted arguments only, and nothing would fill {first}; make it a module-level "
        "function, or a @staticmethod (@staticmethod above @task), or register the class "
        "itself with a run() method"
    )


def warn_main_module(task_name: str, qualname: str) -> None:
    """Warn that the task *task_name*, defined in the script being run, cannot run anywhere.

    Its name starts with ``__main__``: no service imports that module, so each one rejects
    the task as not registered. Only a warning: the script may run its tasks itself
    (``dispatcher.testing``), and an explicit ``@task(name=...)`` says nothing here.
    """
    logger.warning(
        "task %r is defined in the script being run: a service runs only tasks of the "
        "modules it imports (tasks.modules), so it will reject this name; define the task "
        "in such a module and import it from there, or submit it by that module's name "
        "(submit_task('myapp.tasks.%s'))",
        task_name,
        qualname,
    )


def from_processor_options(
    processor_options: ProcessorOptions, delay: float | None, on_duplicate: OnDuplicate | None
) -> tuple[float | None, OnDuplicate | None]:
    """*delay* and *on_duplicate* as *processor_options* set them (they must agree)."""
    try:
        values = processor_option_values(processor_options)
    except ValueError as exc:
        raise RegistrationError(f"processor_options: {exc}") from None
    for key, given in (("delay", delay), ("on_duplicate", on_duplicate)):
        if key in values and given is not None and values[key] != given:
            raise RegistrationError(
                f"processor_options: {key} is {shown(values[key])} there but {shown(given)} as an "
                "option"
            )
    return values.get("delay", delay), values.get("on_duplicate", on_duplicate)
