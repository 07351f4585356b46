"""EC2Spawner (entry point ``jupyterhub.spawners: ec2``) and the SSM tunnel (``spawner.ssm``).

Not built yet: the EC2 lifecycle arrives with the spawner issue. Until then the class exists
so the hub's configuration names its final spawner, and it refuses to start a server with a
message that says so, rather than pretending to launch an instance.

``EC2Spawner`` is imported lazily: ``spawner.ssm`` runs in processes without JupyterHub (the
``forward`` command, the local cloud's agent), which should not pay for importing the hub.
"""

from typing import Any

__all__ = ["EC2Spawner"]


def __getattr__(name: str) -> Any:
    if name == "EC2Spawner":
        from .ec2spawner import EC2Spawner

        return EC2Spawner
    raise AttributeError(f"module 'spawner' has no attribute {name!r}")
