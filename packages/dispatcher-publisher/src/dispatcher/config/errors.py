"""The one exception type of config loading."""

from __future__ import annotations

from dispatcher.schema import DispatcherError


class ConfigError(DispatcherError):
    """The config is missing, unreadable or invalid.

    The message names the source (file name, or ``config`` for a dict), the location in it
    and the reason, one problem per line, e.g.
    ``dispatcher.yml: brokers.pg_notify.channels[1]: 'has space' is not a valid channel name``.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        """Where the config came from: a file name as given, or ``config`` for a dict."""
        self.problems = list(problems)
        """What is wrong, one ``location: reason`` (or plain reason) per entry."""
        shown = escaped(source)
        super().__init__("\n".join(f"{shown}: {problem}" for problem in self.problems))


def escaped(text: str) -> str:
    r"""*text* with its non-printable characters escaped (``\x1b``).

    A file name given on a command line (or a folder's name) may hold a terminal's escape
    sequence.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class NotConfiguredError(ConfigError):
    """No config was given and none was found where one is looked for."""

    def __init__(self, hint: str | None = None) -> None:
        """*hint*: what else to do, where the process says more (its Django project)."""
        advice = (
            "call dispatcher.config.setup(config=...) or setup(file_path=...), "
            "set DISPATCHER_CONFIG_FILE, or create ./dispatcher.yml"
        )
        super().__init__("dispatcher is not configured", [f"{advice}; {hint}" if hint else advice])
