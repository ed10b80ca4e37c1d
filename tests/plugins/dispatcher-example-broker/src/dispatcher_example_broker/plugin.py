"""The entry point: the config schema of ``brokers.example_spool`` and where both sides are.

This module is imported by every process that loads a config naming the broker (publishers
too): it imports nothing but ``dispatcher.config``.
"""

from __future__ import annotations

from dispatcher.config import BrokerPlugin

CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["directory"],
    "properties": {
        "directory": {
            "type": "string",
            "minLength": 1,
            "description": "The spool directory, shared by the publishers and the service.",
        },
        "queues": {
            "type": "array",
            "items": {"$ref": "urn:dispatcher:schema:config:1#/$defs/channel_name"},
            "uniqueItems": True,
            "default": ["default"],
            "description": "Queues the service reads; the first is the publishers' default.",
        },
        "poll_interval": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 60,
            "default": 0.05,
            "description": "Seconds between two looks at the queue directories.",
        },
    },
}

PLUGIN = BrokerPlugin(
    config_schema=CONFIG_SCHEMA,
    server="dispatcher_example_broker.server:create",
    publisher="dispatcher_example_broker.publisher:create",
)
