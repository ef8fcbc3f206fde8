"""The gateway's own screen: the status page, ``/api/status`` (what ``driftgate status``
prints), ``/healthz`` and ``/metrics``, served by the agent itself (``server``), from a
snapshot of its memory (``floor``), with logins, CSRF protection and an audit log for the
actions (``auth``, ``audit``)."""
