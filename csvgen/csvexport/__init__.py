"""The ``external-service/csv-generator`` route: from a request body to a CSV in the store.

``route`` is the I/O shell (metric requests, the store); everything else is pure:
``catalogue`` (what the Metrics API offers), ``plan`` (validation and planning),
``answers`` (bytes → records), ``combine`` (records → one sorted table),
``csvwrite`` (table → CSV bytes) and ``references`` (the entity cache).
"""
