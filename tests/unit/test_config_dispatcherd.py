"""dispatcherd's config layout (``version: 2``) is read, translated into version 1.

The configs below are written for these tests after the shapes dispatcherd documents: the
demo file of its repository, and the dict AWX builds for its dispatcher service.
"""

from __future__ import annotations

import copy
import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from dispatcher.config import (
    CONFIG_FILE_ENV,
    DISPATCHERD_CONFIG_FILE_ENV,
    ConfigError,
    Metrics,
    Pool,
    ScheduledTask,
    TaskOptions,
    get_settings,
    load_settings,
    reset,
    setup,
)
from dispatcher.config.loading import settings_from_file_data
from dispatcher.schema import load_schema
from support import dispatcherd

CHANNEL_RULE = "1-63 bytes of ASCII letters, digits, '_', '.', '-' or ':'"
TASK_RULE = (
    "dotted Python identifiers in ASCII such as 'myapp.tasks.send_email', at most 255 characters"
)
PG = {"config": {"conninfo": "dbname=app"}}
WRONG_VERSION = (
    "version: must be 1, or 2 for dispatcherd's layout (or left out, for the older layouts), got "
)


LAMBDA_NOTE = (
    "a lambda never runs here (only registered tasks do): entry ignored; register a function "
    "with @task and name it instead"
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ambient config: empty working directory, no env var, nothing installed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)
    monkeypatch.delenv(DISPATCHERD_CONFIG_FILE_ENV, raising=False)
    reset()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def problems(config: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    return caught.value.problems


# A demo file in the shape of the one at the top of dispatcherd's repository: every section,
# lambdas as tasks, a connection factory, a socket for control.
DEMO = """
# dispatcherd demo
---
version: 2
service:
  pool_kwargs:
    min_workers: 1
    max_workers: 12
    scaledown_wait: 15
    results_read_timeout: null
  main_kwargs:
    node_id: demo-server-a
    chunk_message_timeout_seconds: 5
  metrics_kwargs: {}
worker:
  worker_kwargs:
    idle_timeout: 3
brokers:
  pg_notify:
    config:
      conninfo: dbname=demo_db user=demo password=demo host=localhost port=55777
    sync_connection_factory: dispatcherd.brokers.pg_notify.connection_saver
    channels: [test_channel, test_channel2, test_channel3]
    default_publish_channel: test_channel
    max_connection_idle_seconds: 5
    max_self_check_message_age_seconds: 2
  socket:
    socket_path: demo_dispatcher.sock
producers:
  ScheduledProducer:
    task_schedule:
      'lambda: __import__("time").sleep(1)': {schedule: 3}
      demo.tasks.tick: {schedule: 3, kwargs: {n: 1}}
  OnStartProducer:
    task_list:
      'lambda: print("on start")': {}
      demo.tasks.warm_up: {args: [1]}
  ControlProducer:
publish:
  default_control_broker: socket
  default_broker: pg_notify
"""


def test_the_demo_file_loads_translated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "dispatcher.yml", DEMO)
    with caplog.at_level(logging.WARNING, logger="dispatcher.config"):
        settings = setup()
    assert settings.data == {
        "version": 1,
        "service": {
            "pool": {"min_workers": 1, "max_workers": 12, "scaledown_wait": 15},
            "node_id": "demo-server-a",
            "chunk_expiry": 5,
            "metrics": {},
        },
        "worker": {"idle_timeout": 3},
        "brokers": {
            "pg_notify": {
                "conninfo": "dbname=demo_db user=demo password=demo host=localhost port=55777",
                "channels": ["test_channel", "test_channel2", "test_channel3"],
                "default_publish_channel": "test_channel",
                "self_check_interval": 5,
                "self_check_timeout": 2,
            },
            "socket": {"path": "demo_dispatcher.sock"},
        },
        "producers": {
            "scheduled": {"demo.tasks.tick": {"schedule": 3, "kwargs": {"n": 1}}},
            "on_start": {"demo.tasks.warm_up": {"args": [1]}},
            "control": {},
        },
        "publish": {"default_control_broker": "socket", "default_broker": "pg_notify"},
    }
    assert settings.service.pool == Pool(min_workers=1, max_workers=12, scaledown_wait=15)
    assert settings.service.node_id == "demo-server-a"
    assert settings.service.metrics == Metrics()
    assert settings.brokers.names == ("pg_notify", "socket")
    assert settings.brokers.socket is not None
    assert settings.brokers.socket.path == "demo_dispatcher.sock"
    assert settings.producers.scheduled["demo.tasks.tick"].schedule == 3
    assert settings.producers.on_start["demo.tasks.warm_up"] == TaskOptions(args=(1,))
    assert settings.producers.control is True
    assert settings.worker.idle_timeout == 3
    assert settings.brokers.pg_notify is not None
    assert settings.brokers.pg_notify.connection_factory is None  # dispatcherd's own: ours
    assert settings.warnings == (
        f"producers.OnStartProducer.task_list['lambda: print(\"on start\")']: {LAMBDA_NOTE}",
        "producers.ScheduledProducer.task_schedule['lambda: __import__(\"time\").sleep(1)']: "
        f"{LAMBDA_NOTE}",
        "service.pool_kwargs.results_read_timeout: no equivalent (an internal wait of "
        "dispatcherd's pool); ignored",
    )
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert logged == [f"dispatcher.yml: {warning}" for warning in settings.warnings]


