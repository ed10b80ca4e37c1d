"""Integrations of the publisher SDK with frameworks, each in a package of its own.

- :mod:`dispatcher.contrib.django`: config from Django settings, publishing that joins
  Django's transactions, and the ``rundispatcher`` management command.
"""
