"""Signing what a publisher sends, when the config has a key (``security.keys``)."""

from __future__ import annotations

import time

from dispatcher.config import NotConfiguredError, SigningKey, get_settings
from dispatcher.schema import sign


def signing_key() -> SigningKey | None:
    """Return the key to sign with: ``security.sign_with``, else the first key.

    ``None`` when the config has no key, or when there is no config at all (a submission
    with an explicit queue and connection needs none).
    """
    try:
        return get_settings().security.signing_key
    except NotConfiguredError:
        return None


def signed(text: str, key: SigningKey | None) -> str:
    """Return the JSON text *text* wrapped in a signed envelope, or as is without a *key*."""
    if key is None:
        return text
    return sign(text, key.id, key.secret, time.time())
