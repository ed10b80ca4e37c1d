"""pytest fixtures for testing code that submits tasks.

Enable them in your top-level ``conftest.py``::

    pytest_plugins = ["dispatcher.testing.pytest_plugin"]

- ``dispatcher_eager``: every task submitted during the test runs at once, in the test's
  process (see :func:`dispatcher.testing.eager`); an exception a task raises reaches the
  test.
- ``dispatcher_captured``: every submission is recorded instead (see
  :func:`dispatcher.testing.captured`); run them with ``run_all()``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dispatcher.testing.modes import Captured, Eager, captured, eager


@pytest.fixture
def dispatcher_eager() -> Iterator[Eager]:
    """Run every task submitted during the test at once, in this process."""
    with eager() as mode:
        yield mode


@pytest.fixture
def dispatcher_captured() -> Iterator[Captured]:
    """Record every task submitted during the test instead of sending it."""
    with captured() as record:
        yield record
