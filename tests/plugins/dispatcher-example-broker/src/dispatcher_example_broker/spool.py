"""The spool layout, shared by both sides.

``<directory>/queues/<queue>/<name>.msg``: a file of newline-delimited payloads, written
under a temporary name and renamed, so a reader never sees half a file. Names sort in the
order files were written. ``<directory>/replies/<reply_to>/<name>.json``: one control reply
per file, in a directory its requester made (a service never makes one).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path
from typing import Final

NAME: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,63}$")
"""A queue or reply_to name: a dispatcher channel name that is not ``.`` or ``..``."""

MAX_FILE_BYTES: Final = 16 * 1024 * 1024
"""Files larger than this are dropped unread."""


def is_valid_name(name: str) -> bool:
    """Tell whether *name* is safe as one directory name under the spool."""
    return bool(NAME.match(name)) and name not in {".", ".."}


def queue_dir(directory: str, queue: str) -> Path:
    """The directory of *queue*."""
    return Path(directory) / "queues" / queue


def reply_dir(directory: str, reply_to: str) -> Path:
    """The directory replies to *reply_to* go to."""
    return Path(directory) / "replies" / reply_to


def write_atomically(folder: Path, text: str, suffix: str) -> Path:
    """Write *text* as a new file in *folder*, visible only once whole; return its path."""
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex}"
    partial = folder / f".{name}.tmp"
    partial.write_text(text, encoding="utf-8")
    final = folder / f"{name}{suffix}"
    os.replace(partial, final)
    return final


def take_files(folder: Path, suffix: str) -> list[str]:
    """Read and remove the finished files in *folder*, oldest first; return their texts."""
    try:
        names = sorted(entry.name for entry in os.scandir(folder) if entry.name.endswith(suffix))
    except FileNotFoundError:
        return []
    texts = []
    for name in names:
        path = folder / name
        try:
            if path.stat().st_size <= MAX_FILE_BYTES:
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
            path.unlink()
        except FileNotFoundError:
            continue  # another reader took it
    return texts
