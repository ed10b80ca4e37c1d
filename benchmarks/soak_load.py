"""The mixed soak's load: what it publishes each second, and what it does beside.

Each second: ``rate`` pg_notify tasks (in batches every 0.1 s) and, on the durable queue,
plain jobs (both with a timeout of an hour, which they never reach), delayed ones, ones
that fail once then succeed, ones that always fail (2 attempts), ones that time out (2
attempts); every 2 s three identical jobs of each ``on_duplicate`` mode (serial, discard,
queue_one) and three serial pg_notify twins; every 5 s a pg_notify task that times out;
every 10 s one too large for a NOTIFY (sent in chunks). Beside, in threads: a burst of
control commands (``status``, ``running``, ``workers``, ``metrics``, over the socket and
over pg_notify) every few seconds; ``dispatcherctl cancel`` of a running and of a waiting
task, durable and pg_notify; the service's PostgreSQL connections terminated; and, when the
service runs with ``--reload``, its task module changed, so that its workers are replaced.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
import uuid as uuids
from pathlib import Path
from typing import Any

import psycopg
from live_service import LiveService
from soak_ledger import Entry, Ledger, near

from dispatcher.control import control_with_reply
from dispatcher.publish import batch, submit_task

QUEUE = "soak_q"
TASKS = "soak_tasks"
LARGE_PADDING = 20_000
"""Characters of argument of the large pg_notify tasks (three or four chunks each)."""
LONG_TIMEOUT = 3600
"""The timeout of the plain tasks and jobs, which end long before it: what the service keeps
of such a deadline after its task ended would grow the main process for an hour."""


class MixedLoad:
    """Publishes the soak's tasks and runs its side actions against *service*."""

    def __init__(self, service: LiveService, ledger: Ledger, dsn: str, rate: float) -> None:
        self.service = service
        self.ledger = ledger
        self.dsn = dsn
        self.rate = rate
        self.stopping = threading.Event()
        self.errors: list[tuple[float, str]] = []  # (when, what)
        self.counts: dict[str, int] = {}
        self._seconds = 0
        self._notify_sent = 0.0

    def error(self, text: str) -> None:
        self.errors.append((time.time(), text))

    def unexpected_errors(self) -> list[str]:
        """The errors, less a pg_notify command lost while its listener reconnected.

        Control commands over pg_notify are NOTIFYs too: at most once, like tasks.
        """
        events = self.ledger.terminations
        return [
            text
            for when, text in self.errors
            if not (text.startswith("no pg_notify reply") and near(when, events))
        ]

    def submit(self, task: str, entry: Entry, **options: Any) -> str:
        uuid = str(uuids.uuid4())
        self.ledger.add(uuid, entry)
        submit_task(f"{TASKS}.{task}", uuid=uuid, bind=True, **options)
        return uuid

    def notify_tasks(self, count: int) -> None:
        with batch():
            for _ in range(count):
                entry = Entry("n", time.time(), 1, at_most_once=True)
                self.submit(
                    "record", entry, args=["n"], queue=self.service.channel, timeout=LONG_TIMEOUT
                )

    def tick(self, elapsed: float) -> None:
        """Publish what is due *elapsed* seconds into the soak (called every ~0.1 s)."""
        due = int(elapsed * self.rate - self._notify_sent)
        if due > 0:
            self.notify_tasks(due)
            self._notify_sent += due
        while self._seconds < int(elapsed):
            self._seconds += 1
            self.each_second(self._seconds)

    def each_second(self, second: int) -> None:
        now = time.time()
        channel = self.service.channel
        with batch():
            for _ in range(10):
                entry = Entry("q", now, 1)
                self.submit("record", entry, args=["q"], queue=QUEUE, timeout=LONG_TIMEOUT)
            for _ in range(2):
                delay = random.uniform(1, 5)
                entry = Entry("qd", now, 1)
                self.submit("record", entry, args=["qd"], queue=QUEUE, delay=delay)
            entry = Entry("qf", now, 2)
            self.submit("flaky", entry, args=["qf", 1], queue=QUEUE, max_attempts=3)
        if second % 5 == 0:
            entry = Entry("qx", now, 2)
            self.submit("flaky", entry, args=["qx", 99], queue=QUEUE, max_attempts=2)
            entry = Entry("qt", now, 2, ends=0)
            self.submit("sleeper", entry, args=["qt", 3], queue=QUEUE, timeout=0.5, max_attempts=2)
            entry = Entry("nt", now, 1, ends=0, at_most_once=True)
            self.submit("sleeper", entry, args=["nt", 3], queue=channel, timeout=0.5)
        if second % 2 == 0:
            self.twins(second, now)
        if second % 10 == 0:  # over the NOTIFY limit: sent in chunks, joined by the service
            entry = Entry("n-large", now, 1, at_most_once=True)
            padding = "x" * LARGE_PADDING
            self.submit("record_large", entry, args=["n-large", padding], queue=channel)

    def twins(self, second: int, now: float) -> None:
        """Three identical jobs of each on_duplicate mode; those not stored must not run."""
        durable: list[str] = []
        for mode in ("serial", "discard", "queue_one"):
            key = f"{mode}-{second}"
            for _ in range(3):
                entry = Entry(f"q-{mode}", now, 1, key=key if mode == "serial" else None)
                args = [f"q-{mode}", second, 0.2]
                durable.append(
                    self.submit("twin", entry, args=args, queue=QUEUE, on_duplicate=mode)
                )
        for _ in range(3):
            entry = Entry("n-serial", now, 1, key=f"n-serial-{second}", at_most_once=True)
            args = ["n-serial", second, 0.1]
            self.submit("twin", entry, args=args, queue=self.service.channel,
                on_duplicate="serial",
            )  # fmt: skip
        with psycopg.connect(self.dsn, autocommit=True, application_name="soak-probe") as conn:
            stored = {
                row[0]
                for row in conn.execute(
                    "SELECT uuid FROM dispatcher.jobs WHERE uuid = ANY(%s)", (durable,)
                )
            }
        for uuid in durable:
            if uuid not in stored:
                self.ledger.expect(uuid, 0)

    # --- side actions, each in a thread of its own -----------------------------------

    def start_side_actions(self, config_path: Path, reload_file: Path | None) -> None:
        actions = [
            ("controls", 3.0, self.control_burst),
            ("cancels", 15.0, lambda: self.cancels(config_path)),
            ("terminations", 45.0, self.terminate_connections),
        ]
        if reload_file is not None:
            actions.append(("reloads", 150.0, lambda: self.reload(reload_file)))
        for name, every, action in actions:
            threading.Thread(
                target=self._repeat, args=(name, every, action), name=name, daemon=True
            ).start()

    def _repeat(self, name: str, every: float, action: Any) -> None:
        while not self.stopping.wait(every):
            try:
                action()
                self.counts[name] = self.counts.get(name, 0) + 1
            except Exception as error:
                self.error(f"{name}: {type(error).__name__}: {error}")

    def control_burst(self) -> None:
        for command in ("status", "running", "workers", "metrics"):
            if self.service.control(command) is None:
                self.error(f"no socket reply to {command}")
            result = control_with_reply(
                command, queue=self.service.channel, expected_replies=1, timeout=5
            )
            if len(result.replies) != 1:
                self.error(f"no pg_notify reply to {command}")

    def cancels(self, config_path: Path) -> None:
        """Cancel a running and a waiting task, durable and pg_notify, with dispatcherctl."""
        now = time.time()
        channel = self.service.channel
        running_job = self.submit("sleeper", Entry("cr", now, 1, ends=0), args=["cr", 20],
                                  queue=QUEUE)  # fmt: skip
        running_task = self.submit("sleeper", Entry("ncr", now, 1, ends=0),
                                   args=["ncr", 20], queue=channel)  # fmt: skip
        waiting_job = self.submit("record", Entry("cq", now, 0), args=["cq"],
                                  queue=QUEUE, delay=60)  # fmt: skip
        waiting_task = self.submit("record", Entry("ncq", now, 0), args=["ncq"],
                                   queue=channel, delay=60)  # fmt: skip
        for uuid in (running_job, running_task):
            if not self.wait_running(uuid):
                self.ledger.expect(uuid, 1, ends=1)  # never seen on a worker: let it be
                self.error(f"{uuid} was not seen running within 10 s")
                continue
            self.ctl(config_path, "cancel", "--uuid", uuid)
        for uuid in (waiting_job, waiting_task):
            self.ctl(config_path, "cancel", "--uuid", uuid)

    def wait_running(self, uuid: str) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reply = self.service.control("running", data={"uuid": uuid})
            if reply and any(str(v.get("where", "")).startswith("worker-") and
                             not str(v.get("where")).endswith("next")
                             for k, v in reply.items() if isinstance(v, dict)):  # fmt: skip
                return True
            time.sleep(0.2)
        return False

    def ctl(self, config_path: Path, *args: str) -> None:
        command = [sys.executable, "-m", "dispatcher.server.ctl", "--config", str(config_path)]
        done = subprocess.run(
            [*command, *args, "--json"], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            self.error(f"dispatcherctl {' '.join(args)}: {done.returncode} {done.stderr}")

    def terminate_connections(self) -> None:
        query = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name LIKE %s"
        )
        with psycopg.connect(self.dsn, autocommit=True, application_name="soak-probe") as conn:
            row = conn.execute(query, (f"%{self.service.channel}%",)).fetchone()
        self.ledger.terminations.append(time.time())
        self.counts["terminated"] = self.counts.get("terminated", 0) + (row[0] if row else 0)

    def reload(self, reload_file: Path) -> None:
        with reload_file.open("a") as out:
            out.write(f"# changed at {time.time()}: the service reloads its workers\n")
        self.ledger.reloads.append(time.time())
