"""dispatcher.contrib.django in a real Django project (tests/django_project) on the test database.

The project is set up in this process once (see :mod:`support.django_site`). The service
runs as ``manage.py rundispatcher``, a subprocess; the tests see what its tasks did through
the ORM.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

pytest.importorskip("django", reason="Django is not installed (a test dependency: django>=5.2)")

from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connections, transaction
from django.db.transaction import TransactionManagementError
from django.test import TestCase, override_settings
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from dispatcher.config import get_settings, install
from dispatcher.publish import Submission, close_connections
from support import app_connections
from support.django_site import PROJECT, DemoSite, ManagePy, note, note_exists, unique
from support.postgres import unique_channel
from support.service import alive, children, wait_until

pytestmark = pytest.mark.usefixtures("demo_site")


class Boom(Exception):
    """Raised to roll a block back."""


@pytest.fixture(scope="module")
def site_service(
    demo_project: DemoSite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagePy]:
    """``manage.py rundispatcher`` on the project's channel (one worker: tasks run in order)."""
    log = tmp_path_factory.mktemp("rundispatcher") / "service.log"
    service = ManagePy(demo_project.env(), log, "rundispatcher")
    try:
        yield service.wait_ready()
    finally:
        service.kill()


@pytest.fixture
def restore_config(demo_site: DemoSite) -> Iterator[None]:
    """Put the project's own config back after a test that installs another."""
    from dispatcher.contrib.django.config import configure

    yield
    close_connections()
    configure()


def submit_then_roll_back(
    text: str, using: str, submitted: list[Submission] | None = None, **options: Any
) -> None:
    """Submit a note's task inside an atomic block of *using* that then rolls back.

    The submission is appended to *submitted*.
    """
    from demo_notes.tasks import write_note

    from dispatcher.contrib.django import submit_on_commit

    with transaction.atomic(using=using):
        submission = submit_on_commit(write_note, args=[text], using=using, **options)
        if submitted is not None:
            submitted.append(submission)
        raise Boom


# --- config from settings.DISPATCHER ---------------------------------------------------------


def test_settings_dispatcher_is_the_config_and_the_conninfo_comes_from_databases(
    demo_site: DemoSite,
) -> None:
    settings = get_settings()
    assert settings.brokers.pg_notify is not None
    assert settings.brokers.pg_notify.channels == (demo_site.channel,)
    assert settings.tasks.modules == ("demo_notes.tasks",)
    used = conninfo_to_dict(settings.brokers.pg_notify.conninfo)
    given = conninfo_to_dict(demo_site.dsn)
    assert {key: used.get(key) for key in ("host", "port", "dbname", "user")} == {
        key: given.get(key) for key in ("host", "port", "dbname", "user")
    }
    assert used["options"] == f"-c search_path={demo_site.schema}"  # OPTIONS travel too
    with psycopg.connect(settings.brokers.pg_notify.conninfo) as conn:  # and it connects
        assert conn.execute("SELECT current_schema()").fetchone() == (demo_site.schema,)


@pytest.mark.usefixtures("restore_config")
def test_settings_dispatcher_may_name_a_file(demo_site: DemoSite, tmp_path: Path) -> None:
    from dispatcher.contrib.django.config import configure

    path = tmp_path / "dispatcher.yml"
    path.write_text("version: 1\nbrokers:\n  pg_notify:\n    channels: [from_a_file]\n")
    with override_settings(DISPATCHER=str(path)):
        settings = configure()
    assert settings is not None
    assert settings.brokers.pg_notify is not None
    assert settings.brokers.pg_notify.channels == ("from_a_file",)
    assert (
        conninfo_to_dict(settings.brokers.pg_notify.conninfo)["dbname"]
        == (conninfo_to_dict(demo_site.dsn)["dbname"])
    )


