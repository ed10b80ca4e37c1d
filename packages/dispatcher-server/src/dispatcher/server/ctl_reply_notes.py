"""What ``dispatcherctl`` says about a control command's replies, beside them.

Where the command goes (the pg_notify channel) and what to say when it cannot be sent; how
many replies came and how many were waited for; who did not answer and why they may not
have; which versions of dispatcher the services that answered run.
"""

from __future__ import annotations

from typing import Final

from dispatcher.config import Settings
from dispatcher.control import ControlResult
from dispatcher.publish import PublishError
from dispatcher.publish.routing import control_broker
from dispatcher.schema import MAX_MESSAGE_BYTES
from dispatcher.server.ctl_columns import shown
from dispatcher.server.log_text import counted

DISPATCHERD_NOT_FOUND = (
    "dispatcherd services cannot be found there: pass --expected-replies N to wait for N replies"
)


LOST_IN_A_POOL: Final = (
    "the replies were waited for through a pooler, and one in transaction mode loses them "
    "(LISTEN needs a session of its own): point brokers.pg_notify.conninfo at PostgreSQL or "
    "a session-mode pool"
)
"""Why replies may not have come, when they were waited for through a pooler."""


def control_channel(settings: Settings) -> str | None:
    """The channel control commands go on, when they go through pg_notify."""
    try:
        broker = control_broker(settings)
    except PublishError:
        return None
    return broker.default_queue if broker.name == "pg_notify" else None


def control_failure(settings: Settings, exc: PublishError) -> str:
    """What to say when a control command could not be sent: *exc*, shown.

    Unless control commands go through pg_notify and it has no channel to send them on:
    then what to set in the config (the SDK's error also offers ``queue=...``, which the
    command line has no option for).
    """
    try:
        broker = control_broker(settings)
    except PublishError:
        return shown(exc)
    if broker.name != "pg_notify" or broker.default_queue is not None:
        return shown(exc)
    return (
        "cannot send control commands: no channel; set brokers.pg_notify."
        f"default_publish_channel in {shown(settings.source)} to a channel the services "
        "listen on (one of their brokers.pg_notify.channels)"
    )


def no_service_found(channel: str | None, result: ControlResult | None = None) -> str:
    """What to say when no service was found to wait for (on *channel*, when known).

    With *result*, also the services found that may listen there but did not answer.
    """
    listening = f" listening on channel {shown(channel)}" if channel else ""
    found = f"no dispatcher service{listening} is connected to the database"
    if result is not None and result.unconfirmed:
        found = f"no dispatcher service{listening} answered ({uncertain(result.unconfirmed)})"
    return f"{found} ({DISPATCHERD_NOT_FOUND})"


def uncertain(nodes: list[str], where: str = "there") -> str:
    """Say that the services *nodes* did not answer, and why they are not counted missing.

    *where*: the channel, as in "may not listen *where*".
    """
    one = len(nodes) == 1
    return (
        f"{shown(', '.join(nodes))}, which may not listen {where}, did not answer: "
        f"{'it listens' if one else 'they listen'} on too many channels for "
        f"{'its connection' if one else 'their connections'}' names to tell, and "
        f"{'is' if one else 'are'} not counted missing"
    ).replace("connection' names", "connection's name")


def tally(result: ControlResult, looked_up: bool, channel: str | None = None) -> str:
    """Say how many replies came, and how many were waited for and why."""
    came = len(result.replies)
    maybe = len(result.uncertain_nodes)
    if maybe:  # those answered are counted apart
        came -= maybe - len(result.unconfirmed)
    counted = f"{came} of {result.expected} replies"
    if came > result.expected:  # services not looked up answered too (dispatcherd's)
        counted = f"{came} replies, {result.expected} waited for"
    if looked_up:
        listening = (
            f" listening on channel {shown(channel)}" if channel else " connected to the database"
        )
        uncertain = ""
        if maybe:
            answered = maybe - len(result.unconfirmed)
            uncertain = (
                f"; {answered} of {maybe} from those that may listen there (on too many "
                "channels to tell)"
            )
        return (
            f"({counted}: one per dispatcher service{listening}{uncertain}; "
            "dispatcherd services are not counted: --expected-replies N waits for N)"
        )
    return f"({counted})"


