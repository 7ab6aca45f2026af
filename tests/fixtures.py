"""Shared fixtures: settings for the real backing services, a migrated schema, fresh accounts."""
from __future__ import annotations

import base64
import dataclasses
import os
import random
import secrets
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import url as sa_url

from common import accounts
from common.config import Settings, load_settings, parse_master_keys
from common.services import Services

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_MASTER_KEYS = "t1:" + base64.b64encode(b"sealdrop-test-master-key-0000001").decode()
STRONG_PASSWORD = "Velvet-Harbor-Quince-42"


def test_environment(backing_env: dict[str, str], spool_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment a test process or server runs with (also given to subprocesses)."""
    env = {
        "APP_ENV": "test",
        **backing_env,
        "MASTER_KEYS": TEST_MASTER_KEYS,
        "SECRET_KEY": "test-secret-key-not-for-production",
        "SPOOL_DIR": str(spool_dir),
        "SPOOL_ID": "t" + backing_env.get("S3_BUCKET", "x")[-12:].replace("-", ""),
        "PUBLIC_URL": "http://127.0.0.1:5000",
        # Tests fail logins on purpose from many addresses; the defender gets its own tests.
        "DEFENDER_MAX_FAILURES": "100000",
        "MAX_SESSIONS_PER_IP": "1000",
        # Tests log in many sessions from 127.0.0.1; the per-client caps get their own tests.
        "MAX_UNAUTHENTICATED_PER_IP": "1000",
        # One process per door unless a test asks for more (tests/transfer/test_processes.py).
        "FTPS_PROCESSES": "1",
        "SFTP_PROCESSES": "1",
    }
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def spool_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spool")


@pytest.fixture(scope="session")
def test_env(backing_env, spool_dir) -> dict[str, str]:
    return test_environment(backing_env, spool_dir)


@pytest.fixture(scope="session")
def settings(test_env) -> Settings:
    return load_settings(test_env)


@pytest.fixture(scope="session")
def migrated(settings: Settings) -> None:
    """Bring the run's database to the head revision once, whichever worker comes first."""
    lock_dir = REPO_ROOT / "var" / "test-services"
    lock_dir.mkdir(parents=True, exist_ok=True)
    database = sa_url.make_url(settings.database_url).database
    with FileLock(str(lock_dir / f"migrate-{database}.lock")):
        engine = create_engine(settings.database_url)
        try:
            if "alembic_version" in inspect(engine).get_table_names():
                return
        finally:
            engine.dispose()
        migrate_database(settings)


def migrate_database(settings: Settings) -> None:
    """Apply every migration to the settings' database, in-process."""
    from flask_migrate import upgrade
    from portal import create_app
    app = create_app(settings)
    with app.app_context():
        upgrade()
    app.extensions["sealdrop"].close()


@pytest.fixture
def scratch_database(settings):
    """The URL of an empty database of the test's own, dropped afterwards."""
    url = sa_url.make_url(settings.database_url)
    name = unique_name("scratch_")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def fresh_settings(settings, scratch_database, tmp_path) -> Settings:
    """Settings for a new, migrated database and a spool of their own (for tests that change
    service-wide state, such as the master keys)."""
    fresh = dataclasses.replace(settings, database_url=scratch_database,
                                spool_id="fr" + secrets.token_hex(5), spool_dir=tmp_path / "spool")
    migrate_database(fresh)
    return fresh


@pytest.fixture
def open_services():
    """Factory of Services (closed afterwards) for settings with a given MASTER_KEYS."""
    made = []

    def make(settings: Settings, master_keys: str = TEST_MASTER_KEYS) -> Services:
        svc = Services(dataclasses.replace(settings, master_keys=parse_master_keys(master_keys)))
        svc.store.ensure_bucket()
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.close()


@pytest.fixture(scope="session")
def services(settings, migrated) -> Services:
    svc = Services(settings)
    yield svc
    svc.close()


@dataclass
class AccountInfo:
    id: int
    name: str
    admin_id: int
    admin_username: str
    password: str


def unique_name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(5)}"


@pytest.fixture
def make_account(services):
    """Factory: a fresh account (unique names) with its admin; `tier` defaults to t5."""

    def make(tier: str = "t5") -> AccountInfo:
        name, admin = unique_name("acct-"), unique_name("admin")
        with services.db.session() as session:
            account, user = accounts.create_account(
                session, services.keyring, name=name, tier=tier, admin_username=admin,
                admin_email=f"{admin}@example.test", admin_password=STRONG_PASSWORD)
            return AccountInfo(account.id, name, user.id, admin, STRONG_PASSWORD)

    return make


@pytest.fixture
def account(make_account) -> AccountInfo:
    return make_account()


@pytest.fixture
def make_user(services):
    """Factory: a fresh user in an account."""

    def make(account_info: AccountInfo, *, role: str = "user", username: str | None = None):
        username = username or unique_name("user")
        with services.db.session() as session:
            acct = session.get(accounts.Account, account_info.id)
            user = accounts.create_user(session, services.keyring, acct, username=username,
                                        email=f"{username}@example.test", password=STRONG_PASSWORD,
                                        role=role)
            return user.id, username

    return make


def assert_one_line_error(result, *fragments) -> None:
    """A CLI failure (click test runner result) is one `Error:` line and a non-zero exit."""
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def tool(name: str) -> str:
    """A third-party client the tests drive; a missing one fails the test (.ci/run installs them)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (.ci/run installs it with apt-get)")
    return path


def client_env(test_env: dict[str, str]) -> dict[str, str]:
    """A clean environment for third-party clients: throwaway HOME, no agent or client config."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
    return {**keep, **test_env}


def free_port_block(count: int) -> int:
    """A base port with `count` free ports from it (below the ephemeral range)."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no block of free ports")
