"""The EC2Spawner placeholder; see the package docstring."""

from __future__ import annotations

from jupyterhub.spawner import Spawner


class NotAvailableYet(Exception):
    """Raised by :meth:`EC2Spawner.start`; JupyterHub shows its message on the spawn page."""

    jupyterhub_message = (
        "Notebook servers cannot be started yet: this hub's EC2 spawner is not installed. "
        "Signing in works; starting servers arrives with the next release."
    )


class EC2Spawner(Spawner):
    """A dedicated EC2 instance per user server (not implemented yet: starts nothing)."""

    async def start(self) -> tuple[str, int]:
        self.log.warning(
            "EC2Spawner.start called for %s: spawning is not implemented yet", self.user.name
        )
        raise NotAvailableYet(NotAvailableYet.jupyterhub_message)

    async def poll(self) -> int | None:
        # Nothing is ever started, so there is never anything running.
        return 0

    async def stop(self, now: bool = False) -> None:
        return None
