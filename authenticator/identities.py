"""The binding between Synapse's immutable ``userid`` and a JupyterHub user name.

JupyterHub names users by the Synapse ``user_name``, but a Synapse user can rename
themselves, and a freed name can later be taken by somebody else. Without a binding, a rename
would create a second hub user (with none of the first one's servers and volumes), and the
new holder of an old name would walk into the previous holder's hub account.

The rule, enforced at every login:

1. A ``userid`` seen before signs in as the hub user it was first bound to, whatever its
   current ``user_name`` (the new name is kept in ``auth_state`` and logged).
2. A new ``userid`` is bound to its normalised ``user_name`` if no other ``userid`` holds it.
3. A new ``userid`` whose name is bound to another ``userid`` is refused; an admin resolves it
   (e.g. by renaming or deleting the old hub user and running ``unbind``).

The table lives in its own database (SQLite file by default; point ``identity_db_url`` at the
hub's PostgreSQL in production) because JupyterHub's schema is not ours to extend.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

metadata = sa.MetaData()
identities = sa.Table(
    "synapse_identities",
    metadata,
    sa.Column("userid", sa.String(32), primary_key=True),
    sa.Column("hub_username", sa.String(255), nullable=False, unique=True),
    sa.Column("synapse_user_name", sa.String(255), nullable=False),
    sa.Column("first_seen", sa.DateTime, nullable=False),
    sa.Column("last_seen", sa.DateTime, nullable=False),
)


@dataclass(frozen=True)
class Binding:
    userid: str
    hub_username: str
    synapse_user_name: str


class NameTaken(Exception):
    """The hub name is bound to a different Synapse account."""

    def __init__(self, hub_username: str, owner_userid: str) -> None:
        super().__init__(f"hub user {hub_username!r} is bound to Synapse user {owner_userid}")
        self.hub_username = hub_username
        self.owner_userid = owner_userid


class IdentityStore:
    """A tiny table with one row per Synapse account that ever signed in.

    Calls are short single-row statements on a local database, like JupyterHub's own ORM
    calls on its event loop.
    """

    def __init__(self, url: str) -> None:
        connect_args = {"check_same_thread": False} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=connect_args, future=True)
        metadata.create_all(self.engine)

    def lookup(self, userid: str) -> Binding | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(identities).where(identities.c.userid == userid)
            ).one_or_none()
        return Binding(row.userid, row.hub_username, row.synapse_user_name) if row else None

    def owner_of(self, hub_username: str) -> Binding | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(identities).where(identities.c.hub_username == hub_username)
            ).one_or_none()
        return Binding(row.userid, row.hub_username, row.synapse_user_name) if row else None

    def resolve(self, userid: str, wanted_name: str, synapse_user_name: str) -> Binding:
        """Apply the binding rule; returns the binding to use or raises :class:`NameTaken`.

        Two sign-ins of one name at the same moment (two accounts whose names differ only in
        case, or one account in two tabs) reaching two processes on one database (the hub and
        an operator's command, or hubs sharing one database) both find it free and both
        insert; the database's unique constraint lets one win. The other looks again and gets
        the rule's answer for what is now there (`NameTaken`, or its own binding), never the
        unique violation."""
        try:
            return self._resolve(userid, wanted_name, synapse_user_name)
        except sa.exc.IntegrityError:
            return self._resolve(userid, wanted_name, synapse_user_name)

    def _resolve(self, userid: str, wanted_name: str, synapse_user_name: str) -> Binding:
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(identities).where(identities.c.userid == userid)
            ).one_or_none()
            if row is not None:
                conn.execute(
                    identities.update()
                    .where(identities.c.userid == userid)
                    .values(synapse_user_name=synapse_user_name, last_seen=now)
                )
                return Binding(userid, row.hub_username, synapse_user_name)
            holder = conn.execute(
                sa.select(identities).where(identities.c.hub_username == wanted_name)
            ).one_or_none()
            if holder is not None:
                raise NameTaken(wanted_name, holder.userid)
            conn.execute(
                identities.insert().values(
                    userid=userid,
                    hub_username=wanted_name,
                    synapse_user_name=synapse_user_name,
                    first_seen=now,
                    last_seen=now,
                )
            )
        return Binding(userid, wanted_name, synapse_user_name)

    def unbind(self, hub_username: str) -> bool:
        """Forget the binding of a hub name (after an admin removed or renamed that user)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                identities.delete().where(identities.c.hub_username == hub_username)
            )
        return result.rowcount > 0
