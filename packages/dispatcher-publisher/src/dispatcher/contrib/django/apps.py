"""The Django application: ``INSTALLED_APPS += ["dispatcher.contrib.django"]``."""

from __future__ import annotations

from django.apps import AppConfig

from dispatcher.contrib.django.config import configure


class DispatcherConfig(AppConfig):
    """Applies ``settings.DISPATCHER`` when Django starts, and adds ``rundispatcher``."""

    name = "dispatcher.contrib.django"
    label = "dispatcher"
    verbose_name = "dispatcher"

    def ready(self) -> None:
        """Install the dispatcher config of ``settings.DISPATCHER`` (see :mod:`.config`)."""
        configure()
