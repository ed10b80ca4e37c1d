"""Unit tests: each starts without the publisher config an earlier one installed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dispatcher.config import reset


@pytest.fixture(autouse=True)
def _no_config_left_behind() -> Iterator[None]:
    """No unit test sees the publisher config an earlier test of its process installed.

    (Integration tests install theirs with fixtures that remove it; the Django ones keep the
    one Django's start-up installed, once per process.)
    """
    yield
    reset()
