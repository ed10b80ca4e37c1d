"""Which release of dispatcher is installed: the version the tools print and services report.

``dispatcher-standalone --version`` and ``dispatcherctl --version`` print it; a service
names it in its start-up line and in its ``status`` reply (``version``), so that an operator
can tell which services of a fleet run which code.
"""

from __future__ import annotations

import functools
from typing import Final

DISTRIBUTION: Final = "dispatcher-server"
"""The distribution whose version is the release's (the three are released together)."""

UNKNOWN: Final = "(version unknown)"
"""The version said when the distribution's metadata cannot be found (run from a copy of
the source that is not installed)."""


@functools.cache
def installed_version() -> str:
    """The version of the installed :data:`DISTRIBUTION` (:data:`UNKNOWN` if not installed).

    Looked up once per process (about 2 ms), when first asked for.
    """
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN
