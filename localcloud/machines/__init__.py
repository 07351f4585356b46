"""Real-boot machines for the local cloud (issue 16): Debian machines booted with
systemd-nspawn, one per instance, over one cached root file system.

- ``rootfs``: the shared root file system, built with debootstrap once per spec and cached;
- ``machine``: one instance's machine (its overlay root, boot, poweroff, commands inside, its
  console);
- ``imds``: the instance metadata service (IMDSv2) of one machine;
- ``links``: the machine's only ways out (Unix sockets bound in, turned back into the
  addresses instance software expects: 169.254.169.254 for the metadata service, HTTPS at
  AWS's own names for the AWS endpoints);
- ``tls``: the local cloud's certificate authority, trusted inside machines only;
- ``seed``: the instance's user data, where the machine's cloud-init reads it;
- ``agent``, ``agent_inside``: the SSM agent's dials into the machine's ports, from a unit
  inside that connects out (the host's end and the machine's).
"""
