"""The demo project's settings with persistent connections (``CONN_MAX_AGE``), without
Django's health checks: a worker keeps its connection from one task to the next."""

from demo_site.settings import *  # noqa: F403
from demo_site.settings import DATABASES

DATABASES = {**DATABASES, "default": {**DATABASES["default"], "CONN_MAX_AGE": 600}}
