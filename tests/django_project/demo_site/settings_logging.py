"""The demo project's settings with a ``LOGGING`` of its own: Django's documented "verbose"
format (process and thread ids) on the root logger and on the project's app logger."""

from demo_site.settings import *  # noqa: F403

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "verbose": {
            "format": "{levelname} {asctime} {module} {process:d} {thread:d} {message}",
            "style": "{",
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "verbose"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {"demo_notes": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
