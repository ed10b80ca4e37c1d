"""The README's main command: the demo runs on an embedded PostgreSQL and reports its tasks."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.paths import REPO
from support.service import alive


@pytest.fixture
def demo_folder() -> Iterator[Path]:
    """Where the demo runs (its embedded server's data in ``.demo``), outside pytest's
    temporary root: pytest makes that root mode 0700 again as any session starts, which the
    embedded server's user (when the tests run as root) then cannot cross."""
    folder = Path(tempfile.mkdtemp(prefix="dispatcher-demo-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_runs_on_an_embedded_database_and_leaves_nothing_running(demo_folder: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "docs" / "examples" / "demo.py"), "--embedded"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=demo_folder,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "starting an embedded one" in out
    assert "published 17 tasks:" in out
    assert "  14 ok\n   2 timeout\n   1 error\nall tasks ran." in out
    assert "embedded PostgreSQL stopped" in out
    pid_file = demo_folder / ".demo" / "pgdata" / "postmaster.pid"
    if pid_file.exists():
        assert not alive(int(pid_file.read_text().split()[0]))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_leaves_nothing_running(demo_folder: Path) -> None:
    import signal

    from support.service import children, wait_until

    with subprocess.Popen(
        [sys.executable, "-u", str(REPO / "docs" / "examples" / "demo.py"), "--embedded"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=demo_folder,
    ) as demo:
        assert demo.stdout is not None
        seen = []
        for line in demo.stdout:
            seen.append(line)
            if "started (pid" in line:
                break
        service_pid = int(seen[-1].split("(pid ")[1].split(")")[0])
        started = children(demo.pid) | {service_pid}
        demo.send_signal(signal.SIGINT)
        rest = demo.stdout.read()
        assert demo.wait(60) == 130, "".join(seen) + rest
    assert "interrupted: everything started was stopped" in rest
    assert "embedded PostgreSQL stopped" in rest
    wait_until(lambda: not any(alive(pid) for pid in started), timeout=20)
    pid_file = demo_folder / ".demo" / "pgdata" / "postmaster.pid"
    assert not pid_file.exists() or not alive(int(pid_file.read_text().split()[0]))
