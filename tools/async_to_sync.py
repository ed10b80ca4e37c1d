"""Generate the synchronous twin of an async module.

The async module is the one source of truth; its sync twin is derived mechanically: ``async``
and ``await`` go, and async names become their sync counterparts (``AsyncConnection`` ->
``Connection``, ``asubmit_task`` -> ``submit_task``, ...). A test fails when a generated file
is stale. Run ``hatch run generate-sync`` after editing an async source.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PUBLISHER = REPO / "packages/dispatcher-publisher/src/dispatcher"

TWINS = {
    PUBLISHER / "publish/submit_async.py": (
        PUBLISHER / "publish/submit_sync.py",
        "Sending task messages from synchronous code.",
    ),
    PUBLISHER / "control/client_async.py": (
        PUBLISHER / "control/client_sync.py",
        "Control commands from synchronous code.",
    ),
}

# Async name -> sync name. Applied in one pass, so the pairs listed both ways are swapped
# (the async module's hints name the sync function and vice versa).
RENAMES = {
    "AsyncConnectionProvider": "ConnectionProvider",
    "AsyncConnection": "Connection",
    "AsyncIterator": "Iterator",
    "asynccontextmanager": "contextmanager",
    "async_owner": "sync_owner",
    "asubmit_task": "submit_task",
    "submit_task": "asubmit_task",
    "abatch": "batch",
    "aclose_connections": "close_connections",
    "acontrol_with_reply": "control_with_reply",
    "acontrol": "control",
    "asocket_request": "socket_request",
    "asend": "send",
}

_NAMES = re.compile(r"\b(" + "|".join(sorted(RENAMES, key=len, reverse=True)) + r")\b")
_KEYWORDS = re.compile(r"\basync (?=def|with|for)|\bawait ")
_DOCSTRING = re.compile(r'\A"""(?:.|\n)*?"""\n', re.MULTILINE)


def generate(source: str, summary: str, source_name: str) -> str:
    """Return the sync twin of the async module text *source*."""
    header = (
        f'"""{summary}\n\nGenerated from ``{source_name}`` by ``tools/async_to_sync.py``; '
        'do not edit.\n"""\n'
    )
    body = _DOCSTRING.sub("", source, count=1)
    body = _KEYWORDS.sub("", body)
    body = _NAMES.sub(lambda match: RENAMES[match.group(1)], body)
    return _format(header + body)


def _format(text: str) -> str:
    """Sort the imports (renames reorder them) and format, as the project's lint expects."""
    ruff = [sys.executable, "-m", "ruff"]
    stdin = ["--stdin-filename", "generated.py", "-"]
    for command in (["check", "--select", "I", "--fix", "--exit-zero", *stdin], ["format", *stdin]):
        text = subprocess.run(
            ruff + command, input=text, capture_output=True, text=True, check=True, cwd=REPO
        ).stdout
    return text


def expected_outputs() -> dict[Path, str]:
    """Map each generated file to the text it should have."""
    return {
        target: generate(source.read_text(encoding="utf-8"), summary, source.name)
        for source, (target, summary) in TWINS.items()
    }


def main() -> None:
    """Write every generated file."""
    for target, text in expected_outputs().items():
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target.relative_to(REPO)}")


if __name__ == "__main__":
    main()
