"""Ending a person's access to the hub at once, when Synapse says they left every team.

Community managers add and remove people by editing a Synapse team and expect that to be the
whole access story. Refusing the next sign-in is not enough: a JupyterHub API token keeps a
user (the hub keeps a token request's stale session when a refresh fails), a running notebook
stays reachable through its own OAuth cookie and its data-access role keeps working, and an
admin keeps admin rights on tokens. `end_access` takes away every one of those doors in one
step: servers stopped (disks kept: stop is not delete), API and OAuth tokens and pending OAuth
codes deleted, browser sessions ended (a new ``cookie_id`` invalidates every login cookie),
group memberships (the roles they carry) and the admin flag and role dropped. Revoking the
Synapse tokens and clearing ``auth_state`` is the authenticator's part (it holds the client
credentials); see ``SynapseOAuthenticator._end_access``.

Works on the `jupyterhub.user.User` of JupyterHub 5.2 and 6.x.
"""

from __future__ import annotations

import logging
from typing import Any

from jupyterhub import orm, roles
from jupyterhub.utils import new_token

log = logging.getLogger(__name__)


async def end_access(user: Any, handler: Any = None) -> list[str]:
    """Stop the user's servers and take away every credential the hub issued them.

    ``handler`` (a JupyterHub request handler, when there is one) stops servers the way the
    hub's own stop does, proxy route first; without one the proxy is taken from the user's
    settings. Returns what was done, for the audit line. Never raises for one failed step:
    each step is independent, and a failed one is logged and named in the result.
    """
    done: list[str] = []
    db = user.db
    orm_user = user.orm_user
    # Credentials first: from this moment no request can act as the user.
    tokens = list(orm_user.api_tokens)
    for token in tokens:
        db.delete(token)
    # Authorization codes not yet exchanged (a notebook's OAuth sign-in in flight) would
    # otherwise still become a token.
    codes = db.query(orm.OAuthCode).filter_by(user_id=orm_user.id).delete()
    orm_user.cookie_id = new_token()  # every login cookie of the user stops matching
    # Groups give roles (the operators' group) and pick the culler that watches a server;
    # the user is in no team now, so in no group (a new sign-in sets them from the teams).
    groups = [group.name for group in orm_user.groups]
    orm_user.groups = []
    if orm_user.admin or any(role.name == "admin" for role in orm_user.roles):
        orm_user.admin = False
        roles.assign_default_roles(db, entity=orm_user)  # drops the admin role with the flag
        done.append("admin removed")
    db.commit()
    done.append(
        f"{len(tokens)} API/OAuth tokens and {codes} OAuth codes deleted, browser sessions "
        f"ended, groups left: {', '.join(groups) or 'none'}"
    )

    for name, spawner in list(user.spawners.items()):
        label = f"server {name!r}" if name else "default server"
        if spawner.pending:
            # A start or stop in flight finishes on its own; a start re-reads the (now
            # cleared) auth state for the user's communities and is refused there.
            done.append(f"{label} {spawner.pending} in progress, left to finish")
            continue
        if not spawner.active:
            continue
        try:
            if handler is not None and hasattr(handler, "stop_single_user"):
                await handler.stop_single_user(user, name)
            else:
                # As the hub's own stop does: pending from before the route goes, so that no
                # request starts the server in between (User.stop clears it at its end).
                spawner._stop_pending = True
                proxy = user.settings.get("proxy")
                try:
                    if proxy is not None:
                        await proxy.delete_user(user, name)
                except Exception:
                    spawner._stop_pending = False
                    raise
                await user.stop(name)
            done.append(f"{label} stopped")
        except Exception as exc:
            log.exception("could not stop %s of %s", label, user.name)
            done.append(f"{label} NOT stopped: {exc}")
    return done
