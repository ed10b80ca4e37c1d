"""Loading the dispatcher config, shared by publishers and the service.

Call :func:`setup` once at start-up::

    from dispatcher.config import setup
    setup(file_path="dispatcher.yml")

Without arguments (or on first use, without :func:`setup`), the config is read from the file
named by ``$DISPATCHER_CONFIG_FILE``, else by ``$DISPATCHERD_CONFIG_FILE``, else from
``./dispatcher.yml``. Every problem is reported as a :class:`ConfigError` (a
:class:`DispatcherError`) naming the file, the location and the reason. dispatcherd's config
layout (``version: 2``) is read too, translated; what has no equivalent is listed in
:attr:`Settings.warnings`. :func:`using` gives a block of code a config of its own (in its
thread or asyncio task only), to publish with several configs in one process.
"""

from dispatcher.config.current import Using, get_settings, install, is_setup, reset, setup, using
from dispatcher.config.errors import ConfigError, NotConfiguredError
from dispatcher.config.loading import (
    CONFIG_FILE_ENV,
    DEFAULT_CONFIG_FILE,
    DISPATCHERD_CONFIG_FILE_ENV,
    load_settings,
)
from dispatcher.config.plugins import BrokerPlugin, PluginError, installed_plugins, load_plugin
from dispatcher.config.security import Security, SigningKey
from dispatcher.config.service_settings import Limits, Metrics, Pool, Service, ServiceControl
from dispatcher.config.settings import (
    BrokerName,
    Brokers,
    PgNotifyBroker,
    PgQueueBroker,
    PluginBroker,
    Producers,
    Publish,
    ScheduledTask,
    Settings,
    SocketBroker,
    TaskOptions,
    Tasks,
    Worker,
)
from dispatcher.schema import DispatcherError

__all__ = [
    "CONFIG_FILE_ENV",
    "DEFAULT_CONFIG_FILE",
    "DISPATCHERD_CONFIG_FILE_ENV",
    "BrokerName",
    "BrokerPlugin",
    "Brokers",
    "ConfigError",
    "DispatcherError",
    "Limits",
    "Metrics",
    "NotConfiguredError",
    "PgNotifyBroker",
    "PgQueueBroker",
    "PluginBroker",
    "PluginError",
    "Pool",
    "Producers",
    "Publish",
    "ScheduledTask",
    "Security",
    "Service",
    "ServiceControl",
    "Settings",
    "SigningKey",
    "SocketBroker",
    "TaskOptions",
    "Tasks",
    "Using",
    "Worker",
    "get_settings",
    "install",
    "installed_plugins",
    "is_setup",
    "load_plugin",
    "load_settings",
    "reset",
    "setup",
    "using",
]
