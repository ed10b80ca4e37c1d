"""The JSON Schemas of the dispatcher wire messages and config, and validators for them.

The schemas (JSON Schema draft 2020-12) are the contract between publishers and services,
whatever language they are written in. This package ships them as data and offers:

- :func:`load_schema`: a schema as a parsed JSON object;
- :func:`validator`: a compiled validator per schema, cheap enough for every message;
- :func:`explain`: why an instance is invalid, as ``path: reason`` lines;
- :func:`decode_json`: JSON text from outside, decoded with bounded depth and strict numbers;
  :func:`decode_json_sharing` the same, for a worker thread that lets the others run;
- :func:`sign` and :func:`verify`: signed envelopes (HMAC-SHA256 with a shared secret);
- :func:`split_message` and :class:`ChunkAssembler`: chunk envelopes, both ways;
- :func:`migrations`: the versioned SQL that creates the durable queue's tables;
- :func:`duplicate_identity` and :func:`duplicate_key`: what makes two tasks duplicates;
- the values both sides share (:mod:`dispatcher.schema.wire`): envelope keys, the service
  name prefix, :data:`OnDuplicate`, :data:`LOG_LEVELS`, :data:`LOG_FORMATS`, size limits;
  and :class:`Outcome`;
- :mod:`dispatcher.schema.log_fields`: the attributes log records carry (``extra=``);
- :class:`DispatcherError`: the root of every error the dispatcher distributions raise.
"""

from dispatcher.schema.chunks import (
    ChunkAssembler,
    ChunkedMessageTooLarge,
    ChunkError,
    is_chunk,
    split_message,
)
from dispatcher.schema.decoding import DecodeError, decode_json, decode_json_sharing, exceeds_depth
from dispatcher.schema.errors import (
    DispatcherError,
    InvalidArgumentType,
    InvalidArgumentValue,
    Problem,
    SchemaValidationError,
)
from dispatcher.schema.identity import duplicate_identity, duplicate_key
from dispatcher.schema.outcomes import Outcome
from dispatcher.schema.resources import (
    SCHEMA_NAMES,
    Migration,
    SchemaName,
    load_schema,
    migrations,
    schema_text,
    sql_publisher,
    sql_queue_publisher,
)
from dispatcher.schema.signing import SignatureError, VerifiedMessage, sign, verify
from dispatcher.schema.validation import Validator, explain, validator
from dispatcher.schema.wire import (
    CHANNEL_NAME_PATTERN,
    CHANNEL_NAME_RULE,
    CHANNELS_DIGEST_CHARS,
    CHUNK_KEY,
    CHUNK_VERSION,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_APPLICATION_NAME_BYTES,
    MAX_CHANNEL_NAME_BYTES,
    MAX_INTEGER_DIGITS,
    MAX_MESSAGE_BYTES,
    MAX_NESTING_DEPTH,
    MAX_NOTIFY_PAYLOAD_BYTES,
    MAX_TELLING_DIGEST_BITS,
    MAX_WHOLE_NODE_ID_BYTES,
    ON_DUPLICATE_MODES,
    QUEUE_WAKEUP_CHANNEL,
    QUEUE_WAKEUP_IF_ROOM,
    SERVICE_NAME_PREFIX,
    SIGNED_KEY,
    SIGNED_VERSION,
    LogFormat,
    LogLevel,
    OnDuplicate,
    ServiceName,
    channels_digest,
    digest_has_channel,
    digest_tells_channels,
    has_too_many_digits,
    is_valid_channel_name,
    matches_node_id,
    new_uuid,
    node_id_of,
    parse_service_name,
    service_application_name,
)

__all__ = [
    "CHANNELS_DIGEST_CHARS",
    "CHANNEL_NAME_PATTERN",
    "CHANNEL_NAME_RULE",
    "CHUNK_KEY",
    "CHUNK_VERSION",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_APPLICATION_NAME_BYTES",
    "MAX_CHANNEL_NAME_BYTES",
    "MAX_INTEGER_DIGITS",
    "MAX_MESSAGE_BYTES",
    "MAX_NESTING_DEPTH",
    "MAX_NOTIFY_PAYLOAD_BYTES",
    "MAX_TELLING_DIGEST_BITS",
    "MAX_WHOLE_NODE_ID_BYTES",
    "ON_DUPLICATE_MODES",
    "QUEUE_WAKEUP_CHANNEL",
    "QUEUE_WAKEUP_IF_ROOM",
    "SCHEMA_NAMES",
    "SERVICE_NAME_PREFIX",
    "SIGNED_KEY",
    "SIGNED_VERSION",
    "ChunkAssembler",
    "ChunkError",
    "ChunkedMessageTooLarge",
    "DecodeError",
    "DispatcherError",
    "InvalidArgumentType",
    "InvalidArgumentValue",
    "LogFormat",
    "LogLevel",
    "Migration",
    "OnDuplicate",
    "Outcome",
    "Problem",
    "SchemaName",
    "SchemaValidationError",
    "ServiceName",
    "SignatureError",
    "Validator",
    "VerifiedMessage",
    "channels_digest",
    "decode_json",
    "decode_json_sharing",
    "digest_has_channel",
    "digest_tells_channels",
    "duplicate_identity",
    "duplicate_key",
    "exceeds_depth",
    "explain",
    "has_too_many_digits",
    "is_chunk",
    "is_valid_channel_name",
    "load_schema",
    "matches_node_id",
    "migrations",
    "new_uuid",
    "node_id_of",
    "parse_service_name",
    "schema_text",
    "service_application_name",
    "sign",
    "split_message",
    "sql_publisher",
    "sql_queue_publisher",
    "validator",
    "verify",
]
