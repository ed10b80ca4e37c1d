"""Facts of the wire shared by publishers and services: keys, names, limits and choices.

Each value has its home here, and both sides (and the tests that compare them with the
schema files) import it from here.
"""

import hashlib
import os
import re
import sys
from collections.abc import Iterable
from typing import Final, Literal, NamedTuple, get_args

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

MAX_INTEGER_DIGITS: Final = sys.int_info.default_max_str_digits
"""Most decimal digits of an integer in a message (4300): Python's default limit, with which
a service decodes JSON. A message holding a longer integer is refused as not JSON, so a
publisher refuses to send one, even where its own process allows longer."""


def has_too_many_digits(value: int) -> bool:
    """Tell whether the integer *value* has more than :data:`MAX_INTEGER_DIGITS` digits."""
    return not -_SMALLEST_TOO_LONG < value < _SMALLEST_TOO_LONG


_SMALLEST_TOO_LONG: Final = 10**MAX_INTEGER_DIGITS
"""The smallest integer of more than :data:`MAX_INTEGER_DIGITS` digits (compared, never
written out: cheaper than counting digits, which the limit forbids anyway)."""

MAX_CHANNEL_NAME_BYTES: Final = 63
"""Longest channel name PostgreSQL keeps whole (NAMEDATALEN - 1); longer names are cut."""

CHANNEL_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,63}\Z")
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
"""How a service's LISTEN connection names itself: this prefix, a digest of the channels it
listens on, ``/``, then the service's node id (see :func:`service_application_name`).

Control clients count the services connected to a database, and listening on the channel
they send on, by looking for connections whose ``application_name`` starts with it (see
:func:`parse_service_name`).
"""

CHANNELS_DIGEST_CHARS: Final = 10
"""Length of the digest of a service's channels in its ``application_name``."""

_DIGEST_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz234567"
_DIGEST_BITS: Final = CHANNELS_DIGEST_CHARS * 5
_BITS_PER_CHANNEL: Final = 3
DIGEST_SEPARATOR: Final = "/"
"""What comes between the digest of the channels and the node id in a service's name.

No node id holds it (see :data:`CHANNEL_NAME_PATTERN`, which node ids follow): the name of
an older version's service, ``dispatcher-service:<node_id>``, cannot be mistaken for a
digest and a node id, whatever its node id (``dispatcher:web-1`` starts like a digest and
a colon).
"""
_DIGEST_PATTERN: Final = re.compile(
    f"[{_DIGEST_ALPHABET}]{{{CHANNELS_DIGEST_CHARS}}}{re.escape(DIGEST_SEPARATOR)}"
)

MAX_WHOLE_NODE_ID_BYTES: Final = (
    MAX_APPLICATION_NAME_BYTES
    - len(SERVICE_NAME_PREFIX)
    - CHANNELS_DIGEST_CHARS
    - len(DIGEST_SEPARATOR)
)
"""Longest node id that fits whole in a service's ``application_name`` (33 bytes).

PostgreSQL cuts a longer one short: a node id seen there with this length may be the start
of a longer one.
"""


def _channel_bits(channel: str) -> int:
    hashed = hashlib.sha256(channel.encode("utf-8")).digest()
    bits = 0
    for i in range(_BITS_PER_CHANNEL):
        bits |= 1 << (int.from_bytes(hashed[2 * i : 2 * i + 2], "big") % _DIGEST_BITS)
    return bits


MAX_TELLING_DIGEST_BITS: Final = 13
"""Most bits a digest of channels may have set for a match to be counted on.

A channel that is not among a digest's channels matches it when its 3 bits happen to be
set: about ``(bits / 50) ** 3`` of the time, 1 in 57 with 13 bits. A digest with more bits
set (the channels of a service with five or more channels, nearly always from six on) is
too full to tell: a match says the service *may* listen (see
:attr:`ServiceName.tells_channels`).
"""


def channels_digest(channels: Iterable[str]) -> str:
    """Return the digest of *channels* a service's ``application_name`` carries.

    A Bloom filter of :data:`CHANNELS_DIGEST_CHARS` base32 characters (50 bits, 3 per
    channel): :func:`digest_has_channel` tells, for any channel, whether it may be one of
    *channels*. It is never wrong about a channel that is (a control client always waits
    for the services that will get its command); for one that is not, it is wrong about 1
    time in 5,000 with one channel, in 600 with two, in 200 with three, in 95 with four
    (average figures). The more channels, the fuller the digest: one with more than
    :data:`MAX_TELLING_DIGEST_BITS` bits set cannot tell (wrong more than 1 time in 57;
    2 times in 3 with 20 channels, every time with 100). No channels give ``aaaaaaaaaa``,
    which has none.
    """
    bits = 0
    for channel in channels:
        bits |= _channel_bits(channel)
    return "".join(
        _DIGEST_ALPHABET[(bits >> shift) & 31] for shift in range(_DIGEST_BITS - 5, -1, -5)
    )


