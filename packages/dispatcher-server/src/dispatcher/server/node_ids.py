"""The service's node id: ``service.node_id``, else ``$DISPATCHER_NODE_ID``, else a default.

The default is made of the host name and the process id, short enough to be seen whole in
the ``application_name`` of the service's connections (see
:data:`~dispatcher.schema.MAX_WHOLE_NODE_ID_BYTES`), by which control clients count the
services they wait for.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
from collections.abc import Mapping
from typing import Final

from dispatcher.config import ConfigError, Settings
from dispatcher.schema import CHANNEL_NAME_RULE, MAX_WHOLE_NODE_ID_BYTES, is_valid_channel_name

NODE_ID_ENV: Final = "DISPATCHER_NODE_ID"
"""Environment variable giving the node id when the config sets no ``service.node_id``
(one per replica, say from the pod's name, where every replica reads one config)."""

MAX_HOST_CHARS: Final = 25
"""Most characters of the host name a default node id holds: with ``-`` and a process id
(at most 7 digits), it fits in :data:`~dispatcher.schema.MAX_WHOLE_NODE_ID_BYTES`."""

_HEAD_CHARS: Final = 12
_DIGEST_CHARS: Final = 5
"""A longer host name keeps its start, a digest of the whole, and its end (see
:func:`short_host`)."""


def node_id(settings: Settings, environ: Mapping[str, str] = os.environ, instance: int = 1) -> str:
    """The node id of a service run with *settings*.

    ``service.node_id`` if set, else :data:`NODE_ID_ENV` if set (and not empty), else
    :func:`default_node_id`; either of the last two for the *instance*-th service of the
    process that takes it at the same time (see :func:`numbered`).

    :raises ConfigError: when :data:`NODE_ID_ENV` is not a valid node id.
    """
    if settings.service.node_id:
        return settings.service.node_id
    given = environ.get(NODE_ID_ENV)
    if not given:
        return default_node_id(instance=instance)
    if not is_valid_channel_name(given):
        raise ConfigError(
            f"${NODE_ID_ENV}",
            [f"{given!r} is not a valid node id: it must be {CHANNEL_NAME_RULE}"],
        )
    return numbered(given, instance)


def numbered(node: str, instance: int) -> str:
    """*node* for the *instance*-th service of the process that takes it at the same time.

    The first one's is *node* itself; the next ones' end with ``-<instance>``, *node*
    shortened (by :func:`short_host`) for the whole to fit in
    :data:`~dispatcher.schema.MAX_WHOLE_NODE_ID_BYTES`, where control clients see it whole.
    """
    if instance == 1:
        return node
    extra = f"-{instance}"
    return f"{short_host(node, MAX_WHOLE_NODE_ID_BYTES - len(extra))}{extra}"


def default_node_id(host: str | None = None, pid: int | None = None, instance: int = 1) -> str:
    """A node id from the host name and process id: ``<host>-<pid>``.

    Within the channel-name rule and at most :data:`~dispatcher.schema.MAX_WHOLE_NODE_ID_BYTES`
    long; a host name longer than :data:`MAX_HOST_CHARS` is shortened by :func:`short_host`,
    which keeps apart the names that differ anywhere (the replicas of a Kubernetes
    Deployment differ only in their last characters, and all run as process 1).
    *instance*: the how-manieth service of the process that takes it at the same time
    (after the first, it ends with ``-<instance>``, the host name shortened to make room).
    """
    host = socket.gethostname() if host is None else host
    pid = os.getpid() if pid is None else pid
    extra = f"-{instance}" if instance > 1 else ""
    shortened = short_host(re.sub(r"[^A-Za-z0-9_.:-]", "-", host), MAX_HOST_CHARS - len(extra))
    return f"{shortened}-{pid}{extra}"


def short_host(host: str, limit: int = MAX_HOST_CHARS) -> str:
    """*host* itself if it has at most *limit* characters, else shortened to *limit*.

    A shortened name is its first 12 characters, a digest of the whole name (5 characters)
    and its end (6 characters when *limit* is :data:`MAX_HOST_CHARS`), joined by ``-``:
    ``dispatcher-worker-7d9f8b6c5d-x2k4q`` becomes ``dispatcher-w-<digest>-x2k4q``.
    """
    if len(host) <= limit:
        return host
    digest = base64.b32encode(hashlib.sha256(host.encode()).digest()).decode().lower()
    tail_chars = max(1, limit - _HEAD_CHARS - _DIGEST_CHARS - 2)
    head, tail = host[:_HEAD_CHARS], host[-tail_chars:]
    return f"{head.rstrip('-')}-{digest[:_DIGEST_CHARS]}-{tail.lstrip('-')}"
