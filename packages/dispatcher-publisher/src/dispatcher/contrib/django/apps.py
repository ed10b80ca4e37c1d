"""The Django application: ``INSTALLED_APPS += ["dispatcher.contrib.django"]``."""

from __future__ import annotations

from django.apps import AppConfig

from dispatcher.config import is_setup
from dispatcher.contrib.django.config import configure


class DispatcherConfig(AppConfig):
    """Applies ``settings.DISPATCHER`` when Django starts, and adds ``rundispatcher``."""

    name = "dispatcher.contrib.django"
    label = "dispatcher"
    verbose_name = "dispatcher"

    def ready(self) -> None:
        """Install the dispatcher config of ``settings.DISPATCHER`` (see :mod:`.config`).

        Unless a config is in force already: one set up before Django, such as the config
        of the service whose fork server or worker this process is (``dispatcher-standalone
        --config FILE`` with ``dispatcher.contrib.django.worker`` among its task modules),
        stays.
        """
        if not is_setup():
            configure()
