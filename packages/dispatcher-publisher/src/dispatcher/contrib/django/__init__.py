"""dispatcher in a Django project.

Add the application; its config then comes from ``settings.DISPATCHER`` (a dict in the shape
of ``dispatcher.yml``, or the path of such a file), applied when Django starts::

    INSTALLED_APPS = [..., "dispatcher.contrib.django"]
    DISPATCHER = {
        "version": 1,
        "brokers": {"pg_notify": {"channels": ["default"]}},  # conninfo: from DATABASES
        "tasks": {"modules": ["myapp.tasks"]},
    }

Submit tasks as part of the current transaction (delivered when it commits, never on
rollback) with :func:`delay_on_commit` and :func:`submit_on_commit`; run the service with
``python manage.py rundispatcher``. See :mod:`.config`, :mod:`.publishing`, :mod:`.worker`.
"""

from importlib.util import find_spec

if find_spec("django") is None:
    raise ModuleNotFoundError(
        'dispatcher.contrib.django needs Django: pip install "dispatcher-publisher[django]"',
        name="django",
    )

from dispatcher.contrib.django.config import DjangoSettingsError
from dispatcher.contrib.django.publishing import delay_on_commit, submit_on_commit

__all__ = ["DjangoSettingsError", "delay_on_commit", "submit_on_commit"]
