"""EC2Spawner (entry point ``jupyterhub.spawners: ec2``) and the SSM tunnel (``spawner.ssm``).

``EC2Spawner`` is imported lazily: ``spawner.ssm`` also runs in processes without JupyterHub
(the ``forward`` command, the local cloud's agent), which should not pay for importing the hub.
"""

from typing import Any

__all__ = ["EC2Spawner"]


def __getattr__(name: str) -> Any:
    if name == "EC2Spawner":
        from .ec2spawner import EC2Spawner

        return EC2Spawner
    raise AttributeError(f"module 'spawner' has no attribute {name!r}")
