"""A worker class for the tests: records each hook call in ``$DISPATCHER_TEST_HOOKS_FILE``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from dispatcher.server import BaseWorker


class RecordingWorker(BaseWorker):
    def _record(self, hook: str, **fields: Any) -> None:
        with open(os.environ["DISPATCHER_TEST_HOOKS_FILE"], "a", encoding="utf-8") as out:
            out.write(
                json.dumps({"hook": hook, "worker": self.worker_id, "pid": os.getpid(), **fields})
                + "\n"
            )

    def on_start(self) -> None:
        self._record("on_start")

    def pre_task(self, message: Mapping[str, Any]) -> None:
        self._record("pre_task", task=message["task"])

    def post_task(self, outcome: Mapping[str, Any]) -> None:
        self._record("post_task", outcome=outcome["outcome"])

    def on_idle(self) -> None:
        self._record("on_idle")

    def on_shutdown(self) -> None:
        self._record("on_shutdown")


class FaultyWorker(BaseWorker):
    def pre_task(self, message: Mapping[str, Any]) -> None:
        raise RuntimeError("a broken hook")


class ExitingWorker(BaseWorker):
    """Ends its worker from a hook, saying a forged log line (``$DISPATCHER_TEST_EXIT_TEXT``)."""

    def post_task(self, outcome: Mapping[str, Any]) -> None:
        raise SystemExit(os.environ["DISPATCHER_TEST_EXIT_TEXT"])


class DyingAtStartWorker(RecordingWorker):
    """Ends its worker in ``on_start`` while the file ``$DISPATCHER_TEST_BROKEN_FILE`` exists."""

    def on_start(self) -> None:
        self._record("on_start")
        if os.path.exists(os.environ["DISPATCHER_TEST_BROKEN_FILE"]):
            raise SystemExit(3)


class _Tagged:
    """A stream writing ``[hook] `` before each line it is given."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        tagged = "".join(
            f"[hook] {line}" if line.strip() else line for line in text.splitlines(True)
        )
        self._stream.write(tagged)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


class WrappingWorker(BaseWorker):
    """Wraps ``sys.stdout`` in ``on_start``, as a logging or colouring set-up may."""

    def on_start(self) -> None:
        import sys

        sys.stdout = _Tagged(sys.stdout)  # type: ignore[assignment]


class SlowStartWorker(BaseWorker):
    """Takes a second in ``on_start`` (warming a pool, loading a model): the first worker
    says which tasks are registered only then."""

    def on_start(self) -> None:
        time.sleep(1)