def shortfall(result: ControlResult) -> str:
    """What to say when not every service waited for answered: replies came, or did not.

    A reply that came too large to take (from a service of another version) is said so,
    not taken for silence; whose it was is not known (it names its service once whole).
    """
    text = f"{len(result.replies)} of {result.expected} expected replies"
    missing = shown(", ".join(result.missing))
    if result.through_pooler and result.missing:
        return f"{text}; no answer from {missing}: {LOST_IN_A_POOL}"
    if result.arriving:
        still = "a reply was" if result.arriving == 1 else f"{result.arriving} replies were"
        text += (
            f"; {still} still arriving when the wait ran out: a longer --timeout lets "
            f"{'it' if result.arriving == 1 else 'them'} come whole"
        )
    if not result.too_large:
        return f"{text}; no answer from {missing}{unlisted(result)}" if result.missing else text
    text += (
        f"; {counted(result.too_large, 'reply', 'replies')} came too large to take (over "
        f"{MAX_MESSAGE_BYTES} bytes: from a service of another version?)"
    )
    if len(result.missing) == result.too_large:
        return f"{text}, in place of those of {missing}"
    if not result.missing:
        return text
    return f"{text}; not taken, or no answer, from {missing}{unlisted(result)}"


def unlisted(result: ControlResult) -> str:
    """Why services that did not answer may not have got the command at all, if they may.

    Their connections' names list no channels (:attr:`ControlResult.unlisted_nodes`: an
    older release names them so), so they are waited for whatever the channel; one that
    serves other channels only never answers. Said after the list of those missing, with
    the ``--expected-replies`` that waits for the others alone. Empty when none is such.
    """
    silent = [node for node in result.missing if node in result.unlisted_nodes]
    if not silent:
        return ""
    one = len(silent) == 1
    names = "connection's name lists" if one else "connections' names list"
    if len(silent) == len(result.missing):
        who = f", whose {names}"
    else:
        which = "is a service" if one else "are services"
        who = f"; of those, {shown(', '.join(silent))} {which} whose {names}"
    others = result.expected - len(silent)
    then = (
        f"--expected-replies {others} waits for the others alone"
        if others
        else "no service found listens there"
    )
    return (
        f"{who} no channels (as an older release names them): {'it' if one else 'they'} "
        f"may serve other channels only; if so, {then}"
    )


VERSION_NODES_SHOWN: Final = 5
"""Node ids :func:`mixed_versions` names per version (the others are counted)."""


def mixed_versions(result: ControlResult) -> str | None:
    """Say which services run which version of dispatcher, when they run different ones.

    Read from the ``version`` of their ``status`` replies; a reply without one is from a
    service of a release older than that field (or a dispatcherd service). ``None`` when
    every reply says the same, or none says any.
    """
    if result.command != "status":
        return None
    by_version: dict[str | None, list[str]] = {}
    for reply in result.replies:
        version = reply.get("version")
        said = None if version is None else shown(version)
        by_version.setdefault(said, []).append(shown(reply.get("node_id", "?")))
    if len(by_version) < 2:
        return None
    versions = sorted(version for version in by_version if version is not None)
    groups = [f"{version}: {_some(sorted(by_version[version]))}" for version in versions]
    if None in by_version:
        groups.append(f"no version (an older release): {_some(sorted(by_version[None]))}")
    return f"the services run different versions of dispatcher: {'; '.join(groups)}"


def _some(nodes: list[str]) -> str:
    """*nodes* joined, past :data:`VERSION_NODES_SHOWN` counted: ``a, b and 3 more``."""
    if len(nodes) <= VERSION_NODES_SHOWN:
        return ", ".join(nodes)
    return f"{', '.join(nodes[:VERSION_NODES_SHOWN])} and {len(nodes) - VERSION_NODES_SHOWN} more"
