"""The ``pg_notify`` broker: PostgreSQL LISTEN/NOTIFY, one listening connection per service.

- :mod:`.broker`: the broker (its factory, ``create``): listening, reconnecting, replying;
- :mod:`.drain`: reading the notifications straight from libpq, and delivering them;
- :mod:`.self_check`: the NOTIFY round trip that checks the connection, and what it logs;
- :mod:`.outbox`: the control replies waiting to go out on the listening connection.

Its connections are opened by :mod:`dispatcher.server.brokers.pg_connections`.
"""
