"""One model, written by the tasks."""

from django.db import models


class Note(models.Model):
    """A line of text, and the process that wrote it."""

    text = models.CharField(max_length=200, unique=True)
    written_by_pid = models.IntegerField()
