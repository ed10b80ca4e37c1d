"""Send control commands to running dispatcher services and collect their replies.

::

    from dispatcher.control import control_with_reply, entries

    result = control_with_reply("running", {"task": "myapp.tasks.send_email"})
    for reply in result.replies:
        for slot, task in entries(reply).items():   # "worker-0", "queued-2", ...
            print(reply["node_id"], slot, task["uuid"], task.get("where"))
    if result.missing:
        print("no answer from", result.missing)

Replies have dispatcherd's shapes (see ``docs/control.md``), so code written for
dispatcherd's ``Control`` reads them too.
"""

from dispatcher.control.client_async import acontrol, acontrol_with_reply
from dispatcher.control.client_sync import control, control_with_reply
from dispatcher.control.result import MAX_CONTROL_TIMEOUT, ControlResult, entries

__all__ = [
    "MAX_CONTROL_TIMEOUT",
    "ControlResult",
    "acontrol",
    "acontrol_with_reply",
    "control",
    "control_with_reply",
    "entries",
]
