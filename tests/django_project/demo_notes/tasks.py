"""The demo project's tasks: they use the ORM."""

import os

from demo_notes.models import Note
from dispatcher.publish import task


@task()
def write_note(text: str) -> None:
    """Store a note saying which process wrote it."""
    Note.objects.create(text=text, written_by_pid=os.getpid())
