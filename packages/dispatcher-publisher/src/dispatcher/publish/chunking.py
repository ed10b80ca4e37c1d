"""Chunk envelopes; they live in :mod:`dispatcher.schema.chunks`, re-exported here."""

from dispatcher.schema.chunks import (
    CHUNK_KEY,
    CHUNK_VERSION,
    ChunkAssembler,
    ChunkedMessageTooLarge,
    ChunkError,
    is_chunk,
    split_message,
)

__all__ = [
    "CHUNK_KEY",
    "CHUNK_VERSION",
    "ChunkAssembler",
    "ChunkError",
    "ChunkedMessageTooLarge",
    "is_chunk",
    "split_message",
]
