"""The demo project's settings for ``rundispatcher --reload``: the task module is a file the
test edits, ``DEMO_SITE_TASK_MODULE`` (on ``PYTHONPATH``)."""

import os

from demo_site.settings import *  # noqa: F403
from demo_site.settings import DISPATCHER

DISPATCHER = {
    **DISPATCHER,
    "brokers": {"pg_notify": {"channels": [os.environ["DEMO_SITE_CHANNEL"]]}},
    "tasks": {"modules": [os.environ["DEMO_SITE_TASK_MODULE"]]},
}
