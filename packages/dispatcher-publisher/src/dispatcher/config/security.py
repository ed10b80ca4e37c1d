"""The ``security`` section: signing keys, whose secrets are read when the config is loaded.

A secret comes from the config itself (``secret``), an environment variable
(``secret_env``) or a file (``secret_file``). Secrets are kept as bytes in
:class:`SigningKey`, whose repr leaves them out; no error message ever quotes one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from dispatcher.schema import Problem

MessageKind = Literal["task", "control"]

SECRET_SOURCES: Final = ("secret", "secret_env", "secret_file")
"""The keys of a ``security.keys`` entry that give its secret; exactly one is needed."""

MAX_SECRET_FILE_BYTES: Final = 64 << 10
"""Largest ``secret_file`` read, in bytes (a secret is a few dozen; ``/dev/zero`` is endless)."""


@dataclass(frozen=True)
class SigningKey:
    """A ``security.keys`` entry: a shared secret and the id that names it in messages."""

    id: str
    secret: bytes = field(repr=False)
    """The secret's UTF-8 bytes (never shown in a repr)."""


@dataclass(frozen=True)
class Security:
    """``security``: signed messages."""

    keys: tuple[SigningKey, ...] = ()
    sign_with: str | None = None
    """Id of the key publishers sign with; ``None`` means the first key."""
    require_signed: tuple[MessageKind, ...] = ()
    max_age: float = 300

    @property
    def signing_key(self) -> SigningKey | None:
        """The key publishers sign with, or ``None`` when no key is configured."""
        for key in self.keys:
            if self.sign_with is None or key.id == self.sign_with:
                return key
        return None

    @property
    def secrets(self) -> Mapping[str, bytes]:
        """Every key's secret by key id: what a service verifies with."""
        return {key.id: key.secret for key in self.keys}


def load_security(section: Mapping[str, Any]) -> tuple[Security, list[Problem]]:
    """Build :class:`Security` from a ``security`` section that matches the schema.

    Reads the secrets from the environment and files. Returns the settings and the problems
    found (each with its location); the settings are only meaningful without problems.
    """
    problems: list[Problem] = []
    keys: list[SigningKey] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(section.get("keys", ())):
        where = ("security", "keys", index)
        key_id = entry["id"]
        if key_id in seen:
            problems.append(Problem((*where, "id"), f"is also the id of keys[{seen[key_id]}]"))
        seen.setdefault(key_id, index)
        secret = _secret(entry, where, problems)
        if secret is not None:
            keys.append(SigningKey(key_id, secret))
    sign_with = section.get("sign_with")
    if sign_with is not None and sign_with not in seen:
        ids = ", ".join(repr(key_id) for key_id in seen) or "none"
        problems.append(  # not quoted: it may be a secret written in the wrong place
            Problem(
                ("security", "sign_with"),
                f"is not the id of a key in keys (their ids: {ids}){_HIDDEN}",
            )
        )
    require_signed = tuple(section.get("require_signed", ()))
    if require_signed and not seen:
        problems.append(
            Problem(("security", "require_signed"), "needs at least one key in security.keys")
        )
    security = Security(
        keys=tuple(keys),
        sign_with=sign_with,
        require_signed=require_signed,
        max_age=section.get("max_age", Security.max_age),
    )
    return security, problems


def _secret(
    entry: Mapping[str, Any], where: tuple[str | int, ...], problems: list[Problem]
) -> bytes | None:
    """Read the secret of one key entry; on failure add a problem and return ``None``."""
    given = [name for name in SECRET_SOURCES if name in entry]
    if len(given) != 1:
        found = f"got {', '.join(given)}" if given else "got none"
        problems.append(
            Problem(where, f"give exactly one of secret, secret_env, secret_file ({found})")
        )
        return None
    source = given[0]
    text: str | None
    if source == "secret":
        text = entry["secret"]
    elif source == "secret_env":
        name = entry["secret_env"]
        text = os.environ.get(name) or None
        if text is None:
            shown = repr(name) if _ENV_NAME.fullmatch(name) else "(its name is not shown)"
            problems.append(
                Problem((*where, source), f"environment variable {shown} is unset or empty")
            )
    else:
        text = _read_secret_file(entry["secret_file"], (*where, source), problems)
    return None if text is None else text.encode()


def _read_secret_file(
    path: str, where: tuple[str | int, ...], problems: list[Problem]
) -> str | None:
    try:
        with Path(path).open("rb") as stream:
            data = stream.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        problems.append(Problem(where, f"cannot read {path!r}: {exc.strerror or exc}"))
        return None
    if len(data) > MAX_SECRET_FILE_BYTES:
        problems.append(
            Problem(
                where, f"{path!r} is larger than {MAX_SECRET_FILE_BYTES} bytes: not a secret file?"
            )
        )
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(Problem(where, f"{path!r} is not UTF-8 text"))
        return None
    # A byte order mark (Windows' Notepad writes one) is no part of the secret: a service
    # whose copy of the file has none must compute the same signature.
    text = text.removeprefix("\ufeff").removesuffix("\n").removesuffix("\r")
    if not text:
        problems.append(Problem(where, f"{path!r} is empty"))
        return None
    return text


_HIDDEN: Final = " (the value is not shown: it may hold a secret)"

_ENV_NAME: Final = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
"""An environment variable's name as they are written; anything else is not shown (a
secret written as ``secret_env: <the secret>``)."""


def hide_secret(problem: Problem) -> Problem:
    """Return *problem* saying that its value is not shown, when the value may be a secret.

    A config's schema problems quote no value (they say what was expected and the JSON type
    found); in ``security``, where anything could be a secret (a key written without
    ``keys:``, a secret pasted into the wrong setting, a flow mapping's ``{secret: a,b}``
    making ``b`` a key), the reason says so, and an unknown key is named only when it is a
    near miss of a known one.
    """
    path = problem.path
    if path[:1] != ("security",):
        return problem
    if path[:2] == ("security", "keys"):
        if len(path) == 2:
            return Problem(path, "expected an array of at most 16 keys" + _HIDDEN)
        if len(path) == 3:
            return Problem(path, "expected an object with an id and a secret source" + _HIDDEN)
        if path[3:] == ("secret",):
            return Problem(path, "expected a non-empty string" + _HIDDEN)
    reason = problem.reason
    if reason == "is required" or reason.startswith("unknown key (did you mean"):
        return problem
    if reason.startswith("unknown key ("):
        allowed = reason.removeprefix("unknown key (").removesuffix(")")
        return Problem(
            path[:-1],
            f"has an unknown key ({allowed}; the key is not shown: it may hold a secret)",
        )
    if reason.endswith(", got null"):
        return problem
    return Problem(path, reason + _HIDDEN)
