"""The functions of :mod:`support.dispatcherd_tasks`, registered with our ``@task``.

Under the same names (``support.dispatcherd_tasks.record``, ...), and with none of the
options of their dispatcherd registrations but ``bind`` (which dispatcherd's publisher does
not put in the message): the options the tests check arrive in the messages. Our service
runs these where dispatcherd is not installed, so that the wire format is tested apart from
the registration of dispatcherd's ``@task`` functions. Our publisher's ``.delay()`` uses
them too, to submit to a dispatcherd service.
"""

from __future__ import annotations

from dispatcher.publish import task
from support import dispatcherd_tasks as theirs

record = task()(theirs.record)
undecorated = task()(theirs.undecorated)
Adder = task()(theirs.Adder)
bound = task(bind=True)(theirs.bound)
bound_by_message = task()(theirs.bound_by_message)
on_chosen_queue = task()(theirs.on_chosen_queue)
sleeper = task()(theirs.sleeper)
sleeper_with_timeout = task()(theirs.sleeper_with_timeout)
discarded_duplicate = task()(theirs.discarded_duplicate)
one_at_a_time = task()(theirs.one_at_a_time)
delayed = task()(theirs.delayed)
