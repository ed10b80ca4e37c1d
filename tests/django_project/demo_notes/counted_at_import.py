"""A task module that queries the database as it is imported (by the service's fork server,
before it forks the workers), as a module reading a table into a constant does."""

from demo_notes.models import Note
from dispatcher.publish import task

NOTES_AT_IMPORT = Note.objects.count()


@task()
def notes_at_import() -> int:
    """How many notes there were when this module was imported."""
    return NOTES_AT_IMPORT
