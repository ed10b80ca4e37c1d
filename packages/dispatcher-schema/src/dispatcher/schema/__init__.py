"""The JSON Schemas of the dispatcher wire messages and config, and validators for them.

The schemas (JSON Schema draft 2020-12) are the contract between publishers and services,
whatever language they are written in. This package ships them as data and offers:

- :func:`load_schema`: a schema as a parsed JSON object;
- :func:`validator`: a compiled validator per schema, cheap enough for every message;
- :func:`explain`: why an instance is invalid, as ``path: reason`` lines.
"""

from dispatcher.schema.errors import Problem, SchemaValidationError
from dispatcher.schema.resources import (
    SCHEMA_NAMES,
    SchemaName,
    load_schema,
    schema_text,
    sql_publisher,
)
from dispatcher.schema.validation import Validator, explain, validator
from dispatcher.schema.wire import (
    CHANNEL_NAME_PATTERN,
    CHANNEL_NAME_RULE,
    MAX_CHANNEL_NAME_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_NOTIFY_PAYLOAD_BYTES,
    is_valid_channel_name,
)

__all__ = [
    "CHANNEL_NAME_PATTERN",
    "CHANNEL_NAME_RULE",
    "MAX_CHANNEL_NAME_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_NOTIFY_PAYLOAD_BYTES",
    "SCHEMA_NAMES",
    "Problem",
    "SchemaName",
    "SchemaValidationError",
    "Validator",
    "explain",
    "is_valid_channel_name",
    "load_schema",
    "schema_text",
    "sql_publisher",
    "validator",
]
