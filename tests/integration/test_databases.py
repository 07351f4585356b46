"""The project's tables and queries on both databases it supports: SQLite (the demo's) and
PostgreSQL (production's: RDS, ``SNH_DB_URL=postgresql+psycopg://…``), with a real server
(`tests.integration.postgres`).

Checked on each: the tables are created (twice: every hub start creates what is missing),
every query of the identity binding and the SSH keys store, the same two writers racing for
one row (PostgreSQL answers a unique violation where SQLite's one writer at a time hides the
race), and JupyterHub's own migrations from the oldest supported release's schema (5.2.1)
to the newest's (``jupyterhub upgrade-db``, what an operator runs after upgrading the hub).
The integration hubs themselves run on PostgreSQL: the last test looks inside one's database.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import alembic.config
import jupyterhub
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from jupyterhub import dbutil

from authenticator.identities import IdentityStore, NameTaken
from operations.ssh_keys import KeyRejected, SshKeyStore, parse_public_key
from tests.integration import postgres as postgres_module
from tests.integration.harness import REPO, sign_in
from tests.integration.postgres import PostgresServer

pytestmark = pytest.mark.integration

OLDEST = REPO / ".venv" / "jupyterhub-5.2.1"
ED25519 = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICbYZbVElCKzy0DZ/pkFiAH95T3/Sv928Ds3hG+VYsn3 me@laptop"
)


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path, postgres) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.sqlite'}"
    return postgres.database(f"t_{abs(hash(str(tmp_path))) % 10**12}")


def test_a_port_taken_before_the_server_binds_it_is_tried_again(monkeypatch):
    """The harness picks a free port and PostgreSQL binds it a moment later; another test
    worker or a hub may take it in between. The server then starts on another port instead
    of failing the whole session."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        given = iter([port])
        free = postgres_module.free_port
        monkeypatch.setattr(postgres_module, "free_port", lambda: next(given, None) or free())
        server = PostgresServer.start()
        try:
            assert server.port != port
            with server.connect("postgres") as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            server.stop()


def test_the_identity_binding_on_both_databases(db_url):
    IdentityStore(db_url)  # a first hub start creates the table ...
    store = IdentityStore(db_url)  # ... the next finds it
    assert store.lookup("3400001") is None
    alice = store.resolve("3400001", "alice", "Alice")
    assert store.lookup("3400001") == alice and store.owner_of("alice") == alice
    assert store.resolve("3400001", "alice", "Alice2").synapse_user_name == "Alice2"
    with pytest.raises(NameTaken):
        store.resolve("3499999", "alice", "alice")  # someone else with the freed-up name
    assert store.unbind("alice") and not store.unbind("alice")
    assert store.lookup("3400001") is None


def test_the_ssh_keys_on_both_databases(db_url):
    SshKeyStore(db_url)
    store = SshKeyStore(db_url)
    key = parse_public_key(ED25519)
    store.add("alice", key)
    assert [k.fingerprint for k in store.keys("alice")] == [key.fingerprint]
    assert store.authorized_keys("alice") == [key.line]
    with pytest.raises(KeyRejected, match="already on your list"):
        store.add("alice", key)
    assert store.remove("alice", key.fingerprint) and not store.remove("alice", key.fingerprint)
    store.add("alice", key)
    assert store.forget("alice") == 1 and store.keys("alice") == []


def race(calls) -> list[object]:
    """Run ``calls`` at once (a barrier in each thread); their results or exceptions."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_two_accounts_racing_for_one_name_get_one_binding_and_one_refusal(db_url):
    """Two Synapse accounts with the same (lower-cased) user name sign in at the same moment.
    Both find the name free; one insert wins. The other must be told the name is taken, as
    at any other time, never fail with the database's unique violation."""
    for attempt in range(5):
        store = IdentityStore(db_url)
        name = f"sam{attempt}"
        results = race(
            [
                functools.partial(store.resolve, f"341{attempt}001", name, "Sam"),
                functools.partial(store.resolve, f"341{attempt}002", name, "sam"),
            ]
        )
        assert sorted(type(r).__name__ for r in results) == ["Binding", "NameTaken"], results
        store.engine.dispose()


def test_the_same_key_added_twice_at_once_is_refused_once(db_url):
    """Two browser tabs submit the same key at once: one is kept, the other gets the page's
    own refusal, never the database's unique violation."""
    store = SshKeyStore(db_url)
    key = parse_public_key(ED25519)
    for attempt in range(5):
        user = f"tabs{attempt}"
        results = race([functools.partial(store.add, user, key)] * 2)
        refused = [r for r in results if isinstance(r, Exception)]
        assert len(refused) == 1 and isinstance(refused[0], KeyRejected), results
        assert len(store.keys(user)) == 1


def test_jupyterhub_upgrades_the_oldest_supported_schema_on_both_databases(db_url, tmp_path):
    """An operator upgrades the hub from JupyterHub 5.2.1 and runs ``jupyterhub upgrade-db``:
    the migrations run on the production database as on SQLite, and nothing is lost."""
    if not (OLDEST / "jupyterhub").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{OLDEST} is missing: make test installs it")
        pytest.skip(f"{OLDEST} is missing: `make test` installs it")
    env = {**os.environ, "PYTHONPATH": str(OLDEST)}
    made = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from jupyterhub import orm, __version__;"
            "assert __version__ == '5.2.1', __version__;"
            "db = orm.new_session_factory(sys.argv[1])();"
            "u = orm.User(name='alice'); db.add(u); db.commit();"
            "db.add(orm.Spawner(user=u, name='')); db.commit()",
            db_url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    bin_dir = Path(sys.executable).parent  # upgrade-db runs the alembic command beside it
    upgraded = subprocess.run(
        [str(bin_dir / "jupyterhub"), "upgrade-db", f"--db={db_url}"],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        cwd=tmp_path,  # no jupyterhub_config.py there: the command's own defaults
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            users = conn.execute(sa.text("SELECT name FROM users")).scalars().all()
            columns = {c["name"] for c in sa.inspect(conn).get_columns("spawners")}
    finally:
        engine.dispose()
    config = alembic.config.Config()
    config.set_main_option("script_location", dbutil.ALEMBIC_DIR)
    assert version == ScriptDirectory.from_config(config).get_current_head()
    assert users == ["alice"]  # nothing lost
    if jupyterhub.version_info >= (6,):
        assert "display_name" in columns  # 6.0's spawners.display_name migration ran


def test_the_integration_hubs_run_on_postgresql(hub, cloud):
    """``make test`` runs every integration hub on PostgreSQL: JupyterHub's users and the
    hub's own identity table are in the hub's database on the session's server."""
    if cloud.postgres is None:
        pytest.skip("SNH_TEST_DATABASE=sqlite")
    sign_in(hub, "alice")
    database = cloud.postgres.database_for(hub.log_path.parent)  # the hub's state directory
    assert f"SNH_DB_URL={database}" not in hub.log()  # (the URL holds the password)
    name = database.rsplit("/", 1)[1]
    with cloud.postgres.connect(name) as conn:
        users = {row[0] for row in conn.execute("SELECT name FROM users")}
        bound = {row[0] for row in conn.execute("SELECT hub_username FROM synapse_identities")}
    assert "alice" in users and "alice" in bound