def awx_shaped() -> dict[str, Any]:
    """A config in the shape AWX builds for its dispatcher service (values made up)."""
    return {
        "version": 2,
        "service": {
            "pool_kwargs": {
                "min_workers": 4,
                "max_workers": 16,
                "scaledown_reserve": 1,
                "worker_max_lifetime_seconds": 7200,
            },
            "main_kwargs": {"node_id": "awx-node-1"},
            "process_manager_cls": "ForkServerManager",
            "process_manager_kwargs": {"preload_modules": ["awx.main.dispatch.prefork"]},
            "metrics_kwargs": {"host": "localhost", "port": 8015},
        },
        "brokers": {
            "pg_notify": {
                "config": {
                    "dbname": "awx",
                    "user": "awx",
                    "password": "two words",
                    "host": "db.internal",
                    "port": 5432,
                    "sslmode": "prefer",
                    "application_name": "awx-dispatcher",
                },
                "sync_connection_factory": "ansible_base.lib.utils.db.psycopg_connection_from_django",
                "default_publish_channel": "awx-node-1",
                "channels": ["tower_broadcast_all", "tower_settings_change", "awx-node-1"],
            }
        },
        "publish": {"default_broker": "pg_notify"},
        "worker": {"worker_cls": "awx.main.dispatch.worker.dispatcherd.AWXTaskWorker"},
        "producers": {
            "ScheduledProducer": {
                "task_schedule": {
                    "awx.main.tasks.system.cluster_node_heartbeat": {"schedule": 60},
                    # dispatcherd reads a schedule with float(): a text of seconds too
                    "awx.main.scheduler.tasks.task_manager": {"schedule": "20", "timeout": 15},
                }
            },
            "OnStartProducer": {"task_list": {"awx.main.tasks.system.dispatch_startup": {}}},
            "ControlProducer": {},
        },
    }


