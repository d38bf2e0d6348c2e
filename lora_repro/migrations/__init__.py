"""One-off rewrites of committed records when what a config means changes (each module says what and why).

A migration never edits metrics: it makes a record's config say what its run did, which moves the
record to its new key; the old key stays findable through the record's ``previous_keys``
(``RunStore.exists``/``read``). Each is idempotent: a second call finds nothing to do.
"""
