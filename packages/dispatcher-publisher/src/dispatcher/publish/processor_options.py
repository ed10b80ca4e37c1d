"""dispatcherd's ``processor_options``: the submission options they set.

Those are ``delay`` and ``on_duplicate``, given as dispatcherd's params objects or dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

ProcessorOptions = Mapping[str, Any] | Iterable[Any] | None
"""dispatcherd's ``processor_options``: its params objects (anything with a ``to_dict()``),
plain dicts, a sequence of them, or ``None``."""

PROCESSOR_OPTION_KEYS: Final = ("delay", "on_duplicate")
"""The keys ``processor_options`` may set: the submission options of the same names."""


def processor_option_values(processor_options: ProcessorOptions) -> dict[str, Any]:
    """The options dispatcherd's *processor_options* set, as ``{option: value}``.

    Accepts one dict or params object, or an iterable of them; a params object is anything
    with a ``to_dict()`` method (such as dispatcherd's ``Delayer.Params``,
    ``Blocker.Params`` or ``CompatParams``). Later parts override earlier ones, as in
    dispatcherd.

    :raises ValueError: naming the part or key that is not understood.
    """
    if processor_options is None:
        return {}
    if isinstance(processor_options, Mapping) or callable(
        getattr(processor_options, "to_dict", None)
    ):
        parts: Iterable[Any] = (processor_options,)
    elif isinstance(processor_options, str | bytes) or not isinstance(processor_options, Iterable):
        raise ValueError(
            f"expected dispatcherd params objects or dicts, got {type(processor_options).__name__}"
        )
    else:
        parts = processor_options
    values: dict[str, Any] = {}
    for part in parts:
        if isinstance(part, Mapping):
            items = part
        else:
            to_dict = getattr(part, "to_dict", None)
            if not callable(to_dict):
                raise ValueError(
                    f"expected a dispatcherd params object or a dict, got {type(part).__name__}"
                )
            items = to_dict()
            if not isinstance(items, Mapping):
                raise ValueError(f"{type(part).__name__}.to_dict() did not return a dict")
        for key, value in items.items():
            if key not in PROCESSOR_OPTION_KEYS:
                raise ValueError(
                    f"unknown option {key!r} (known: {', '.join(PROCESSOR_OPTION_KEYS)})"
                )
            values[key] = value
    return values
