"""dispatcherd 2026.5.27, from the package index, in a virtual environment of its own.

The compatibility tests (``tests/e2e/dispatcherd_compat/``) drive our service with
dispatcherd's publisher, ``dispatcherctl`` and ``Control``, and a real dispatcherd service
with ours. :func:`environment` makes that virtual environment once, under the checkout's
``.tmp/dispatcherd-2026.5.27/``, and reuses it afterwards (it checks that it still imports
dispatcherd at that version; a broken one is made again). When pip cannot install it (no
network, no index), the tests that need it are skipped, saying why.

Several pytest-xdist workers may ask at once: the first takes a lock (``flock`` on a file
beside the environment) and builds in a folder of its own, which it renames into place when
finished; the others wait on the lock, then find the finished environment. A build that
failed in this test run is not tried again by the other workers: they skip with the same
reason.

The environment is not the benchmark's (``.tmp/bench/``, made by ``hatch run bench-compare``):
that one is made in place and may be cleared and remade while the tests run.

:class:`Driver` runs :mod:`support.dispatcherd_driver` in that environment, to call
dispatcherd's publisher and ``Control`` from the tests; :class:`DispatcherdService` runs a
real dispatcherd service.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.paths import REPO
from support.service import children, wait_until

VERSION = "2026.5.27"
REQUIREMENTS = (f"dispatcherd[pg_notify]=={VERSION}", "psycopg[binary]>=3.2.4")
"""dispatcherd with its PostgreSQL extra; psycopg's binary build, for hosts without libpq."""

HOME = REPO / ".tmp" / f"dispatcherd-{VERSION}"
"""Where the environment is kept between test runs (``.tmp/`` is ignored by git)."""

TESTS = REPO / "tests"

OVERLAY_PACKAGES = ("dispatcherd", "yaml", "_yaml")
"""dispatcherd and PyYAML, the only packages it needs that our environment lacks (it shares
psycopg with ours): linked into ``overlay/``, a folder to put on ``PYTHONPATH`` so that a
process of ours can import dispatcherd (see :attr:`Dispatcherd.overlay`)."""

PIP_TIMEOUT = 600.0


@dataclass(frozen=True)
class Dispatcherd:
    """The virtual environment holding dispatcherd."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def script(self, name: str) -> list[str]:
        """The command line of one of its console scripts (``dispatcherctl``, ``dispatcherd``).

        Run through its Python, so that the script's ``#!`` line does not matter.
        """
        return [str(self.python), str(self.root / "bin" / name)]

    @property
    def overlay(self) -> Path:
        """A folder of links to dispatcherd and PyYAML only, for a ``PYTHONPATH``.

        It lets our service (running in our environment) import dispatcherd as if it were
        installed there too, without dispatcherd's copies of the packages we share
        (psycopg, typing_extensions) taking the place of ours.
        """
        return self.root / "overlay"


def environment() -> Dispatcherd:
    """Return dispatcherd's virtual environment, made once; skip the test if it cannot be."""
    HOME.parent.mkdir(parents=True, exist_ok=True)
    found = Dispatcherd(HOME)
    if _usable(found):
        return found
    failure_note = HOME.with_name(HOME.name + ".failed")
    with _locked(HOME.with_name(HOME.name + ".lock")):
        if _usable(found):  # another worker made it while this one waited
            return found
        run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")
        if run and failure_note.exists():
            note = json.loads(failure_note.read_text())
            if note.get("run") == run:
                pytest.skip(note["reason"])
        try:
            _build(HOME)
        except _BuildFailed as failed:
            failure_note.write_text(json.dumps({"run": run, "reason": str(failed)}))
            pytest.skip(str(failed))
        failure_note.unlink(missing_ok=True)
    return found


class _BuildFailed(Exception):
    """The environment could not be made; the message says why, in one line."""


