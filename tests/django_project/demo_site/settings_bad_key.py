"""The demo project's settings with a misspelt key in settings.DISPATCHER."""

from demo_site.settings import *  # noqa: F403
from demo_site.settings import DISPATCHER

DISPATCHER = {
    **DISPATCHER,
    "brokers": {"pg_notify": {"chanels": ["somewhere"]}},
}
