"""Send control commands to running dispatcher services and collect their replies.

::

    from dispatcher.control import control_with_reply

    result = control_with_reply("running", {"task": "myapp.tasks.send_email"})
    for reply in result.replies:
        print(reply["node_id"], reply["tasks"])
    if result.missing:
        print("no answer from", result.missing)
"""

from dispatcher.control.client_async import acontrol, acontrol_with_reply
from dispatcher.control.client_sync import control, control_with_reply
from dispatcher.control.result import ControlResult

__all__ = ["ControlResult", "acontrol", "acontrol_with_reply", "control", "control_with_reply"]