@pytest.mark.usefixtures("demo_site", "restore_config")
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            {"version": 1, "brokers": {"pg_notify": {"chanels": ["x"]}}},
            "settings.DISPATCHER: brokers.pg_notify.chanels: unknown key (did you mean 'channels'?)",
        ),
        (
            {"version": 1, "brokers": {"pg_notify": {"channels": ["a b"]}}},
            "settings.DISPATCHER: brokers.pg_notify.channels[0]: ",
        ),
        (
            42,
            "settings.DISPATCHER: must be a dict in the shape of dispatcher.yml, or the path "
            "of such a file, not int",
        ),
        ("no-such-file.yml", "settings.DISPATCHER (no-such-file.yml): file not found"),
    ],
    ids=["unknown-key", "bad-value", "not-a-dict", "missing-file"],
)
def test_a_bad_settings_dispatcher_is_named(value: object, expected: str) -> None:
    from dispatcher.contrib.django import DjangoSettingsError
    from dispatcher.contrib.django.config import configure

    with override_settings(DISPATCHER=value), pytest.raises(DjangoSettingsError) as raised:
        configure()
    assert str(raised.value).startswith(expected)
    assert isinstance(raised.value, ImproperlyConfigured)
    assert get_settings().brokers.pg_notify is not None  # the config in force stays


@pytest.mark.usefixtures("demo_site", "restore_config")
def test_a_settings_dispatcher_without_version_is_told_only_that() -> None:
    """Not that the conninfo, which DATABASES gives, is required."""
    from dispatcher.contrib.django import DjangoSettingsError
    from dispatcher.contrib.django.config import configure

    value = {"brokers": {"pg_notify": {"channels": ["x"]}}, "tasks": {"modules": ["a.b"]}}
    with override_settings(DISPATCHER=value), pytest.raises(DjangoSettingsError) as raised:
        configure()
    assert [p.split(":")[0] for p in raised.value.problems] == ["version"]


def test_a_bad_key_stops_django_at_start_up(demo_site: DemoSite) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=PROJECT,
        env=demo_site.env(settings="demo_site.settings_bad_key"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "DjangoSettingsError: settings.DISPATCHER: brokers.pg_notify.chanels: "
            "unknown key (did you mean 'channels'?)"
        )
    )


# --- publishing that joins Django's transaction ----------------------------------------------


