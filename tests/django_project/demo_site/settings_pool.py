"""The demo project's settings with Django's connection pool (``OPTIONS["pool"]``), two
workers, and a task module that queries the database as the fork server imports it."""

from demo_site.settings import *  # noqa: F403
from demo_site.settings import DATABASES, DISPATCHER

_default = DATABASES["default"]
DATABASES = {
    **DATABASES,
    "default": {
        **_default,
        "OPTIONS": {**_default["OPTIONS"], "pool": {"min_size": 1, "max_size": 2, "timeout": 3}},
    },
}

DISPATCHER = {
    **DISPATCHER,
    "tasks": {"modules": ["demo_notes.tasks", "demo_notes.counted_at_import"]},
    "service": {"pool": {"min_workers": 2, "max_workers": 2}, "shutdown_grace": 5},
}
