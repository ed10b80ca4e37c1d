"""The demo project's application: notes, written by a task."""