@contextlib.contextmanager
def listening(dsn: str, *channels: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for channel in channels:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        yield conn


def notifications_before_probe(
    dsn: str, listener: psycopg.Connection[Any], probe: str
) -> list[str]:
    """NOTIFY *probe* now, from another connection; return the channels heard before it.

    Notifications reach a listener in the order their transactions committed: whatever was
    sent before the probe arrives before it.
    """
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pg_notify(%s, 'probe')", (probe,))
    heard: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for notify in listener.notifies(timeout=deadline - time.monotonic(), stop_after=1):
            if notify.channel == probe:
                return heard
            heard.append(notify.channel)
    raise AssertionError("the probe never arrived")


@pytest.mark.usefixtures("site_service")
@pytest.mark.parametrize("using", ["default", "sqlite"], ids=["joins-postgresql", "on-commit"])
def test_a_task_submitted_in_atomic_is_delivered_at_commit(demo_site: DemoSite, using: str) -> None:
    from demo_notes.tasks import write_note

    from dispatcher.contrib.django import submit_on_commit

    text, probe = unique("committed"), unique_channel("probe")
    with listening(demo_site.dsn, demo_site.channel, probe) as listener:
        with transaction.atomic(using=using):
            submit_on_commit(write_note, args=[text], using=using)
            assert notifications_before_probe(demo_site.dsn, listener, probe) == []
        assert note(text).text == text


@pytest.mark.usefixtures("site_service")
@pytest.mark.parametrize("using", ["default", "sqlite"], ids=["joins-postgresql", "on-commit"])
def test_a_task_submitted_in_a_rolled_back_atomic_never_runs(
    demo_site: DemoSite, using: str
) -> None:
    from demo_notes.tasks import write_note

    from dispatcher.contrib.django import submit_on_commit

    rolled_back, sentinel = unique("rolled-back"), unique("sentinel")
    with pytest.raises(Boom):
        submit_then_roll_back(rolled_back, using)
    submit_on_commit(write_note, args=[sentinel], using=using)  # autocommit: sent at once
    note(sentinel)  # one worker, tasks in order: the other would have run first
    assert not note_exists(rolled_back)


@pytest.mark.usefixtures("site_service")
@pytest.mark.parametrize("using", ["default", "sqlite"], ids=["joins-postgresql", "on-commit"])
def test_a_rolled_back_savepoint_drops_only_its_own_tasks(using: str) -> None:
    from demo_notes.tasks import write_note

    from dispatcher.contrib.django import submit_on_commit

    dropped, kept = unique("savepoint"), unique("kept")
    with transaction.atomic(using=using):
        with pytest.raises(Boom):
            submit_then_roll_back(dropped, using)  # in a savepoint
        submit_on_commit(write_note, args=[kept], using=using)
    note(kept)  # sent after the other, in one worker: the other would have run first
    assert not note_exists(dropped)


def stored_jobs(demo_site: DemoSite, uuid: str) -> int:
    """Rows of the durable queue with this *uuid*, as another connection sees them."""
    with psycopg.connect(demo_site.dsn, autocommit=True) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.jobs WHERE uuid = %s").format(
            sql.Identifier(demo_site.schema)
        )
        row = conn.execute(query, (uuid,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.usefixtures("site_service")
@pytest.mark.parametrize("using", ["default", "sqlite"], ids=["joins-postgresql", "on-commit"])
def test_a_durable_job_is_stored_at_commit_and_never_on_rollback(
    demo_site: DemoSite, using: str
) -> None:
    from demo_notes.tasks import write_note

    from dispatcher.contrib.django import submit_on_commit

    committed, rolled_back = unique("durable"), unique("durable-rolled-back")
    with transaction.atomic(using=using):
        job = submit_on_commit(write_note, args=[committed], queue="demo_durable", using=using)
        assert stored_jobs(demo_site, job.uuid) == 0
    assert stored_jobs(demo_site, job.uuid) == 1
    assert note(committed).text == committed
    submitted: list[Submission] = []
    with pytest.raises(Boom):
        submit_then_roll_back(rolled_back, using, submitted, queue="demo_durable")
    assert stored_jobs(demo_site, submitted[0].uuid) == 0


@pytest.mark.usefixtures("site_service")
def test_a_job_read_on_djangos_connection_has_its_result_decoded() -> None:
    """Django reads jsonb as text on its connections (its JSONField decodes it): a job read
    there with ``connection=``, as the publishing docs show, is read as on the SDK's own."""
    from demo_notes.tasks import noted_result

    from dispatcher.contrib.django import submit_on_commit
    from dispatcher.publish import get_job, jobs

    submission = submit_on_commit(noted_result, args=["read"], queue="demo_durable")

    def done() -> Any:
        job = get_job(submission.uuid)
        return job if job is not None and job.state == "done" else None

    expected = {"text": "read", "numbers": [1, 2]}
    assert wait_until(done, 15).result == expected
    connections["default"].ensure_connection()
    django_connection = connections["default"].connection
    read = get_job(submission.uuid, connection=django_connection)
    assert read is not None
    assert read.result == expected
    listed = jobs(task="demo_notes.tasks.noted_result", connection=django_connection)
    assert [job.result for job in listed if job.uuid == submission.uuid] == [expected]


@pytest.mark.usefixtures("site_service")
def test_delay_on_commit_outside_atomic_sends_at_once() -> None:
    from demo_notes.tasks import write_note

    from dispatcher.contrib.django import delay_on_commit

    text = unique("autocommit")
    delay_on_commit(write_note, text)
    assert note(text).text == text


@pytest.mark.usefixtures("demo_site")
def test_dispatcher_testing_captures_on_commit_submissions_at_the_commit() -> None:
    from demo_notes.tasks import write_note

    from dispatcher.contrib.django import delay_on_commit
    from dispatcher.testing import captured

    with captured() as tasks:
        with transaction.atomic():
            delay_on_commit(write_note, "captured")
            assert tasks.for_task(write_note) == []
        [submitted] = tasks.for_task(write_note)
        assert submitted.args == ["captured"]
        with pytest.raises(Boom):
            submit_then_roll_back("never", "default")
        assert len(tasks.for_task(write_note)) == 1


@pytest.mark.usefixtures("demo_site", "restore_config")
def test_the_transaction_is_joined_only_on_the_brokers_database() -> None:
    from dispatcher.config import setup
    from dispatcher.contrib.django.publishing import transaction_connection

    channel = get_settings().brokers.pg_notify.channels[0]  # type: ignore[union-attr]
    joined = transaction_connection("default", channel)
    assert joined is not None
    assert joined is connections["default"].connection
    assert transaction_connection("sqlite", channel) is None
    conninfo = get_settings().brokers.pg_notify.conninfo  # type: ignore[union-attr]
    other = psycopg.conninfo.make_conninfo(conninfo, dbname="another_database")
    setup({"version": 1, "brokers": {"pg_notify": {"conninfo": other, "channels": [channel]}}})
    assert transaction_connection("default", channel) is None


# --- manage.py rundispatcher -----------------------------------------------------------------


def test_rundispatcher_runs_orm_tasks_in_workers_and_stops_on_sigterm(
    demo_site: DemoSite, tmp_path: Path
) -> None:
    channel, text = unique_channel("rundispatcher"), unique("from-rundispatcher")
    service = ManagePy(demo_site.env(channel), tmp_path / "service.log", "rundispatcher")
    try:
        service.wait_ready()
        descendants = children(service.process.pid)
        message = {"task": "demo_notes.tasks.write_note", "args": [text]}
        with psycopg.connect(demo_site.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(message)))
        worker = note(text).written_by_pid
        assert worker in descendants  # a worker wrote it, with the ORM
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(20) == 0, service.log
        assert "stopped" in service.log
        assert not any(alive(pid) for pid in descendants)
    finally:
        service.kill()


def test_rundispatcher_keeps_the_projects_logging_and_its_records_reach_the_log(
    demo_site: DemoSite, tmp_path: Path
) -> None:
    """A ``LOGGING`` in Django's "verbose" format (process and thread ids): the service's lines
    and the task's records are all written in it, the task's at once with their level."""
    channel, text = unique_channel("rundispatcher"), unique("logged")
    env = demo_site.env(channel, settings="demo_site.settings_logging")
    service = ManagePy(env, tmp_path / "service.log", "rundispatcher")
    try:
        service.wait_ready()
        message = {"task": "demo_notes.tasks.log_then_write_note", "args": [text]}
        with psycopg.connect(demo_site.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(message)))
        worker = note(text).written_by_pid
        service.wait_for_log(rf"(?m)^ERROR \S+ \S+ tasks {worker} \d+ noting {text}$")
        service.wait_for_log(r"log_then_write_note \(uuid .*\) finished ok")
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(20) == 0, service.log
    finally:
        service.kill()
    log = service.log
    assert "Logging error" not in log, log
    assert "task output" not in log, log
    pid = service.process.pid
    assert re.search(rf"(?m)^INFO \S+ \S+ \w+ {pid} \d+ listening on channels {channel}", log), log
    assert re.search(rf"(?m)^INFO \S+ \S+ \w+ {pid} \d+ dispatcher service .* stopped$", log), log