def _digest_value(digest: str) -> int:
    bits = 0
    for char in digest:
        bits = bits << 5 | _DIGEST_ALPHABET.index(char)
    return bits


def digest_has_channel(digest: str, channel: str) -> bool:
    """Tell whether *channel* may be among the channels *digest* was made of.

    See :func:`channels_digest`.
    """
    wanted = _channel_bits(channel)
    return _digest_value(digest) & wanted == wanted


def digest_tells_channels(digest: str) -> bool:
    """Tell whether a match of *digest* can be counted on (see :data:`MAX_TELLING_DIGEST_BITS`)."""
    return _digest_value(digest).bit_count() <= MAX_TELLING_DIGEST_BITS


def service_application_name(node_id: str, channels: Iterable[str] = ()) -> str:
    """Return the ``application_name`` of the LISTEN connection of the service *node_id*.

    ``dispatcher-service:<digest of channels>/<node_id>``, as PostgreSQL stores it: cut to
    :data:`MAX_APPLICATION_NAME_BYTES` (node ids are ASCII, so characters and bytes count
    alike). *channels* are those its control messages may arrive on; without any, no
    control client counts the service.
    """
    name = f"{SERVICE_NAME_PREFIX}{channels_digest(channels)}{DIGEST_SEPARATOR}{node_id}"
    return name[:MAX_APPLICATION_NAME_BYTES]


class ServiceName(NamedTuple):
    """What a service's ``application_name`` says (see :func:`parse_service_name`)."""

    node_id: str
    """The service's node id (maybe cut short: see :data:`MAX_WHOLE_NODE_ID_BYTES`)."""
    channels_digest: str | None
    """The digest of its channels; ``None`` for a name without one (an older version's)."""

    def may_listen_on(self, channel: str) -> bool:
        """Tell whether the service may receive control messages sent on *channel*.

        True for a name without a digest: where it listens cannot be told. False means
        that it does not listen there, whatever its digest.
        """
        return self.channels_digest is None or digest_has_channel(self.channels_digest, channel)

    @property
    def tells_channels(self) -> bool:
        """Whether :meth:`may_listen_on` saying True can be counted on.

        False when the digest is too full to tell (the service listens on many channels:
        see :data:`MAX_TELLING_DIGEST_BITS`): it may or may not listen on a channel that
        matches. True for a name without a digest (an older version's), which clients
        count whatever the channel, as they always did.
        """
        return self.channels_digest is None or digest_tells_channels(self.channels_digest)


def parse_service_name(application_name: str) -> ServiceName | None:
    """Read a service's ``application_name``; ``None`` for a connection that is no service's.

    Names without a digest of the channels (``dispatcher-service:<node_id>``, as older
    versions named their connections) are read too.
    """
    if not application_name.startswith(SERVICE_NAME_PREFIX):
        return None
    rest = application_name[len(SERVICE_NAME_PREFIX) :]
    if _DIGEST_PATTERN.match(rest):
        return ServiceName(rest[CHANNELS_DIGEST_CHARS + 1 :], rest[:CHANNELS_DIGEST_CHARS])
    return ServiceName(rest, None)


def node_id_of(application_name: str) -> str | None:
    """Return the node id a service's ``application_name`` carries, ``None`` for other names.

    The node id may have been cut short (see :data:`MAX_WHOLE_NODE_ID_BYTES`).
    """
    service = parse_service_name(application_name)
    return None if service is None else service.node_id


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
payload; the row holds the message, the notification only says where to look. Unless the
server's NOTIFY queue is half full or more (:data:`QUEUE_WAKEUP_IF_ROOM`): the wake-up is a
hint (the services poll), and a NOTIFY into a full queue fails the whole transaction at
COMMIT, the job with it.
"""

QUEUE_WAKEUP_IF_ROOM: Final = "pg_catalog.pg_notification_queue_usage() < 0.5"
"""The SQL condition under which a job's wake-up NOTIFY is sent: the cluster-wide NOTIFY
queue is less than half full. A listener that never reads (one LISTENing in a transaction
left open) lets the queue fill up; once full, every NOTIFY fails, and a durable job stored
with one would fail with it. Skipped, the job is stored, and found by the services' next
poll (``brokers.pg_queue.poll_interval``). The function reads shared memory: cheap."""

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

LogFormat = Literal["text", "json"]
"""How the service writes its log: ``text`` lines, or one ``json`` object per line."""

LOG_FORMATS: Final[tuple[LogFormat, ...]] = get_args(LogFormat)
"""Every :data:`LogFormat`, the default first."""


def new_uuid() -> str:
    """Return a random (version 4) UUID in text form, for a message's ``uuid``.

    Twice as fast as ``str(uuid.uuid4())``, with the same result.
    """
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_VARIANT: Final = "89ab"
