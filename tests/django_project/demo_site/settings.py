"""Settings of the demo project.

The tests pass, in the environment: ``DEMO_SITE_DSN`` (the test PostgreSQL),
``DEMO_SITE_SCHEMA`` (a schema of their own, first on the search path, which holds the
project's tables) and ``DEMO_SITE_CHANNEL`` (the channel of the tasks).
"""

import os

from psycopg.conninfo import conninfo_to_dict

_dsn = conninfo_to_dict(os.environ["DEMO_SITE_DSN"])

SECRET_KEY = "demo-site-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = ["dispatcher.contrib.django", "demo_notes"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _dsn.get("dbname", ""),
        "USER": _dsn.get("user", ""),
        "PASSWORD": _dsn.get("password", ""),
        "HOST": _dsn.get("host", ""),
        "PORT": _dsn.get("port", ""),
        "OPTIONS": {"options": f"-c search_path={os.environ['DEMO_SITE_SCHEMA']}"},
    },
    # A database whose transactions NOTIFY cannot join: submit_on_commit(using="sqlite")
    # waits for its commit with transaction.on_commit().
    "sqlite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
}

# No conninfo: it is taken from DATABASES["default"].
DISPATCHER = {
    "version": 1,
    "brokers": {
        "pg_notify": {"channels": [os.environ["DEMO_SITE_CHANNEL"]]},
        # A durable queue, its tables in the project's schema.
        "pg_queue": {"queues": ["demo_durable"], "schema": os.environ["DEMO_SITE_SCHEMA"]},
    },
    "tasks": {"modules": ["demo_notes.tasks"]},
    # One worker: tasks run in the order they arrive.
    "service": {"pool": {"min_workers": 1, "max_workers": 1}, "shutdown_grace": 5},
}
