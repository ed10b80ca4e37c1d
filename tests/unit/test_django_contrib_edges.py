"""dispatcher.contrib.django without a project: DATABASES entries as conninfo, Django missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

pytest.importorskip("django", reason="Django is not installed (a test dependency: django>=5.2)")

from dispatcher.contrib.django.databases import database_conninfo


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
        "pip install 'dispatcher-publisher[django]'"
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
