"""Translation of dispatcherd's ``worker`` section (``worker_cls``, ``worker_kwargs``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from dispatcher.config.dispatcherd_translation import TranslationWriter
from dispatcher.config.legacy import Path

DEFAULT_WORKER_CLASS: Final = "dispatcherd.worker.task.TaskWorker"
"""dispatcherd's own worker class: naming it is the same as naming none."""


def translate_worker(writer: TranslationWriter, value: Any) -> None:
    """Translate dispatcherd's ``worker`` section."""
    section = writer.section(value, ("worker",), ("worker",))
    if section is None:
        return
    writer.put(("worker",), ("worker",), {})
    for key, item in section.items():
        where = ("worker", key)
        if key == "worker_cls":
            if item is None or item == DEFAULT_WORKER_CLASS:
                continue
            writer.put(("worker", "class"), where, item)
            writer.warn(
                where,
                "read as worker.class, which must subclass dispatcher.server.BaseWorker "
                "(same hooks: on_start, pre_task, post_task, on_idle, on_shutdown); "
                "else the service stops at start",
            )
        elif key == "worker_kwargs":
            _worker_kwargs(writer, item)
        else:
            writer.warn(where, "not a key of dispatcherd's worker section; ignored, as it does")


def _worker_kwargs(writer: TranslationWriter, value: Any) -> None:
    old: Path = ("worker", "worker_kwargs")
    if value is None:
        return
    if not isinstance(value, Mapping):
        writer.error(old, f"expected object, got {type(value).__name__}")
        return
    for key, item in value.items():
        where = (*old, key)
        if key == "idle_timeout":
            if item is not None and item != 0:  # 0: never idle, as when absent
                writer.put(("worker", "idle_timeout"), where, item)
        else:
            writer.warn(
                where,
                "no equivalent: a worker class here is given only its worker id; ignored",
            )