def test_an_awx_shaped_config_loads_translated() -> None:
    config = awx_shaped()
    original = copy.deepcopy(config)
    settings = load_settings(config)
    assert config == original  # the caller's dict is left as it was
    pool = settings.service.pool
    assert (pool.min_workers, pool.max_workers, pool.max_worker_lifetime) == (4, 16, 7200)
    assert settings.service.node_id == "awx-node-1"
    assert settings.service.metrics == Metrics(host="localhost", port=8015)
    assert settings.tasks.modules == ("awx.main.dispatch.prefork",)
    assert settings.worker.worker_class == "awx.main.dispatch.worker.dispatcherd.AWXTaskWorker"
    pg = settings.brokers.pg_notify
    assert pg is not None
    assert conninfo_to_dict(pg.conninfo) == {
        "dbname": "awx",
        "user": "awx",
        "password": "two words",
        "host": "db.internal",
        "port": "5432",
        "sslmode": "prefer",
        "application_name": "awx-dispatcher",
    }
    assert pg.channels == ("tower_broadcast_all", "tower_settings_change", "awx-node-1")
    assert pg.default_publish_channel == "awx-node-1"
    assert settings.publish.default_broker == "pg_notify"
    assert dict(settings.producers.scheduled) == {
        "awx.main.tasks.system.cluster_node_heartbeat": ScheduledTask(schedule=60),
        "awx.main.scheduler.tasks.task_manager": ScheduledTask(schedule=20, timeout=15),
    }
    assert list(settings.producers.on_start) == ["awx.main.tasks.system.dispatch_startup"]
    assert settings.producers.control is True
    assert pg.connection_factory == "ansible_base.lib.utils.db.psycopg_connection_from_django"
    assert pg.async_connection_factory is None
    assert settings.warnings == (
        "service.pool_kwargs.scaledown_reserve: no equivalent (idle workers above min_workers "
        "stop after scaledown_wait); ignored",
        "worker.worker_cls: read as worker.class, which must subclass "
        "dispatcher.server.BaseWorker (same hooks: on_start, pre_task, post_task, on_idle, "
        "on_shutdown); else the service stops at start",
    )


def test_the_config_of_the_compatibility_tests_loads() -> None:
    """The dispatcherd config the end-to-end tests give dispatcherd's own processes."""
    document = dispatcherd.config(
        "dbname=app",
        ["first", "second"],
        node_id="node-a",
        control_producer=True,
        process_manager_kwargs={"preload_modules": ["app.tasks"]},
    )
    settings = load_settings(document)
    assert settings.data == {
        "version": 1,
        "brokers": {
            "pg_notify": {
                "conninfo": "dbname=app",
                "channels": ["first", "second"],
                "default_publish_channel": "first",
            }
        },
        "service": {"pool": {"min_workers": 1, "max_workers": 2}, "node_id": "node-a"},
        "tasks": {"modules": ["app.tasks"]},
        "publish": {"default_broker": "pg_notify"},
        "producers": {"control": {}},
    }
    assert settings.warnings == ()