def test_rundispatcher_log_level_is_checked(demo_site: DemoSite) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "rundispatcher", "--log-level", "LOUD"],
        cwd=PROJECT,
        env=demo_site.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--log-level: invalid choice: 'LOUD'" in result.stderr


EDITED_TASKS = """
import os

from demo_notes.models import Note
from dispatcher.publish import task


@task()
def write_versioned_note(text):
    Note.objects.create(text={version!r} + ":" + text, written_by_pid=os.getpid())
"""


def test_rundispatcher_log_format_json_makes_every_line_json(
    demo_site: DemoSite, tmp_path: Path
) -> None:
    channel, text = unique_channel("rundispatcher"), unique("json-log")
    env = demo_site.env(channel)
    service = ManagePy(env, tmp_path / "service.log", "rundispatcher", "--log-format", "json")
    try:
        service.wait_ready()
        message = {"task": "demo_notes.tasks.write_note", "args": [text], "uuid": text}
        with psycopg.connect(demo_site.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(message)))
        note(text)
        service.wait_for_log(rf'"dispatcher_uuid": "{text}"')
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(20) == 0, service.log
    finally:
        service.kill()
    records = [json.loads(line) for line in service.log.splitlines()]
    [finished] = [r for r in records if r.get("dispatcher_uuid") == text]
    assert finished["dispatcher_event"] == "task_finished"
    assert finished["dispatcher_task"] == "demo_notes.tasks.write_note"
    assert any(r.get("dispatcher_event") == "service_stopped" for r in records)


