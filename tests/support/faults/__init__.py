"""Resource shortages injected into service subprocesses (see ``sitecustomize`` here)."""

from __future__ import annotations

import os
from pathlib import Path

from support.paths import REPO

FOLDER = Path(__file__).resolve().parent


def fault_env(**faults: str) -> dict[str, str]:
    """The environment of a service with *faults* (``no_threads="/path"``, ``no_fork="1"``...).

    Each name is one of the ``DISPATCHER_FAULT_*`` variables the ``sitecustomize`` reads.
    """
    path = os.pathsep.join([str(FOLDER), str(REPO / "tests")])
    named = {f"DISPATCHER_FAULT_{name.upper()}": value for name, value in faults.items()}
    return {"PYTHONPATH": path, **named}
