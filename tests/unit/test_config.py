"""Config loading: sources, YAML, validation errors, the unversioned layout, defaults."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dispatcher import config as dispatcher_config
from dispatcher.config import (
    CONFIG_FILE_ENV,
    ConfigError,
    NotConfiguredError,
    Pool,
    Settings,
    get_settings,
    is_setup,
    load_settings,
    reset,
    setup,
)
from dispatcher.schema import load_schema

CHANNEL_RULE = "1-63 bytes of ASCII letters, digits, '_', '.', '-' or ':'"
TASK_RULE = (
    "dotted Python identifiers in ASCII such as 'myapp.tasks.send_email', at most 255 characters"
)
PG = {"conninfo": "dbname=postgres"}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ambient config: empty working directory, no env var, nothing installed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)
    reset()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


WRONG_VERSION = (
    "version: must be 1, or 2 for dispatcherd's layout (or left out, for the older layouts), got "
)

BROKEN_CONFIGS: list[tuple[str, Any, str]] = [
    ("empty dict", {}, "config: version: is required"),
    ("unsupported version", {"version": 3}, f"config: {WRONG_VERSION}another number"),
    ("version as text", {"version": "1"}, f"config: {WRONG_VERSION}string"),
    (
        "channel with a space",
        {"version": 1, "brokers": {"pg_notify": {**PG, "channels": ["ok", "has space"]}}},
        f"config: brokers.pg_notify.channels[1]: not a valid channel name ({CHANNEL_RULE})",
    ),
    (
        "channel over 63 bytes",
        {"version": 1, "brokers": {"pg_notify": {**PG, "channels": ["c" * 64]}}},
        f"config: brokers.pg_notify.channels[0]: not a valid channel name ({CHANNEL_RULE})",
    ),
    (
        "duplicate channel",
        {"version": 1, "brokers": {"pg_notify": {**PG, "channels": ["a", "a"]}}},
        "config: brokers.pg_notify.channels[1]: repeats item [0] (each may be given once)",
    ),
    (
        "conninfo missing",
        {"version": 1, "brokers": {"pg_notify": {"channels": ["a"]}}},
        "config: brokers.pg_notify.conninfo: is required",
    ),
    (
        "misspelt key with a close match",
        {"version": 1, "service": {"poll": {"max_workers": 2}}},
        "config: service.poll: unknown key (did you mean 'pool'?)",
    ),
    (
        "unknown top-level key",
        {"version": 1, "logging": {}},
        "config: logging: unknown key (expected one of: brokers, producers, publish, "
        "security, service, tasks, version, worker)",
    ),
    (
        "negative min_workers",
        {"version": 1, "service": {"pool": {"min_workers": -1}}},
        "config: service.pool.min_workers: must be at least 0",
    ),
    (
        "max_workers as text",
        {"version": 1, "service": {"pool": {"max_workers": "4"}}},
        "config: service.pool.max_workers: expected integer or null, got string",
    ),
    (
        "min_workers above max_workers",
        {"version": 1, "service": {"pool": {"min_workers": 3, "max_workers": 2}}},
        "config: service.pool.min_workers: must be at most max_workers",
    ),
    (
        "boolean where a number is expected",
        {"version": 1, "service": {"shutdown_grace": True}},
        "config: service.shutdown_grace: expected number, got boolean",
    ),
    (
        "schedule of zero",
        {"version": 1, "producers": {"scheduled": {"myapp.tasks.cleanup": {"schedule": 0}}}},
        "config: producers.scheduled['myapp.tasks.cleanup'].schedule: must be at least 0.01",
    ),
    (
        "scheduled lambda",
        {"version": 1, "producers": {"scheduled": {"lambda: 1": {"schedule": 5}}}},
        f"config: producers.scheduled['lambda: 1']: not a valid task name ({TASK_RULE})",
    ),
    (
        "unknown on_duplicate",
        {"version": 1, "producers": {"on_start": {"a.b": {"on_duplicate": "run_once"}}}},
        "config: producers.on_start['a.b'].on_duplicate: expected one of "
        "'parallel', 'discard', 'serial', 'queue_one'",
    ),
    (
        "control producer with options",
        {"version": 1, "producers": {"control": {"enabled": True}}},
        "config: producers.control.enabled: unknown key (this section takes no keys)",
    ),
    (
        "default broker not configured",
        {"version": 1, "brokers": {"pg_notify": PG}, "publish": {"default_broker": "socket"}},
        "config: publish.default_broker: names a broker not configured under 'brokers' "
        "(configured: pg_notify)",
    ),
    (
        "metrics port out of range",
        {"version": 1, "service": {"metrics": {"port": 70000}}},
        "config: service.metrics.port: must be at most 65535",
    ),
    (
        "module name with a slash",
        {"version": 1, "tasks": {"modules": ["myapp/tasks.py"]}},
        "config: tasks.modules[0]: not a valid dotted Python name "
        "(dotted Python identifiers in ASCII such as 'myapp.tasks')",
    ),
    (
        "not a mapping",
        ["version", 1],
        "config: the config must be a mapping of sections, not array",
    ),
    (
        "several problems, one line each, in document order",
        {"version": 1, "service": {"pool": {"min_workers": -1}, "cancel_grace": "5"}},
        "config: service.cancel_grace: expected number, got string\n"
        "config: service.pool.min_workers: must be at least 0",
    ),
]


@pytest.mark.parametrize(
    ("data", "message"),
    [pytest.param(data, message, id=name) for name, data, message in BROKEN_CONFIGS],
)
def test_broken_config_is_reported_exactly(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        setup(data)
    assert str(caught.value) == message
    assert not is_setup()


# Every pair of channels, and every queue against every channel, was compared: 16,000 of
# each took 38 s to load.
@pytest.mark.timeout(30)
def test_thousands_of_channels_and_queues_load_and_a_repeat_is_named_by_its_index() -> None:
    channels = [f"c{n}" for n in range(16_000)]
    queues = [f"q{n}" for n in range(16_000)]
    brokers = {"pg_notify": {**PG, "channels": channels}, "pg_queue": {"queues": queues}}
    settings = load_settings({"version": 1, "brokers": brokers})
    assert settings.brokers.pg_queue is not None
    assert len(settings.brokers.pg_queue.queues) == 16_000
    channels[3001] = "c0"
    with pytest.raises(ConfigError) as caught:
        load_settings({"version": 1, "brokers": brokers})
    assert str(caught.value) == (
        "config: brokers.pg_notify.channels[3001]: repeats item [0] (each may be given once)"
    )


def test_error_names_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "dispatcher.yml",
        """
        version: 1
        brokers:
          pg_notify:
            conninfo: dbname=postgres
            channels: [ok, has space]
        """,
    )
    with pytest.raises(ConfigError) as caught:
        setup(file_path=path)
    assert str(caught.value) == (
        f"{path}: brokers.pg_notify.channels[1]: not a valid channel name ({CHANNEL_RULE})"
    )


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    write(
        tmp_path / "dispatcher.yml",
        """
        version: 1
        brokers:
          pg_notify: {conninfo: x
        """,
    )
    with pytest.raises(ConfigError) as caught:
        setup(file_path="dispatcher.yml")
    message = str(caught.value)
    assert message.startswith("dispatcher.yml: line 4, column 1: YAML syntax error: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("conninfo", "said"),
    [
        ("postgresql://app:s3cret%zzPW@db/app", 'invalid percent-encoded token: "..."'),
        ("password=correct horse battery", 'missing "=" after "..." in connection info string'),
        ("host=db bogus=1", 'invalid connection option "bogus"'),
        ("postgresql://db/app?bogus=1", 'invalid URI query parameter: "bogus"'),
        ("host=db sslmode=bogusmode", "sslmode: expected one of disable, allow"),
        ("postgresql://db/app?target_session_attrs=x", "target_session_attrs: expected one of any"),
        # libpq would stop at the NUL: the host and user after it would be silently ignored.
        ("dbname=app\x00 host=db user=app password=s3cret", "holds a NUL character (at index 10)"),
        ("dbname=\ud800 password=s3cret", "is not UTF-8 text: it holds a lone surrogate"),
    ],
)
@pytest.mark.parametrize("broker", ["pg_notify", "pg_queue"])
def test_a_conninfo_libpq_cannot_read_is_refused_without_its_password(
    conninfo: str, said: str, broker: str
) -> None:
    """Refused when loaded (a service ran on without its broker), never quoting a token that
    may be the password."""
    brokers: dict[str, Any] = {"pg_notify": {"conninfo": "host=db", "channels": ["a"]}}
    if broker == "pg_queue":
        brokers["pg_queue"] = {"conninfo": conninfo, "queues": ["q"]}
    else:
        brokers["pg_notify"]["conninfo"] = conninfo
    with pytest.raises(ConfigError) as caught:
        setup({"version": 1, "brokers": brokers})
    assert str(caught.value).startswith(f"config: brokers.{broker}.conninfo: ")
    assert said in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert "horse" not in str(caught.value)


@pytest.mark.parametrize("config", [{"conninfo": "host=db\x00x"}, {"dbname": "a\udcffb"}])
def test_a_dispatcherd_config_conninfo_libpq_cannot_read_is_refused(config: dict[str, str]) -> None:
    key = next(iter(config))
    pg_notify = {"config": config, "channels": ["a"]}
    with pytest.raises(ConfigError) as caught:
        setup({"version": 2, "brokers": {"pg_notify": pg_notify}})
    assert str(caught.value).startswith(f"config: brokers.pg_notify.config.{key}: ")
    assert "\n" not in str(caught.value)


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    """Nine lines whose aliases of aliases expand to 10^9 values (it took minutes and GBs)."""
    lines = ["version: 1", 'a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 9)]
    write(tmp_path / "dispatcher.yml", "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="more than 1000000 values once its YAML aliases"):
        setup(file_path="dispatcher.yml")


def test_a_file_name_holding_a_terminal_escape_is_shown_escaped(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        setup(file_path=str(tmp_path / "\x1b[31mred.yml"))
    assert "\x1b" not in str(caught.value)
    assert str(caught.value).endswith("/\\x1b[31mred.yml: file not found")


def test_a_file_that_never_ends_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^/dev/zero: larger than 4194304 bytes"):
        setup(file_path="/dev/zero")


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "dispatcher.yml", "version: 1\nversion: 1\n")
    with pytest.raises(ConfigError, match=r"^dispatcher\.yml: line 2, column 1: .*duplicate key"):
        setup(file_path="dispatcher.yml")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "dispatcher.yml: the config is empty; it needs at least 'version: 1'"),
        (b"- version\n", "dispatcher.yml: the config must be a mapping of sections, not array"),
        (b"version: 1\nx: \xff\n", "dispatcher.yml: not UTF-8 text (byte 14)"),
        (b"version: !!python/object:os.system {}\n", None),
    ],
    ids=["empty file", "a list", "not utf-8", "python tag refused"],
)
def test_unusable_file_content(tmp_path: Path, content: bytes, message: str | None) -> None:
    (tmp_path / "dispatcher.yml").write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        setup(file_path="dispatcher.yml")
    if message is None:  # safe loading: no Python object is ever constructed
        assert str(caught.value).startswith("dispatcher.yml: line 1, column 10: YAML syntax error")
    else:
        assert str(caught.value) == message


def test_missing_file_names_the_folder_a_relative_path_was_looked_for_in(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as caught:
        setup(file_path="nope.yml")
    assert str(caught.value) == f"nope.yml: file not found in {Path.cwd()}"
    with pytest.raises(ConfigError) as caught:
        setup(file_path=str(tmp_path / "nope.yml"))
    assert str(caught.value) == f"{tmp_path / 'nope.yml'}: file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    with pytest.raises(ConfigError, match=r"^conf: is a directory, not a file$"):
        setup(file_path="conf")


def test_not_configured_says_how_to_configure() -> None:
    with pytest.raises(NotConfiguredError) as caught:
        get_settings()
    assert str(caught.value) == (
        "dispatcher is not configured: call dispatcher.config.setup(config=...) or "
        "setup(file_path=...), set DISPATCHER_CONFIG_FILE, or create ./dispatcher.yml"
    )


def test_config_and_file_path_together_are_refused() -> None:
    with pytest.raises(TypeError, match="either config or file_path, not both"):
        setup({"version": 1}, file_path="dispatcher.yml")


def test_source_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "dispatcher.yml", "version: 1\nservice: {node_id: from-cwd}\n")
    write(tmp_path / "env.yml", "version: 1\nservice: {node_id: from-env}\n")
    write(tmp_path / "given.yml", "version: 1\nservice: {node_id: from-path}\n")

    assert get_settings().service.node_id == "from-cwd"
    monkeypatch.setenv(CONFIG_FILE_ENV, str(tmp_path / "env.yml"))
    assert setup().service.node_id == "from-env"
    assert setup(file_path=tmp_path / "given.yml").service.node_id == "from-path"
    assert setup({"version": 1, "service": {"node_id": "from-dict"}}).service.node_id == "from-dict"
    assert get_settings().service.node_id == "from-dict"


def test_failed_setup_keeps_the_config_in_force() -> None:
    setup({"version": 1, "service": {"node_id": "good"}})
    with pytest.raises(ConfigError):
        setup({"version": 1, "service": {"node_id": "bad name"}})
    assert get_settings().service.node_id == "good"


def test_design_example_loads_into_typed_settings(tmp_path: Path) -> None:
    write(
        tmp_path / "dispatcher.yml",
        """
        version: 1
        brokers:
          pg_notify:
            conninfo: "dbname=postgres user=postgres host=127.0.0.1"
            channels: [test_channel, test_channel2]
            default_publish_channel: test_channel
          socket:
            path: dispatcher.sock
        tasks:
          modules: [myapp.tasks]
        service:
          node_id: host-a
          pool: {min_workers: 1, max_workers: 4, scaledown_wait: 15, max_worker_lifetime: 14400}
          metrics: {host: 127.0.0.1, port: 8070}
        producers:
          scheduled: {myapp.tasks.cleanup: {schedule: 60}}
          on_start: {myapp.tasks.warmup: {}}
          control: {}
        worker:
          class: myapp.worker.AppWorker
          idle_timeout: 3
        publish:
          default_broker: pg_notify
          default_control_broker: socket
        """,
    )
    settings = setup()
    assert settings.source == "dispatcher.yml"
    pg = settings.brokers.pg_notify
    assert pg is not None
    assert pg.channels == ("test_channel", "test_channel2")
    assert pg.default_publish_channel == "test_channel"
    assert settings.brokers.names == ("pg_notify", "socket")
    assert settings.tasks.modules == ("myapp.tasks",)
    assert settings.service.pool == Pool(min_workers=1, max_workers=4)
    assert settings.service.metrics is not None
    assert settings.service.metrics.port == 8070
    assert settings.producers.scheduled["myapp.tasks.cleanup"].schedule == 60
    assert list(settings.producers.on_start) == ["myapp.tasks.warmup"]
    assert settings.producers.control is True
    assert settings.worker.worker_class == "myapp.worker.AppWorker"
    assert settings.publish.default_control_broker == "socket"


def test_minimal_config_gets_defaults() -> None:
    settings = setup({"version": 1})
    assert settings.brokers.names == ()
    assert settings.service.pool.min_workers == 1
    assert settings.service.pool.max_workers is None
    assert settings.service.metrics is None
    assert settings.producers.control is False
    assert settings.data == {"version": 1}


SEED_CONFIG = """
# Demo config
---
pool:
  min_workers: 2  # subprocesses
  max_workers: 12
  scaledown_wait: 15  # seconds
producers:
  brokers:
    # List of channels to listen on
    channels:
    - test_channel
    - test_channel2
    - test_channel3
    pg_notify:
      # Database connection details
      conninfo: dbname=dispatch_db user=dispatch password=dispatching host=localhost
        port=55777
"""


def test_seed_unversioned_layout_is_translated(tmp_path: Path) -> None:
    write(tmp_path / "dispatcher.yml", SEED_CONFIG)
    settings = setup()
    assert settings.data == {
        "version": 1,
        "service": {"pool": {"min_workers": 2, "max_workers": 12, "scaledown_wait": 15}},
        "brokers": {
            "pg_notify": {
                "channels": ["test_channel", "test_channel2", "test_channel3"],
                "conninfo": "dbname=dispatch_db user=dispatch password=dispatching "
                "host=localhost port=55777",
            }
        },
    }
    assert settings.service.pool.max_workers == 12


def test_design_unversioned_layout_is_translated() -> None:
    settings = setup(
        {
            "producers": {"brokers": {"pg_notify": {"conninfo": "dbname=x", "channels": ["a"]}}},
            "pool": {"max_workers": 4},
        }
    )
    assert settings.brokers.pg_notify is not None
    assert settings.brokers.pg_notify.channels == ("a",)
    assert settings.service.pool.max_workers == 4


def test_unversioned_layout_errors_name_the_keys_as_written() -> None:
    with pytest.raises(ConfigError) as caught:
        setup(
            {
                "pool": {"max_workers": "4", "workers": 2},
                "producers": {
                    "brokers": {"channels": ["a b"], "pg_notify": {"conninfo": "x"}},
                    "scheduled": {"lambda: 1": {"schedule": 3}},
                },
            }
        )
    assert str(caught.value).splitlines() == [
        "config: pool.max_workers: expected integer or null, got string",
        "config: pool.workers: unknown key (did you mean 'min_workers'?)",
        f"config: producers.brokers.channels[0]: not a valid channel name ({CHANNEL_RULE})",
        f"config: producers.scheduled['lambda: 1']: not a valid task name ({TASK_RULE})",
    ]


def _schema_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        name: prop["default"] for name, prop in schema["properties"].items() if "default" in prop
    }


def _dataclass_defaults(cls: type) -> dict[str, Any]:
    defaults = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
    return defaults


@pytest.mark.parametrize(
    ("schema_path", "cls"),
    [
        (("brokers", "pg_notify"), dispatcher_config.PgNotifyBroker),
        (("brokers", "pg_queue"), dispatcher_config.PgQueueBroker),
        (("service", "pool"), dispatcher_config.Pool),
        (("service",), dispatcher_config.Service),
        (("service", "metrics"), dispatcher_config.Metrics),
        (("security",), dispatcher_config.Security),
        (("service", "limits"), dispatcher_config.Limits),
        (("worker",), dispatcher_config.Worker),
    ],
)
def test_schema_defaults_match_settings_defaults(schema_path: tuple[str, ...], cls: type) -> None:
    node = load_schema("config")
    for key in schema_path:
        node = node["properties"][key]
    assert _schema_defaults(node)  # the schema documents the defaults
    assert default_mismatches(".".join(schema_path), node, cls) == []


def default_mismatches(path: str, node: dict[str, Any], cls: type) -> list[str]:
    """How the defaults of the schema *node* (at *path*) differ from those of dataclass *cls*."""
    where = f"{cls.__qualname__} ({cls.__module__})"
    fields = {field.name for field in dataclasses.fields(cls)}
    actual = _dataclass_defaults(cls)
    found = []
    for key, value in _schema_defaults(node).items():
        expected = tuple(value) if isinstance(value, list) else value
        if key not in fields:
            found.append(
                f"{path}.{key}: the schema's default is {value!r}, and {where} has no field "
                f"{key!r}: add it there, with that default"
            )
        elif key not in actual:
            found.append(
                f"{path}.{key}: the schema's default is {value!r}, and the field {key!r} of "
                f"{where} has none: give it that default"
            )
        elif actual[key] != expected:
            found.append(
                f"{path}.{key}: the schema's default is {value!r}, the default of the field "
                f"{key!r} of {where} is {actual[key]!r}"
            )
    return found


def test_a_default_missing_from_the_settings_is_named_with_where_to_add_it() -> None:
    @dataclasses.dataclass
    class Section:
        size: int
        kind: str = "a"
        names: tuple[str, ...] = ("x",)

    node = {
        "properties": {
            "size": {"default": 1},
            "kind": {"default": "b"},
            "names": {"default": ["x"]},
            "label": {"default": "billing"},
        }
    }
    where = f"{Section.__qualname__} ({__name__})"
    assert default_mismatches("service", node, Section) == [
        f"service.size: the schema's default is 1, and the field 'size' of {where} has none: "
        "give it that default",
        f"service.kind: the schema's default is 'b', the default of the field 'kind' of {where} "
        "is 'a'",
        f"service.label: the schema's default is 'billing', and {where} has no field 'label': "
        "add it there, with that default",
    ]


def test_settings_are_read_only() -> None:
    settings: Settings = setup({"version": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.version = 2  # type: ignore[misc]


def test_the_command_to_run_quotes_a_config_path_for_the_shell() -> None:
    from dispatcher.config.settings import dispatcherctl_command

    assert dispatcherctl_command("migrate", None) == "dispatcherctl migrate"
    assert (
        dispatcherctl_command("migrate", "conf/d.yml")
        == "dispatcherctl migrate --config conf/d.yml"
    )
    assert (
        dispatcherctl_command("migrate", "my dir/d.yml")
        == "dispatcherctl migrate --config 'my dir/d.yml'"
    )


@pytest.mark.parametrize(
    ("given", "kind"), [("/path/to/config.yml", "string"), (Path("config.yml"), "path")]
)
def test_a_path_given_as_the_config_says_to_pass_file_path(given: Any, kind: str) -> None:
    with pytest.raises(ConfigError) as refused:
        setup(given)
    path = str(given)
    assert str(refused.value) == (
        f"config: the config must be a mapping of sections, not {kind} {path!r}: to read a "
        f"file, pass its path as file_path= (file_path={path!r})"
    )
