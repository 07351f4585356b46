"""Native Python client for AWS SSM Session Manager port forwarding.

The lower layers (``messages``, ``channel``, ``smux``) are sans-I/O so that the protocol
rules can be tested with a simulated clock and network; the asyncio layers on top do the I/O.
See ``docs/ssm-tunnel.md`` for the layering.
"""