ERRORS: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "pool_kwargs, as written",
        {"version": 2, "service": {"pool_kwargs": {"max_workers": "4", "min_worker": 1}}},
        [
            "service.pool_kwargs.max_workers: expected integer or null, got string",
            "service.pool_kwargs.min_worker: unknown key: not an option of dispatcherd's "
            "pool_kwargs (did you mean 'min_workers'?)",
        ],
    ),
    (
        "a renamed key",
        {"version": 2, "service": {"pool_kwargs": {"worker_max_lifetime_seconds": -1}}},
        ["service.pool_kwargs.worker_max_lifetime_seconds: must be at least 0.1"],
    ),
    (
        "min above max",
        {"version": 2, "service": {"pool_kwargs": {"min_workers": 3, "max_workers": 2}}},
        ["service.pool_kwargs.min_workers: must be at most max_workers"],
    ),
    (
        "pool_kwargs not a mapping",
        {"version": 2, "service": {"pool_kwargs": [1]}},
        ["service.pool_kwargs: expected object, got array"],
    ),
    (
        "main_kwargs and metrics_kwargs",
        {
            "version": 2,
            "service": {
                "main_kwargs": {"node_id": 7, "chunk_message_timeout_seconds": "long"},
                "metrics_kwargs": {"port": 70000, "path": "/m"},
            },
        },
        [
            "service.main_kwargs.chunk_message_timeout_seconds: expected number, got string",
            "service.main_kwargs.node_id: expected string, got integer",
            "service.metrics_kwargs.path: unknown key: not an option of dispatcherd's "
            "metrics_kwargs (it takes: host, port)",
            "service.metrics_kwargs.port: must be at most 65535",
        ],
    ),
    (
        "pg_notify",
        {
            "version": 2,
            "brokers": {
                "pg_notify": {
                    "config": {"conninfo": "dbname=app"},
                    "channels": ["ok", "has space"],
                    "default_publish_channel": "",
                    "max_connection_idle_seconds": 0,
                    "max_self_check_message_age_seconds": "2",
                    "listen": True,
                }
            },
        },
        [
            f"brokers.pg_notify.channels[1]: not a valid channel name ({CHANNEL_RULE})",
            f"brokers.pg_notify.default_publish_channel: not a valid channel name ({CHANNEL_RULE})",
            "brokers.pg_notify.listen: unknown key: not an option of dispatcherd's pg_notify "
            "broker (it takes: async_connection, async_connection_factory, channels, config, "
            "default_publish_channel, max_connection_idle_seconds, "
            "max_self_check_message_age_seconds, sync_connection, sync_connection_factory)",
            "brokers.pg_notify.max_connection_idle_seconds: must be at least 0.01",
            "brokers.pg_notify.max_self_check_message_age_seconds: expected number, got string",
        ],
    ),
    (
        "a factory instead of config",
        {"version": 2, "brokers": {"pg_notify": {"async_connection_factory": "app.db.connect"}}},
        ["brokers.pg_notify.config: is required"],
    ),
    (
        "config parameters",
        {
            "version": 2,
            "brokers": {"pg_notify": {"config": {"dbname": "app", "hots": "db", "port": [5432]}}},
        },
        [
            "brokers.pg_notify.config.hots: unknown key: not a libpq connection parameter",
            "brokers.pg_notify.config.port: expected string or number, got list",
        ],
    ),
    (
        "config of the wrong type",
        {"version": 2, "brokers": {"pg_notify": {"config": ["dbname=app"]}}},
        ["brokers.pg_notify.config: expected an object of libpq parameters, got list"],
    ),
    (
        "config with no parameter",
        {"version": 2, "brokers": {"pg_notify": {"config": {"autocommit": True}}}},
        ["brokers.pg_notify.config: no libpq parameters (such as conninfo, or host and dbname)"],
    ),
    (
        "a conninfo that cannot take the parameters",
        {"version": 2, "brokers": {"pg_notify": {"config": {"conninfo": "nonsense", "port": 1}}}},
        ["brokers.pg_notify.config.conninfo: not a valid libpq connection string"],
    ),
    (
        "socket",
        {"version": 2, "brokers": {"socket": {"socket_path": "", "path": "x.sock"}}},
        [
            "brokers.socket.path: unknown key: not an option of dispatcherd's socket broker "
            "(it takes: socket_path)",
            "brokers.socket.socket_path: too short (at least 1 character)",
        ],
    ),
    (
        "broker modules",
        {
            "version": 2,
            "brokers": {"dispatcherd.testing.brokers.noop": {}, "myapp.brokers.redis": {}},
            "publish": {"default_broker": "dispatcherd.testing.brokers.noop"},
        },
        [
            "brokers['dispatcherd.testing.brokers.noop']: dispatcherd's test brokers have no "
            "equivalent here",
            "brokers['myapp.brokers.redis']: a broker module of dispatcherd has no equivalent "
            "here: the brokers are pg_notify, socket, pg_queue and installed plug-ins",
            "publish.default_broker: not a valid broker name (A broker"
            " configured under `brokers`: `pg_notify`, `socket`, `pg_queue` or "
            "the name of an installed broker plug-in)",
        ],
    ),
    (
        "producers",
        {
            "version": 2,
            "producers": {
                "ScheduledProducer": {
                    "task_schedule": {
                        "app.tasks.a": {"schedule": 0, "on_duplicate": "run_once"},
                        "app.tasks.b": {"args": [1]},
                        "not a name": {"schedule": 1},
                        "app.tasks.d": {"schedule": "*/5 * * * *"},
                    }
                },
                "OnStartProducer": {"task_list": {"app.tasks.c": {"timeout": "soon"}}},
                "ControlProducer": {"enabled": True},
                "BrokeredProducer": {},
            },
        },
        [
            "producers.BrokeredProducer: not a producer of dispatcherd's config "
            "(ScheduledProducer, OnStartProducer, ControlProducer)",
            "producers.ControlProducer.enabled: unknown key: ControlProducer takes no options",
            "producers.OnStartProducer.task_list['app.tasks.c'].timeout: expected number or "
            "null, got string",
            "producers.ScheduledProducer.task_schedule['app.tasks.a'].on_duplicate: expected "
            "one of 'parallel', 'discard', 'serial', 'queue_one'",
            "producers.ScheduledProducer.task_schedule['app.tasks.a'].schedule: must be at "
            "least 0.01",
            "producers.ScheduledProducer.task_schedule['app.tasks.b'].schedule: is required",
            "producers.ScheduledProducer.task_schedule['app.tasks.d'].schedule: expected a "
            "number of seconds, got a string that is not a number",
            "producers.ScheduledProducer.task_schedule['not a name']: not a valid task name "
            f"({TASK_RULE})",
        ],
    ),
    (
        "producer arguments",
        {
            "version": 2,
            "producers": {"ScheduledProducer": None, "OnStartProducer": {"tasks": {}}},
        },
        [
            "producers.OnStartProducer.task_list: is required",
            "producers.OnStartProducer.tasks: unknown key: not an option of dispatcherd's "
            "OnStartProducer (did you mean 'task_list'?)",
            "producers.ScheduledProducer: expected object with 'task_schedule', got NoneType",
        ],
    ),
    (
        "process manager and preloaded modules",
        {
            "version": 2,
            "service": {
                "process_manager_cls": "ThreadManager",
                "process_manager_kwargs": {"preload_modules": ["app.tasks", "app tasks"]},
            },
        },
        [
            "service.process_manager_cls: not a dispatcherd process manager (expected one of "
            "ForkServerManager, ProcessManager, SpawnServerManager)",
            "service.process_manager_kwargs.preload_modules[1]: not a valid "
            "dotted Python name (dotted Python identifiers in ASCII such as 'myapp.tasks')",
        ],
    ),
    (
        "worker",
        {
            "version": 2,
            "worker": {"worker_cls": "not a path", "worker_kwargs": {"idle_timeout": -1}},
        },
        [
            "worker.worker_cls: not a valid dotted Python name (dotted Python "
            "identifiers in ASCII such as 'myapp.tasks')",
            "worker.worker_kwargs.idle_timeout: must be at least 0.01",
        ],
    ),
    (
        "publish",
        {"version": 2, "brokers": {"pg_notify": PG}, "publish": {"default_broker": "socket"}},
        [
            "publish.default_broker: names a broker not configured under 'brokers' "
            "(configured: pg_notify)"
        ],
    ),
]


