"""The AWS side of the local cloud: moto, and the pieces of the AWS front that stands before it.

- ``moto_server``: moto in server mode, and what moto 5 does (and does not do) for this hub;
- ``wire``: reading a request's service, action and parameters; errors in each protocol's
  own wire format;
- ``faults``: "the next N calls of X fail with code C" rules;
- ``calls``: the log of calls the front has seen, for tests and benchmarks;
- ``idempotency``: ``ClientToken`` on RunInstances, which moto ignores;
- ``corrections``: the few moto errors that differ from AWS's, rewritten to AWS's;
- ``control``: the front's ``/_control/`` routes.

The front itself is ``localcloud.aws.front``.
"""
