"""The durable ``pg_queue`` broker: jobs as rows of a PostgreSQL table, shared by many hosts.

- :mod:`.broker`: the broker (its factory, ``create``) and the start-up check of the tables;
- :mod:`.migrations`: the versioned migrations that create and upgrade the tables;
- :mod:`.sql`: every statement it runs; :mod:`.outcomes`: how outcomes map to row changes;
- :mod:`.claims`, :mod:`.leases`, :mod:`.acks`, :mod:`.upkeep`, :mod:`.wakeup`: claiming,
  renewing, acknowledging, sweeping and purging, waking up;
- :mod:`.database`: the working connection they share;
- :mod:`.sampler`: the queues' depth for the metrics endpoint (started by the service).

Nothing is imported here, so that ``dispatcherctl migrate`` loads only the migrations.
"""