def test_rundispatcher_reload_runs_edited_task_code_with_the_orm(
    demo_site: DemoSite, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    module = code / "edited_notes.py"
    module.write_text(EDITED_TASKS.format(version="v1"))
    channel, label = unique_channel("reload"), unique("reload")
    env = demo_site.env(channel, settings="demo_site.settings_reload")
    env.update(DEMO_SITE_TASK_MODULE="edited_notes", PYTHONPATH=f"{PROJECT}{os.pathsep}{code}")
    service = ManagePy(env, tmp_path / "service.log", "rundispatcher", "--reload")

    def send(text: str) -> None:
        message = {"task": "edited_notes.write_versioned_note", "args": [text]}
        with psycopg.connect(demo_site.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(message)))

    try:
        service.wait_ready()
        service.wait_for_log(r"reload: watching .*code")
        send(f"{label}-1")
        note(f"v1:{label}-1")
        module.write_text(EDITED_TASKS.format(version="v2"))
        service.wait_for_log(r"reloaded: 1 workers restarted", timeout=30)
        send(f"{label}-2")
        note(f"v2:{label}-2")
    finally:
        service.kill()


@pytest.mark.usefixtures("demo_site")
def test_rundispatcher_reload_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)
    with pytest.raises(CommandError) as raised:
        call_command("rundispatcher", "--reload")
    assert str(raised.value) == '--reload needs watchfiles: pip install "dispatcher-server[reload]"'


@pytest.mark.usefixtures("demo_site")
def test_rundispatcher_names_the_missing_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [
        n for n in sys.modules if n == "dispatcher.server" or n.startswith("dispatcher.server.")
    ]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "dispatcher.server", None)
    with pytest.raises(CommandError) as raised:
        call_command("rundispatcher")
    assert (
        str(raised.value)
        == "the dispatcher service is not installed: pip install dispatcher-server"
    )


def test_dispatcher_standalone_sets_django_up_in_workers_through_the_worker_module(
    demo_site: DemoSite, tmp_path: Path
) -> None:
    """The worker module also serves dispatcher-standalone: Django set up by the fork server.

    The service's config file, not ``settings.DISPATCHER`` (another channel here), is the
    config in force in its workers: Django's start-up there does not replace it.
    """
    channel, text = unique_channel("standalone"), unique("from-standalone")
    assert channel != demo_site.channel
    settings = get_settings()
    config = {
        "version": 1,
        "brokers": {
            "pg_notify": {"conninfo": settings.brokers.pg_notify.conninfo, "channels": [channel]}
        },  # type: ignore[union-attr]
        "tasks": {"modules": ["dispatcher.contrib.django.worker", "demo_notes.tasks"]},
        "worker": {"class": "dispatcher.contrib.django.worker.DjangoWorker"},
    }
    config_path = tmp_path / "dispatcher.yml"
    config_path.write_text(json.dumps(config))
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.server", "--config", str(config_path)],
            cwd=PROJECT,
            env=demo_site.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: "listening on channels" in log_path.read_text(), 20)
        message = {"task": "demo_notes.tasks.write_note", "args": [text]}
        with psycopg.connect(demo_site.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(message)))
        assert note(text).text == text
        asked = {"task": "demo_notes.tasks.write_config_channels", "args": [text]}
        with psycopg.connect(demo_site.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(asked)))
        from demo_notes.models import Note

        written = wait_until(lambda: Note.objects.filter(text__startswith=f"{text} ").first(), 15)
        assert written.text == f"{text} {channel}"  # not the channel of settings.DISPATCHER
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def break_the_transaction_then_submit() -> None:
    """In an atomic block, make a query fail without a savepoint; submitting then raises."""
    from demo_notes.tasks import write_note

    from dispatcher.contrib.django import delay_on_commit

    with transaction.atomic():
        with pytest.raises(DatabaseError), transaction.atomic(savepoint=False):
            connections["default"].cursor().execute("SELECT 1/0")
        with pytest.raises(TransactionManagementError):
            delay_on_commit(write_note, "never")


@pytest.mark.usefixtures("demo_site")
def test_submitting_in_a_broken_transaction_raises() -> None:
    break_the_transaction_then_submit()


# --- Django's TestCase, whose transaction never commits ---------------------------------------