@pytest.mark.parametrize(
    ("config", "expected"), [(c, e) for _, c, e in ERRORS], ids=[i for i, _, _ in ERRORS]
)
def test_errors_name_the_keys_as_written(config: dict[str, Any], expected: list[str]) -> None:
    assert problems(config) == expected


def test_an_error_names_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "their.yml",
        """
        version: 2
        service:
          pool_kwargs: {max_workers: 0}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(file_path=path)
    assert str(caught.value) == f"{path}: service.pool_kwargs.max_workers: must be at least 1"


def test_keys_with_no_equivalent_warn_and_the_file_loads(caplog: pytest.LogCaptureFixture) -> None:
    config = {
        "version": 2,
        "extras": {"anything": 1},
        "brokers": {
            "pg_notify": {
                "config": {"conninfo": "dbname=app", "autocommit": True, "sslrootcert": None},
                "sync_connection": object(),
                "sync_connection_factory": "lambda **config: None",
                "async_connection_factory": "dispatcherd.brokers.pg_notify.async_connection_saver",
                "max_connection_idle_seconds": None,
                "max_self_check_message_age_seconds": None,
            }
        },
        "service": {
            "pool_kwargs": {
                "scaledown_interval": 1,
                "worker_stop_wait": 3,
                "worker_removal_wait": 3,
            },
            "main_kwargs": {"chunk_message_timeout_seconds": 0},
            "metrics_kwargs": {"log_level": "debug"},
            "process_manager_cls": "SpawnServerManager",
            "shutdown_grace": 3,
        },
        "producers": {
            "OnStartProducer": {
                "task_list": {"app.tasks.a": {"uuid": "mine", "data": {"x": 1}, "delay": 2}}
            }
        },
        "worker": {"worker_kwargs": {"idle_timeout": 0, "greeting": "hi"}, "threads": 2},
        "publish": {"default_broker": "pg_notify", "confirm": True},
    }
    with caplog.at_level(logging.WARNING, logger="dispatcher.config"):
        settings = load_settings(config)
    assert settings.warnings == (
        "brokers.pg_notify.config.autocommit: a psycopg option with no equivalent; ignored",
        "brokers.pg_notify.max_connection_idle_seconds: null (no self-check) has no "
        "equivalent: the connection is checked after self_check_interval seconds (default "
        "30) without traffic",
        "brokers.pg_notify.sync_connection: a connection object has no place in a config: the "
        "service and the publishers connect with 'config' (or a connection factory); ignored",
        "brokers.pg_notify.sync_connection_factory: a lambda is not taken here: name a function "
        "(module.name); ignored",
        "extras: not a section of dispatcherd's layout; ignored, as it does",
        "producers.OnStartProducer.task_list['app.tasks.a'].data: a message key with no "
        "equivalent here; ignored",
        "publish.confirm: not a key of dispatcherd's publish section; ignored, as it does",
        "service.main_kwargs.chunk_message_timeout_seconds: 0 or less (never expire) has no "
        "equivalent: incomplete chunked messages expire after 31536000 seconds (one year)",
        "service.metrics_kwargs.log_level: an option of older dispatcherd releases with no "
        "equivalent",
        "service.pool_kwargs.scaledown_interval: no equivalent (the pool is checked on every "
        "event and at least every second); ignored",
        "service.pool_kwargs.worker_removal_wait: no equivalent (how long dispatcherd lists "
        "stopped workers); ignored",
        "service.pool_kwargs.worker_stop_wait: no equivalent (see service.shutdown_grace and "
        "service.cancel_grace); ignored",
        "service.process_manager_cls: 'SpawnServerManager' has no equivalent: workers start "
        "from a fork server",
        "service.shutdown_grace: not a key of dispatcherd's service section; ignored, as it does",
        "worker.threads: not a key of dispatcherd's worker section; ignored, as it does",
        "worker.worker_kwargs.greeting: no equivalent: a worker class here is given only its "
        "worker id; ignored",
    )
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 16
    assert settings.brokers.pg_notify is not None
    assert settings.brokers.pg_notify.conninfo == "dbname=app"
    assert settings.brokers.pg_notify.async_connection_factory is None
    assert settings.brokers.pg_notify.connection_factory is None
    assert settings.brokers.pg_notify.self_check_interval == 30
    assert settings.service.chunk_expiry == 31536000
    assert settings.service.shutdown_grace == 30
    assert settings.service.metrics == Metrics()
    assert settings.producers.on_start["app.tasks.a"] == TaskOptions(delay=2)
    assert settings.worker.idle_timeout is None


def test_a_config_string_and_default_choices_translate_silently() -> None:
    settings = load_settings(
        {
            "version": 2,
            "brokers": {"pg_notify": {"config": "dbname=app", "default_publish_channel": None}},
            "service": {
                "process_manager_cls": "ForkServerManager",
                "main_kwargs": None,
                "metrics_kwargs": None,
            },
            "worker": {"worker_cls": "dispatcherd.worker.task.TaskWorker"},
            "producers": {"ControlProducer": None},
        }
    )
    assert settings.data == {
        "version": 1,
        "brokers": {"pg_notify": {"conninfo": "dbname=app"}},
        "service": {},
        "worker": {},
        "producers": {"control": {}},
    }
    assert settings.warnings == ()


def test_preloaded_modules_and_our_own_sections_join() -> None:
    settings = load_settings(
        {
            "version": 2,
            "tasks": {"modules": ["app.more", "app.tasks"]},
            "service": {
                "process_manager_kwargs": {"preload_modules": ["app.tasks"]},
                "control": {"cancel_without_filter": "all"},
            },
            "security": {"keys": [{"id": "k1", "secret": "s" * 32}]},
        }
    )
    assert settings.warnings == ()
    assert settings.service.control.cancel_without_filter == "all"
    assert settings.tasks.modules == ("app.tasks", "app.more")
    assert [key.id for key in settings.security.keys] == ["k1"]
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "version": 2,
                "tasks": {"modules": ["app.tasks", "bad name"]},
                "service": {"process_manager_kwargs": {"preload_modules": ["app.tasks"]}},
            }
        )
    assert caught.value.problems == [
        "tasks.modules[1]: not a valid dotted Python name (dotted Python "
        "identifiers in ASCII such as 'myapp.tasks')"
    ]


def test_a_section_left_empty_is_an_empty_section() -> None:
    # YAML reads `worker:` with nothing under it as null; dispatcherd takes it as empty.
    settings = load_settings(
        {"version": 2, "brokers": {"pg_notify": PG}, "publish": None, "worker": None}
    )
    assert settings.warnings == ()
    assert settings.publish.default_broker is None


def test_without_version_dispatcherd_keys_are_recognised() -> None:
    settings = load_settings({"service": {"pool_kwargs": {"max_workers": 3}}})
    assert settings.service.pool.max_workers == 3
    assert settings.warnings == ("no 'version': read as dispatcherd's layout (version 2)",)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            # Refused as any key the schema does not have, listing the keys it has.
            {"version": 1, "service": {"pool_kwargs": {}}},
            "service.pool_kwargs: unknown key (expected one of: "
            f"{', '.join(sorted(load_schema('config')['properties']['service']['properties']))})",
        ),
        ({"version": 3}, f"{WRONG_VERSION}another number"),
        ({"version": "2"}, f"{WRONG_VERSION}string"),
        ({"version": True}, f"{WRONG_VERSION}boolean"),
        ({"version": None}, f"{WRONG_VERSION}null"),
        ({"version": 2.5}, f"{WRONG_VERSION}another number"),
    ],
)
def test_other_versions_are_not_translated(config: dict[str, Any], expected: str) -> None:
    assert problems(config) == [expected]


@pytest.mark.parametrize("version", ["3", "'2'", "1.5", "v2"])
def test_a_wrong_version_is_the_only_problem_said(version: str) -> None:
    # Read in neither layout, dispatcherd's keys would each be an unknown key.
    text = DEMO.replace("\nversion: 2\n", f"\nversion: {version}\n")
    assert text != DEMO
    with pytest.raises(ConfigError) as caught:
        settings_from_file_data("dispatcherd.yml", text.encode())
    [problem] = caught.value.problems
    assert problem.startswith(WRONG_VERSION)


def test_version_2_0_is_dispatcherds_layout_as_dispatcherd_reads_it() -> None:
    text = DEMO.replace("\nversion: 2\n", "\nversion: 2.0\n")
    assert text != DEMO
    settings = settings_from_file_data("dispatcherd.yml", text.encode())
    assert settings == settings_from_file_data("dispatcherd.yml", DEMO.encode())
    assert load_settings({"version": 1.0}).data["version"] == 1


def test_our_layout_has_no_warnings() -> None:
    assert load_settings({"version": 1}).warnings == ()


def test_dispatcherd_variable_names_the_file_when_ours_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = write(tmp_path / "theirs.yml", "version: 2\nservice: {main_kwargs: {node_id: d}}\n")
    ours = write(tmp_path / "ours.yml", "version: 1\nservice: {node_id: ours}\n")
    write(tmp_path / "dispatcher.yml", "version: 1\nservice: {node_id: cwd}\n")
    monkeypatch.setenv(DISPATCHERD_CONFIG_FILE_ENV, str(theirs))
    assert get_settings().service.node_id == "d"
    monkeypatch.setenv(CONFIG_FILE_ENV, str(ours))
    assert setup().service.node_id == "ours"
    assert setup(file_path=tmp_path / "dispatcher.yml").service.node_id == "cwd"
    monkeypatch.setenv(CONFIG_FILE_ENV, "")
    assert setup().service.node_id == "d"