@contextlib.contextmanager
def _locked(path: Path) -> Any:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _usable(env: Dispatcherd) -> bool:
    if not (env.python.exists() and (env.overlay / "dispatcherd").exists()):
        return False
    check = subprocess.run(
        [
            str(env.python),
            "-c",
            "import importlib.metadata, psycopg, yaml, dispatcherd.cli;"
            "print(importlib.metadata.version('dispatcherd'))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return check.returncode == 0 and check.stdout.strip() == VERSION


def _build(home: Path) -> None:
    """Make the environment in a folder of its own, then rename it to *home*."""
    for left in home.parent.glob(f"{home.name}.building-*"):  # by a build that was killed
        shutil.rmtree(left, ignore_errors=True)
    building = home.with_name(f"{home.name}.building-{os.getpid()}")
    try:
        _run("create a virtual environment", [sys.executable, "-m", "venv", str(building)])
        pip = [str(building / "bin" / "python"), "-m", "pip"]
        _run(
            f"pip install {' '.join(REQUIREMENTS)}",
            [*pip, "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS],
        )
        site_packages = next((building / "lib").glob("python3*/site-packages"))
        overlay = building / "overlay"
        overlay.mkdir()
        for package in OVERLAY_PACKAGES:
            if (site_packages / package).exists():
                target = os.path.relpath(site_packages / package, overlay)
                (overlay / package).symlink_to(target)
        _fix_script_headers(building / "bin", building, home)
        if home.exists():  # a broken one (it failed the check): replaced
            shutil.rmtree(home)
        building.rename(home)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _run(what: str, command: list[str]) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise _BuildFailed(f"cannot {what}: no answer in {PIP_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines()]
        errors = [line for line in lines if line.startswith("ERROR")] or [
            line for line in lines if line
        ]
        first = errors[0] if errors else f"exit status {done.returncode}"
        raise _BuildFailed(f"cannot {what} (dispatcherd {VERSION} is needed): {first}")


def _fix_script_headers(folder: Path, built: Path, final: Path) -> None:
    """Point the console scripts' ``#!`` lines at the environment's final place."""
    old, new = f"#!{built}/".encode(), f"#!{final}/".encode()
    for script in folder.iterdir():
        if script.is_file() and not script.is_symlink():
            content = script.read_bytes()
            if content.startswith(old):
                script.write_bytes(new + content[len(old) :])


# -- dispatcherd's configuration ------------------------------------------------------------


def config(
    dsn: str,
    channels: list[str],
    *,
    node_id: str | None = None,
    control_producer: bool = False,
    **service: Any,
) -> dict[str, Any]:
    """A dispatcherd config (its version 2 layout) for a pg_notify broker on *channels*.

    The first channel is the default one to publish to. *service* adds keys to its
    ``service`` section (``pool_kwargs``, ``process_manager_kwargs``, ...).
    """
    document: dict[str, Any] = {
        "version": 2,
        "brokers": {
            "pg_notify": {
                "config": {"conninfo": dsn},
                "channels": channels,
                "default_publish_channel": channels[0],
            }
        },
        "service": {"pool_kwargs": {"min_workers": 1, "max_workers": 2}, **service},
        "publish": {"default_broker": "pg_notify"},
    }
    if node_id is not None:
        document["service"]["main_kwargs"] = {"node_id": node_id}
    if control_producer:
        document["producers"] = {"ControlProducer": {}}
    return document


def write_config(path: Path, document: dict[str, Any]) -> Path:
    """Write *document* to *path* (JSON is YAML: dispatcherd reads it with ``yaml``)."""
    path.write_text(json.dumps(document, indent=2))
    return path


def environment_variables(*paths: Path) -> dict[str, str]:
    """This process's environment, with ``PYTHONPATH`` set to ``tests/`` then *paths*."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (TESTS, *paths))}
    env["PYTHONUNBUFFERED"] = "1"
    for name in ("DISPATCHERD_CONFIG_FILE", "DISPATCHER_CONFIG_FILE"):
        env.pop(name, None)
    return env


# -- dispatcherd's clients, driven from the tests -------------------------------------------


class DriverError(Exception):
    """A call the driver made raised; the message is the exception's type and text."""


class Driver:
    """:mod:`support.dispatcherd_driver` running in dispatcherd's environment.

    Each :meth:`call` sends one request and waits for its answer (see the driver's
    docstring for the calls). Its stderr (dispatcherd's log) goes to *log*.
    """

    def __init__(self, env: Dispatcherd, config_path: Path, log: Path, **extra_env: str) -> None:
        self.log = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [str(env.python), "-m", "support.dispatcherd_driver", str(config_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**environment_variables(), **extra_env},
            cwd=log.parent,
        )
        self._buffer = b""

    def call(self, name: str, timeout: float = 20, **arguments: Any) -> Any:
        """Make one call; return its result, or raise :class:`DriverError`."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(json.dumps({"call": name, **arguments}).encode() + b"\n")
        stdin.flush()
        line = self._read_line(timeout)
        if not line:
            raise AssertionError(
                f"the dispatcherd driver exited during {name!r}; its log:\n"
                + self.log.read_text(errors="replace")
            )
        answer = json.loads(line)
        if "error" in answer:
            raise DriverError(answer["error"])
        return answer["result"]

    def _read_line(self, timeout: float) -> bytes:
        """The next line of the driver's output (empty if it exited), or fail at the deadline."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no answer from the dispatcherd driver within {timeout} s")
            ready, _, _ = select.select([stdout], [], [], remaining)
            if ready:
                data = os.read(stdout.fileno(), 1 << 16)
                if not data:
                    return b""
                self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()  # the driver ends at the end of its input
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._log.close()


# -- a real dispatcherd service --------------------------------------------------------------


class DispatcherdService:
    """dispatcherd's own service (its ``dispatcherd`` command), as a subprocess.

    It imports the tasks it runs from ``tests/`` (``PYTHONPATH``), as dispatcherd does: by
    the name in each message.
    """

    def __init__(self, env: Dispatcherd, document: dict[str, Any], folder: Path) -> None:
        self.document = document
        self.folder = folder
        self.config_path = write_config(folder / "dispatcherd.yml", document)
        self.log_path = folder / "dispatcherd.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *env.script("dispatcherd"),
                    "--config",
                    str(self.config_path),
                    "--log-level",
                    "INFO",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment_variables(),
                cwd=folder,
                start_new_session=True,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 30) -> DispatcherdService:
        """Wait until it listens on each of its channels."""
        channels = self.document["brokers"]["pg_notify"]["channels"]
        wanted = [f"listening on channel '{channel}'" for channel in channels]

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"dispatcherd exited at start; its log:\n{self.log}")
            log = self.log
            return all(line in log for line in wanted)

        try:
            wait_until(ready, timeout)
        except AssertionError as failed:
            raise AssertionError(f"{failed}; dispatcherd's log:\n{self.log}") from None
        return self

    def kill_everything(self) -> None:
        """Kill the service and whatever it started (its fork server, its workers)."""
        leftovers = children(self.process.pid)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
