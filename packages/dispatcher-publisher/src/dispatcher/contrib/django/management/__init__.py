"""Django management commands of the dispatcher application."""
