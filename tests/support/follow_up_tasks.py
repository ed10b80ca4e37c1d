"""Tasks for the tests of callbacks, errbacks, bare task names and dispatcherd's ``@task``.

Registered with our ``@task``. Each leaves evidence: one JSON line in a file, with the pid
that ran it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from dispatcher.publish import task

EVIDENCE_VARIABLE = "FOLLOW_UP_EVIDENCE"
"""The environment variable naming the evidence file of :func:`record_bare` (which takes no
arguments, so that it can be sent as a bare name)."""


def _record(path: str, **fields: Any) -> None:
    line = json.dumps({"pid": os.getpid(), "time": time.time(), **fields}) + "\n"
    with open(path, "a", encoding="utf-8") as evidence:
        evidence.write(line)


@task()
def record_bare() -> None:
    """Record a run in the file named by ``$FOLLOW_UP_EVIDENCE``; takes no arguments."""
    _record(os.environ[EVIDENCE_VARIABLE], label="bare")


@task(bind=True)
def bound_record(dispatcher: Any, path: str, label: str) -> None:
    """Record the uuid and worker id of the bound object it gets."""
    _record(path, label=label, uuid=dispatcher.uuid, worker_id=dispatcher.worker_id)


@task()
def modules_loaded(path: str) -> None:
    """Record whether dispatcherd is loaded in this worker."""
    _record(path, dispatcherd="dispatcherd" in sys.modules)


@task(name="support.dispatcherd_decorated.claimed")
def ours_too(path: str) -> None:
    """Registered under a name :mod:`support.dispatcherd_decorated` also registers (with
    dispatcherd's ``@task``): ours is kept."""
    _record(path, label="claimed", by="ours")
