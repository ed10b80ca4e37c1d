"""The JSON Schemas of the dispatcher wire messages and config, and validators for them.

The schemas (JSON Schema draft 2020-12) are the contract between publishers and services,
whatever language they are written in. This package ships them as data and offers:

- :func:`load_schema`: a schema as a parsed JSON object;
- :func:`validator`: a compiled validator per schema, cheap enough for every message;
- :func:`explain`: why an instance is invalid, as ``path: reason`` lines;
- :func:`decode_json`: JSON text from outside, decoded with bounded depth and strict numbers;
- :func:`sign` and :func:`verify`: signed envelopes (HMAC-SHA256 with a shared secret).
"""

from dispatcher.schema.decoding import DecodeError, decode_json, exceeds_depth
from dispatcher.schema.errors import Problem, SchemaValidationError
from dispatcher.schema.resources import (
    SCHEMA_NAMES,
    SchemaName,
    load_schema,
    schema_text,
    sql_publisher,
)
from dispatcher.schema.signing import SIGNED_KEY, SignatureError, VerifiedMessage, sign, verify
from dispatcher.schema.validation import Validator, explain, validator
from dispatcher.schema.wire import (
    CHANNEL_NAME_PATTERN,
    CHANNEL_NAME_RULE,
    MAX_CHANNEL_NAME_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_NESTING_DEPTH,
    MAX_NOTIFY_PAYLOAD_BYTES,
    is_valid_channel_name,
)

__all__ = [
    "CHANNEL_NAME_PATTERN",
    "CHANNEL_NAME_RULE",
    "MAX_CHANNEL_NAME_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_NESTING_DEPTH",
    "MAX_NOTIFY_PAYLOAD_BYTES",
    "SCHEMA_NAMES",
    "SIGNED_KEY",
    "DecodeError",
    "Problem",
    "SchemaName",
    "SchemaValidationError",
    "SignatureError",
    "Validator",
    "VerifiedMessage",
    "decode_json",
    "exceeds_depth",
    "explain",
    "is_valid_channel_name",
    "load_schema",
    "schema_text",
    "sign",
    "sql_publisher",
    "validator",
    "verify",
]
