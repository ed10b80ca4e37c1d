"""Django's database connections in the workers of ``manage.py rundispatcher``.

Each worker must have connections of its own, whatever the fork server opened before it
forked them (Django's connection pool included), and a task stopped in the middle of a
query (its timeout, a cancel) must leave its worker a connection the next task can use,
with the query stopped on the server too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

pytest.importorskip("django", reason="Django is not installed (a test dependency: django>=5.2)")
pytest.importorskip("psycopg_pool", reason="psycopg_pool is not installed (a test dependency)")

from support.django_site import DemoSite, ManagePy, note, note_exists, unique
from support.postgres import unique_channel
from support.service import wait_until

pytestmark = pytest.mark.usefixtures("demo_site")


def send(demo_site: DemoSite, channel: str, task: str, *args: object, **options: object) -> None:
    """NOTIFY the message of *task* with *args* (and message keys *options*) on *channel*."""
    message = {"task": f"demo_notes.tasks.{task}", "args": list(args), **options}
    with psycopg.connect(demo_site.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(message)))


def backend_notes(label: str, count: int) -> dict[int, set[int]]:
    """The server processes of the notes ``label-0`` .. ``label-<count-1>``, by worker."""
    from demo_notes.models import Note

    def all_written() -> list[Any] | None:
        found = list(Note.objects.filter(text__startswith=f"{label}-"))
        return found if len(found) == count else None

    notes = wait_until(all_written, 30)
    by_worker: dict[int, set[int]] = {}
    for written in notes:
        by_worker.setdefault(written.written_by_pid, set()).add(int(written.text.split()[-1]))
    return by_worker


def rundispatcher(
    demo_site: DemoSite, tmp_path: Path, name: str, settings: str
) -> Iterator[tuple[ManagePy, str]]:
    """``rundispatcher`` of the demo project with *settings*, on a channel of its own."""
    channel = unique_channel(name)
    env = demo_site.env(channel, settings=settings)
    service = ManagePy(env, tmp_path / "service.log", "rundispatcher")
    try:
        yield service.wait_ready(), channel
    finally:
        service.kill()


@pytest.fixture
def pooled_service(demo_site: DemoSite, tmp_path: Path) -> Iterator[tuple[ManagePy, str]]:
    """``rundispatcher`` with Django's connection pool, two workers, a query at import."""
    yield from rundispatcher(demo_site, tmp_path, "pooled", "demo_site.settings_pool")


@pytest.mark.timeout(90)
def test_workers_never_share_the_pool_the_fork_server_opened(
    demo_site: DemoSite, pooled_service: tuple[ManagePy, str]
) -> None:
    """The fork server's pool (opened by a query at import) is not inherited by a worker:
    every task gets a connection, and no server process serves two workers."""
    service, channel = pooled_service
    label, count = unique("pooled"), 8  # more than the pool holds
    for number in range(count):
        send(demo_site, channel, "write_backend_note", f"{label}-{number}")
    by_worker = backend_notes(label, count)
    backends = [backend for used in by_worker.values() for backend in used]
    assert len(backends) == len(set(backends)), (by_worker, service.log)
    assert "PoolTimeout" not in service.log, service.log


@pytest.fixture
def persistent_service(demo_site: DemoSite, tmp_path: Path) -> Iterator[tuple[ManagePy, str]]:
    """``rundispatcher`` with ``CONN_MAX_AGE`` set, one worker."""
    yield from rundispatcher(demo_site, tmp_path, "persistent", "demo_site.settings_persistent")


def running_queries(dsn: str, label: str) -> list[int]:
    """The server processes running the query of ``query_for`` with *label*."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s"
            " AND pid <> pg_backend_pid()",
            (f"%/* {label} */%",),
        ).fetchall()
    return [pid for (pid,) in rows]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("task", "stop"),
    [("query_for", "timeout"), ("query_for", "cancel"), ("query_in_atomic_for", "timeout")],
)
def test_a_task_stopped_in_a_query_leaves_a_usable_connection(
    demo_site: DemoSite, persistent_service: tuple[ManagePy, str], task: str, stop: str
) -> None:
    """The query is cancelled on the server, and the worker's next task runs."""
    service, channel = persistent_service
    label, after = unique("stopped-query"), unique("after-stopped-query")
    send(demo_site, channel, "write_note", unique("connected"))  # the connection to keep
    options = {"timeout": 1} if stop == "timeout" else {"uuid": label}
    send(demo_site, channel, task, 3600, label, **options)
    try:
        wait_until(lambda: running_queries(demo_site.dsn, label), 15)
        if stop == "cancel":
            command = {"control": "cancel", "control_data": {"uuid": label}}
            with psycopg.connect(demo_site.dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(command)))
        service.wait_for_log(rf"{task} \(uuid .*\) finished (timeout|cancelled)")
        send(demo_site, channel, "write_note", after)
        assert note(after).text == after, service.log
        wait_until(lambda: not running_queries(demo_site.dsn, label), 15)
        assert not note_exists(label)  # query_in_atomic_for's note: rolled back
    finally:
        with psycopg.connect(demo_site.dsn, autocommit=True) as conn:
            for pid in running_queries(demo_site.dsn, label):
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
