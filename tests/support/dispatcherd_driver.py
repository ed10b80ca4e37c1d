"""Calls dispatcherd's publisher and ``Control`` for the tests, in dispatcherd's environment.

Run as ``python -m support.dispatcherd_driver CONFIG`` with dispatcherd's Python (see
:class:`support.dispatcherd.Driver`): it loads the dispatcherd config file *CONFIG* with
``dispatcherd.config.setup``, then reads one JSON request per line on stdin and answers each
with one JSON line on stdout, ``{"result": ...}`` or ``{"error": "Type: text"}``:

- ``{"call": "publish", "task": NAME, "method": "delay" | "apply_async" | "submit_task",
  "args": [...], "kwargs": {...}, "options": {...}}``: publish :mod:`support.dispatcherd_tasks`
  ``.NAME``; *options* are ``apply_async``'s / ``submit_task``'s keyword arguments, with
  ``processor_options`` given as ``[["Blocker" | "Delayer" | "CompatParams", {...}], ...]``.
  Result: ``{"body": ..., "channel": ...}``, what dispatcherd returned.
- ``{"call": "control_with_reply" | "acontrol_with_reply", "command": ..., "data": {...},
  "expected_replies": N, "timeout": S, "overrides": {...}}``: the replies, as dispatcherd's
  ``Control`` returns them (*overrides* go to ``get_control_from_settings``).
- ``{"call": "control" | "acontrol", "command": ..., "data": {...}}``: fire and forget.
- ``{"call": "publish_raw", "message": "...", "channel": ...}``: dispatcherd's broker
  publishes the text (and chunks it when it is large).
- ``{"call": "dispatcherctl", "argv": [...]}``: dispatcherd's ``dispatcherctl`` (its
  ``dispatcherd.cli.control``) run here with the command line *argv*. Result:
  ``{"status": N, "stdout": "..."}``, its exit status and what it printed (its log and its
  usage errors go to the driver's stderr).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
from typing import Any

from dispatcherd import cli
from dispatcherd.config import setup
from dispatcherd.factories import get_control_from_settings, get_publisher_from_settings
from dispatcherd.processors.blocker import Blocker
from dispatcherd.processors.delayer import Delayer
from dispatcherd.publish import CompatParams, submit_task

from support import dispatcherd_tasks

PROCESSOR_PARAMS = {
    "Blocker": Blocker.Params,
    "Delayer": Delayer.Params,
    "CompatParams": CompatParams,
}


def publish(
    task: str, method: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]
) -> Any:
    target = getattr(dispatcherd_tasks, task)
    options = dict(options)
    if "processor_options" in options:
        options["processor_options"] = tuple(
            PROCESSOR_PARAMS[name](**values) for name, values in options["processor_options"]
        )
    if method == "delay":
        body, channel = target.delay(*args, **kwargs)
    elif method == "apply_async":
        body, channel = target.apply_async(args=args, kwargs=kwargs, **options)
    else:
        body, channel = submit_task(target, args=args, kwargs=kwargs, **options)
    return {"body": body, "channel": channel}


def control(request: dict[str, Any]) -> Any:
    ctl = get_control_from_settings(**request.get("overrides", {}))
    command, data = request["command"], request.get("data")
    waiting = {
        "expected_replies": request.get("expected_replies", 1),
        "timeout": request.get("timeout", 5),
    }
    call = request["call"]
    if call == "control_with_reply":
        return ctl.control_with_reply(command, data=data, **waiting)
    if call == "acontrol_with_reply":
        return asyncio.run(ctl.acontrol_with_reply(command, data=data, **waiting))
    if call == "control":
        return ctl.control(command, data=data)
    return asyncio.run(ctl.acontrol(command, data=data))


def dispatcherctl(argv: list[str]) -> dict[str, Any]:
    """Run dispatcherd's ``dispatcherctl`` with *argv*, as its console script does."""
    printed = io.StringIO()
    sys.argv = ["dispatcherctl", *argv]
    try:
        with contextlib.redirect_stdout(printed):
            cli.control()
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    return {"status": status, "stdout": printed.getvalue()}


def answer(request: dict[str, Any]) -> Any:
    call = request["call"]
    if call == "dispatcherctl":
        return dispatcherctl(request["argv"])
    if call == "publish":
        return publish(
            request["task"],
            request.get("method", "delay"),
            request.get("args", []),
            request.get("kwargs", {}),
            request.get("options", {}),
        )
    if call == "publish_raw":
        broker = get_publisher_from_settings()
        return broker.publish_message(channel=request.get("channel"), message=request["message"])
    return control(request)


def main() -> None:
    setup(file_path=sys.argv[1])
    for line in sys.stdin:
        try:
            reply = {"result": answer(json.loads(line))}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
