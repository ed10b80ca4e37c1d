"""Facts of the wire shared by publishers and services: keys, names, limits and choices.

Each value has its home here, and both sides (and the tests that compare them with the
schema files) import it from here.
"""

import os
import re
from typing import Final, Literal, get_args

MAX_NOTIFY_PAYLOAD_BYTES: Final = 7999
"""Largest NOTIFY payload PostgreSQL accepts, in UTF-8 bytes (it refuses 8000 or more).

A message whose JSON text is longer travels as chunk envelopes of at most this size.
"""

MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024
"""Largest message (its JSON text in UTF-8 bytes) a publisher sends or a service accepts."""

MAX_NESTING_DEPTH: Final = 64
"""Deepest nesting of arrays and objects in a message; the message object is level 1.

A task's ``args`` and ``kwargs`` may thus nest 63 levels. Deeper text is refused (reason
``too_deep``) before anything acts on it, so that no decoder, validator or encoder along
the way can run out of stack.
"""

MAX_CHANNEL_NAME_BYTES: Final = 63
"""Longest channel name PostgreSQL keeps whole (NAMEDATALEN - 1); longer names are cut."""

CHANNEL_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,63}$")
"""What a channel name may be: 1-63 bytes of ASCII letters, digits, ``_ . - :``.

The same rule as ``$defs/channel_name`` in the schemas (a test keeps them equal).
"""

CHANNEL_NAME_RULE: Final = "1-63 bytes of ASCII letters, digits, '_', '.', '-' or ':'"
""":data:`CHANNEL_NAME_PATTERN` in words, for error messages."""


def is_valid_channel_name(name: object) -> bool:
    """Tell whether *name* is a string that is a valid channel name."""
    return isinstance(name, str) and CHANNEL_NAME_PATTERN.match(name) is not None


MAX_APPLICATION_NAME_BYTES: Final = 63
"""Longest ``application_name`` PostgreSQL keeps whole (NAMEDATALEN - 1); it cuts the rest."""

SERVICE_NAME_PREFIX: Final = "dispatcher-service:"
"""How a service's LISTEN connection names itself: this prefix, then the service's node id.

Control clients count the services connected to a database by looking for connections
whose ``application_name`` starts with it (see :func:`node_id_of`).
"""

MAX_WHOLE_NODE_ID_BYTES: Final = MAX_APPLICATION_NAME_BYTES - len(SERVICE_NAME_PREFIX)
"""Longest node id that fits whole after :data:`SERVICE_NAME_PREFIX` (44 bytes).

PostgreSQL cuts a longer one short in ``application_name``: a node id seen there with this
length may be the start of a longer one.
"""


def service_application_name(node_id: str) -> str:
    """Return the ``application_name`` of the LISTEN connection of the service *node_id*.

    The result is what PostgreSQL stores: cut to :data:`MAX_APPLICATION_NAME_BYTES` (node ids
    are ASCII, so characters and bytes count alike).
    """
    return (SERVICE_NAME_PREFIX + node_id)[:MAX_APPLICATION_NAME_BYTES]


def node_id_of(application_name: str) -> str | None:
    """Return the node id a service's ``application_name`` carries, ``None`` for other names.

    The node id may have been cut short (see :data:`MAX_WHOLE_NODE_ID_BYTES`).
    """
    if not application_name.startswith(SERVICE_NAME_PREFIX):
        return None
    return application_name[len(SERVICE_NAME_PREFIX) :]


def matches_node_id(seen: str, node_id: str) -> bool:
    """Tell whether *seen*, a node id read from ``application_name``, is *node_id*.

    They are equal, or *node_id* was too long to fit whole and *seen* is its start.
    """
    if len(seen) < MAX_WHOLE_NODE_ID_BYTES:
        return node_id == seen
    return node_id.startswith(seen)


QUEUE_WAKEUP_CHANNEL: Final = "dispatcher_queue_wakeup"
"""The channel services of the durable ``pg_queue`` broker LISTEN on to wake up.

Whoever stores a job NOTIFYs it here, in the same transaction, with the queue's name as the
payload; the row holds the message, the notification only says where to look.
"""

CHUNK_KEY: Final = "__dispatcherd_chunk__"
"""The key that marks a JSON object as a chunk envelope (its value is the envelope version)."""

CHUNK_VERSION: Final = "v1"
"""The only chunk envelope version there is."""

SIGNED_KEY: Final = "__dispatcher_signed__"
"""The key that marks a JSON object as a signed envelope (its value is the envelope version)."""

SIGNED_VERSION: Final = "v1"
"""The only signed envelope version there is."""

OnDuplicate = Literal["parallel", "discard", "serial", "queue_one"]
"""What a service does with a task identical to one already queued or running.

The ``on_duplicate`` of a task message (and of ``@task`` and the config's task options);
plain strings, as on the wire: ``on_duplicate="serial"``.
"""

ON_DUPLICATE_MODES: Final[tuple[OnDuplicate, ...]] = get_args(OnDuplicate)
"""Every value of :data:`OnDuplicate`, in the schema's order (a test keeps them equal)."""

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
"""A log level, as the ``set_log_level`` command and the command-line tools take it."""

LOG_LEVELS: Final[tuple[LogLevel, ...]] = get_args(LogLevel)
"""Every :data:`LogLevel`, from the most verbose."""


def new_uuid() -> str:
    """Return a random (version 4) UUID in text form, for a message's ``uuid``.

    Twice as fast as ``str(uuid.uuid4())``, with the same result.
    """
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_VARIANT: Final = "89ab"
