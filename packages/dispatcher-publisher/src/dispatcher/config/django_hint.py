"""What a Django project lacks when no dispatcher config is found.

Read from Django's settings when the process has set them up (Django is never imported
here): the config of a Django project comes from its ``DISPATCHER`` setting, applied by the
``dispatcher.contrib.django`` application.
"""

from __future__ import annotations

import sys
from typing import Final

APPLICATION: Final = "dispatcher.contrib.django"
"""The Django application that applies ``settings.DISPATCHER``."""


def django_hint() -> str | None:
    """What to do in this process's Django project to configure dispatcher, if it runs one."""
    settings = getattr(sys.modules.get("django.conf"), "settings", None)
    try:
        if settings is None or not settings.configured:
            return None
        installed = any(
            app == APPLICATION or app.startswith(f"{APPLICATION}.apps.")
            for app in settings.INSTALLED_APPS
        )
        has_setting = hasattr(settings, "DISPATCHER")
    except Exception:  # settings that cannot be read: Django says so itself elsewhere
        return None
    if installed and has_setting:  # (submitted before django.setup() applied it)
        return None
    if installed:
        return "in this Django project: set DISPATCHER in its settings"
    if has_setting:
        return f"settings.DISPATCHER is not read: add {APPLICATION!r} to INSTALLED_APPS"
    return (
        f"in this Django project: add {APPLICATION!r} to INSTALLED_APPS and set DISPATCHER "
        "in its settings"
    )
