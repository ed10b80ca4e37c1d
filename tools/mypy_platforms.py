"""Type-check, as on Windows and on macOS, the code that runs there: ``hatch run lint`` runs it.

The publisher SDK (``dispatcher-schema``, ``dispatcher-publisher``) and ``dispatcherctl``
run on every platform; the service runs on Linux only. mypy reads the standard library's
stubs for the platform it is told, where Windows lacks what Linux has (``os.register_at_fork``,
``socket.AF_UNIX``, most signals, ``termios``, ``resource``) and macOS lacks what only Linux
has (``os.pidfd_open``, ``signal.SIGRTMIN``): a call to one of them, unguarded, is an error.
The modules the checked ones import are checked silently (the service's import Linux-only
ones). Exit status: mypy's worst.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "packages" / "dispatcher-server" / "src" / "dispatcher" / "server"

PLATFORMS = ("win32", "darwin")

DISPATCHERCTL_MODULES = (
    "__init__.py",
    "scripts.py",
    "host.py",
    "cli_arguments.py",
    "log_arguments.py",
    "log_records.py",
    "log_text.py",
    "log_handler.py",
    "log_writer.py",
    "resources.py",
    "release.py",
    "origin.py",
    "missing_config.py",
    "queue_admin.py",
    "queue_admin_cancel.py",
    "queue_admin_list.py",
    "queue_admin_purge.py",
    "queue_admin_retry.py",
    "stats.py",
    "backoff.py",
    "brokers/__init__.py",
    "brokers/base.py",
    "brokers/pg_queue/__init__.py",
    "brokers/pg_queue/sampler.py",
    "brokers/pg_queue/migrations.py",
)
"""The server's modules ``dispatcherctl`` imports (what ``import dispatcher.server.ctl,
dispatcher.server.ctl_top_poll`` loads, and the log modules), besides ``ctl*.py``."""


def portable_paths() -> list[str]:
    """The source the check covers, relative to the repository."""
    server = [*sorted(SERVER.glob("ctl*.py")), *(SERVER / name for name in DISPATCHERCTL_MODULES)]
    return [
        "packages/dispatcher-schema/src",
        "packages/dispatcher-publisher/src",
        *(str(path.relative_to(REPO)) for path in server),
    ]


def main() -> int:
    """Run mypy once per platform of :data:`PLATFORMS`; the worst exit status."""
    status = 0
    for platform in PLATFORMS:
        print(f"mypy --platform {platform}: the SDK and dispatcherctl", flush=True)
        command = [sys.executable, "-m", "mypy", "--platform", platform]
        command += ["--cache-dir", f".mypy_cache/{platform}", "--follow-imports", "silent"]
        status = max(status, subprocess.run([*command, *portable_paths()], cwd=REPO).returncode)
    return status


if __name__ == "__main__":
    sys.exit(main())
