"""Running the hub: what operators and the hub's pages use, around the spawner.

The dormancy reaper and reconciliation (batch jobs over EC2), the audit log, the Prometheus
metrics, cost estimates, the admin's server overview and the home page's notices, and the
``snh`` command line. It may import the spawner's building blocks (``spawner.naming``,
``spawner.aws``, ``spawner.poller``, ``spawner.removal``); the spawner imports only
`operations.audit` and `operations.metrics` from here, which import nothing of the spawner
but its AWS client (see ``docs/architecture.md``).
"""
