"""EC2Spawner (entry point ``jupyterhub.spawners: ec2``).

Not built yet: the EC2 lifecycle arrives with the spawner issue. Until then the class exists
so the hub's configuration names its final spawner, and it refuses to start a server with a
message that says so, rather than pretending to launch an instance.
"""

from .ec2spawner import EC2Spawner

__all__ = ["EC2Spawner"]
