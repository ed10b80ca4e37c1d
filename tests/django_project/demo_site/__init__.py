"""A small Django project using dispatcher.contrib.django, for the integration tests."""
