"""``dispatcher-standalone --version``."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from dispatcher.server.cli import main


def test_version_prints_the_distribution_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"dispatcher-server {version('dispatcher-server')}\n"