@pytest.mark.usefixtures("site_service")
class TestSubmittingInADjangoTestCase(TestCase):
    """The tools Django gives tests for ``on_commit()`` work for the transactional helpers."""

    def test_capture_on_commit_callbacks_sends_the_task(self) -> None:
        from demo_notes.tasks import write_note

        from dispatcher.contrib.django import delay_on_commit, submit_on_commit

        first, second = unique("testcase"), unique("testcase-atomic")
        with self.captureOnCommitCallbacks(execute=True) as callbacks:
            delay_on_commit(write_note, first)  # "autocommit", but in the TestCase's transaction
            with transaction.atomic():
                submit_on_commit(write_note, args=[second], queue="demo_durable")
        assert len(callbacks) == 2
        assert note(first).text == first
        assert note(second).text == second

    def test_a_captured_task_is_sent_for_real_even_with_a_connection_factory(self) -> None:
        from demo_notes.tasks import write_note

        from dispatcher.contrib.django import delay_on_commit

        # A factory handing out Django's connection (as dispatcherd configs of Django
        # projects name one) must not take the captured send into the test's transaction.
        settings = get_settings()
        assert settings.brokers.pg_notify is not None
        factory = "support.app_connections.connection"
        pg = replace(settings.brokers.pg_notify, connection_factory=factory)
        install(replace(settings, brokers=replace(settings.brokers, pg_notify=pg)))
        connections["default"].ensure_connection()
        app_connections.current = connections["default"].connection
        try:
            text = unique("testcase-factory")
            with self.captureOnCommitCallbacks(execute=True):
                delay_on_commit(write_note, text)
            assert note(text).text == text
        finally:
            app_connections.current = None
            install(settings)

    def test_a_broken_transaction_is_refused_as_outside_a_test_case(self) -> None:
        break_the_transaction_then_submit()

    def test_without_capturing_nothing_is_sent(self) -> None:
        from demo_notes.tasks import write_note

        from dispatcher.contrib.django import delay_on_commit

        dropped, sentinel = unique("testcase-dropped"), unique("testcase-sentinel")
        with self.captureOnCommitCallbacks(execute=False) as callbacks:
            delay_on_commit(write_note, dropped)
        assert len(callbacks) == 1
        with self.captureOnCommitCallbacks(execute=True):
            delay_on_commit(write_note, sentinel)
        note(sentinel)  # one worker, tasks in order: the other would have run first
        assert not note_exists(dropped)


def test_rundispatcher_stops_on_ctrl_c_sent_to_its_whole_process_group(
    demo_site: DemoSite, tmp_path: Path
) -> None:
    """Ctrl-C in a terminal signals the command, its fork server and its workers at once."""
    service = ManagePy(demo_site.env(unique_channel("ctrl_c")), tmp_path / "s.log", "rundispatcher")
    try:
        service.wait_ready()
        descendants = children(service.process.pid)
        assert descendants
        os.killpg(service.process.pid, signal.SIGINT)
        assert service.process.wait(20) == 0, service.log
        assert "Traceback" not in service.log, service.log
        wait_until(lambda: not any(alive(pid) for pid in descendants), 10)
    finally:
        service.kill()


@pytest.mark.timeout(120)
def test_rundispatcher_stops_once_on_stop_signals_while_it_starts(
    demo_site: DemoSite, tmp_path: Path
) -> None:
    """SIGINT and SIGTERM together as the service starts (forking its fork server)."""
    for attempt in range(4):
        env = demo_site.env(unique_channel("early"))
        service = ManagePy(env, tmp_path / f"s{attempt}.log", "rundispatcher")
        try:
            pid = service.process.pid
            wait_until(lambda pid=pid: catches_sigterm(pid), timeout=30, interval=0.001)
            time.sleep(attempt * 0.01)
            os.killpg(pid, signal.SIGINT)
            os.kill(pid, signal.SIGTERM)
            assert service.process.wait(20) == 0, service.log
            assert "Traceback" not in service.log, service.log
        finally:
            service.kill()


def catches_sigterm(pid: int) -> bool:
    """Tell whether process *pid* has a handler for SIGTERM."""
    status = Path(f"/proc/{pid}/status").read_text()
    [mask] = re.findall(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE)
    return bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)
