"""The user data of a real-boot machine, where cloud-init finds it.

On EC2, cloud-init's EC2 data source reads the user data from the metadata service. It
recognises EC2 by the machine's DMI tables, which cloud-init does not read inside a container
(they would describe the host), so in a real-boot machine it would never ask. The local cloud
therefore hands cloud-init the same document through its NoCloud data source: the instance's
user data, byte for byte as ``DescribeInstanceAttribute`` returns it, in
``/var/lib/cloud/seed/nocloud/user-data`` of the machine's root volume, and the instance id in
``meta-data`` (cloud-init runs its once-per-instance modules again only for a new one, as on
EC2 across stops and starts). Everything after that is cloud-init's own: ``write_files``,
``runcmd``, the units the user data enables.
"""

from __future__ import annotations

from pathlib import Path

SEED = "var/lib/cloud/seed/nocloud"


def seed_user_data(upper: Path, instance_id: str, hostname: str, user_data: bytes) -> None:
    """Write the seed into a machine's root volume (before its first boot)."""
    seed = upper / SEED
    seed.mkdir(parents=True, exist_ok=True)
    (seed / "user-data").write_bytes(user_data)
    (seed / "meta-data").write_text(f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n")
