"""dispatcher.contrib.django without a project: DATABASES entries as conninfo, Django missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

pytest.importorskip("django", reason="Django is not installed (a test dependency: django>=5.2)")

from dispatcher.contrib.django.databases import database_conninfo, same_database


def test_options_given_as_paths_reach_the_conninfo(tmp_path: Path) -> None:
    certificate = tmp_path / "ca.pem"  # settings.py writes BASE_DIR / "ca.pem"
    entry = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "HOST": "db.internal",
        "OPTIONS": {
            "sslmode": "verify-full",
            "sslrootcert": certificate,
            "connect_timeout": 5,
            "pool": True,  # Django's own
            "isolation_level": 1,  # Django's own
        },
    }
    conninfo = database_conninfo(entry)
    assert conninfo is not None
    assert conninfo_to_dict(conninfo) == {
        "dbname": "shop",
        "host": "db.internal",
        "sslmode": "verify-full",
        "sslrootcert": str(certificate),
        "connect_timeout": "5",
    }


def test_importing_it_without_django_names_the_extra() -> None:
    program = "import sys; sys.modules['django'] = None; import dispatcher.contrib.django"
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: dispatcher.contrib.django needs Django: "
        'pip install "dispatcher-publisher[django]"'
    )


NOT_POSTGRESQL_PROJECT = """
import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["dispatcher.contrib.django"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    DISPATCHER={"version": 1, "brokers": {"pg_notify": {"channels": ["orders"]}}},
)
django.setup()
"""


def test_a_conninfo_that_databases_cannot_give_is_explained() -> None:
    result = subprocess.run(
        [sys.executable, "-c", NOT_POSTGRESQL_PROJECT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "dispatcher.contrib.django.config.DjangoSettingsError: settings.DISPATCHER: "
        "brokers.pg_notify.conninfo: is required (it is taken from DATABASES['default'] only "
        "when that is PostgreSQL, not 'django.db.backends.sqlite3')"
    )


@pytest.mark.parametrize(
    ("conninfo", "port", "same"),
    [
        ("dbname=shop host=db.internal", "5432", True),
        ("dbname=shop host=db.internal port=5432", "", True),
        ("dbname=shop host=db.internal port=5432", 5432, True),
        ("dbname=shop host=db.internal", "", True),
        ("dbname=shop host=db.internal", "5433", False),
        ("dbname=shop host=db.internal port=5433", "", False),
        ("dbname=shop host=other port=5432", "5432", False),
    ],
)
def test_a_port_left_out_is_the_default_port(
    conninfo: str, port: object, same: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left out on one side and 5432 on the other: the same database (the transaction joins)."""
    monkeypatch.delenv("PGPORT", raising=False)
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGDATABASE", raising=False)
    entry = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "HOST": "db.internal",
        "PORT": port,
    }
    assert same_database(conninfo, entry) is same


def test_values_left_out_are_those_of_the_libpq_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGPORT", "6543")
    monkeypatch.setenv("PGHOST", "db.internal")
    monkeypatch.setenv("PGDATABASE", "shop")
    entry = {"ENGINE": "django.db.backends.postgresql", "NAME": "", "PORT": "6543"}
    assert same_database("host=db.internal dbname=shop", entry)
    assert not same_database("host=db.internal dbname=shop port=5432", entry)


UNCONFIGURED_PROJECT = """
import sys
import django
from django.conf import settings

apps = ["dispatcher.contrib.django"] if sys.argv[1] == "installed" else []
extra = {"DISPATCHER": {"version": 1}} if sys.argv[2] == "set" else {}
settings.configure(INSTALLED_APPS=apps, **extra)
django.setup()
from dispatcher.config import get_settings
get_settings()
"""


@pytest.mark.parametrize(
    ("installed", "setting", "hint"),
    [
        (
            "installed",
            "absent",
            "in this Django project: set DISPATCHER in its settings",
        ),
        (
            "not-installed",
            "set",
            "settings.DISPATCHER is not read: add 'dispatcher.contrib.django' to INSTALLED_APPS",
        ),
        (
            "not-installed",
            "absent",
            "in this Django project: add 'dispatcher.contrib.django' to INSTALLED_APPS and "
            "set DISPATCHER in its settings",
        ),
    ],
)
def test_a_django_project_without_a_config_is_told_what_it_lacks(
    installed: str, setting: str, hint: str, tmp_path: Path
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DISPATCHER_CONFIG_FILE", "DISPATCHERD_CONFIG_FILE")
    }
    result = subprocess.run(
        [sys.executable, "-c", UNCONFIGURED_PROJECT, installed, setting],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,  # no dispatcher.yml
        env=env,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "dispatcher.config.errors.NotConfiguredError: dispatcher is not configured: call "
        "dispatcher.config.setup(config=...) or setup(file_path=...), set "
        f"DISPATCHER_CONFIG_FILE, or create ./dispatcher.yml; {hint}"
    )
