"""pytest plugin: real PostgreSQL, Redis and S3 for the tests, as the `backing_env` fixture.

When DATABASE_URL, REDIS_URL and S3_ENDPOINT are all set, the tests use those services.
Otherwise the embedded ones run in var/test-services/ on ports of their own (never the
`make run` ones), started once and shared by the xdist workers and by any pytest process
of this checkout running at the same time (a second checkout sets SEALDROP_TEST_PORT_OFFSET):
a file lock guards them and a users file counts who holds them (pid and run id; dead pids
are dropped). The last user to leave stops them; the first to come when
nobody holds them starts them from an empty folder. Each test run gets its own database
(`sealdrop_t_<run id>`, dropped when the run's last process leaves) and its own bucket name.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

from devstack import backing as embedded
from devstack.files import write_private

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES_DIR = REPO_ROOT / "var" / "test-services"
EXTERNAL_REQUIRED = ("DATABASE_URL", "REDIS_URL", "S3_ENDPOINT")
EXTERNAL_OPTIONAL = ("S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_BUCKET", "S3_SECURE")
LOCK_TIMEOUT = 300  # seconds; starting the services takes a few, a stuck holder is a failure
SERVICE_FOLDERS = ("postgres", "valkey", "seaweedfs")


# -- pytest hooks ----------------------------------------------------------------------------

def pytest_configure(config: pytest.Config) -> None:
    """Fix the run id: xdist's (in workers), else one chosen here and handed to the workers."""
    if hasattr(config, "workerinput"):
        run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or config.workerinput["testrunuid"]
    else:
        run_id = getattr(config.option, "testrunuid", None) or secrets.token_hex(8)
        if hasattr(config.option, "testrunuid"):
            config.option.testrunuid = run_id  # xdist passes it to every worker
    config.stash[_RUN_ID] = clean_run_id(run_id)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Hold the services for this process's whole session (the controller's spans all workers)."""
    if not uses_external_services():
        _pool().attach(session.config.stash[_RUN_ID])


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Let go of the services; the last user stops them and drops its run's database."""
    if not uses_external_services():
        _pool().detach()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that reaches the backing services, so `-m "not backing"` leaves them out."""
    for item in items:
        if "backing_env" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.backing)


@pytest.fixture(scope="session")
def backing_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment variables reaching real PostgreSQL, Redis and S3 for this test run."""
    run_id = request.config.stash[_RUN_ID]
    if uses_external_services():
        return external_environment(run_id)
    return _pool().acquire(run_id)


_RUN_ID = pytest.StashKey[str]()


# -- environments ----------------------------------------------------------------------------

def uses_external_services() -> bool:
    """Whether the environment names the services to use."""
    return all(os.environ.get(name) for name in EXTERNAL_REQUIRED)


def external_environment(run_id: str) -> dict[str, str]:
    """The services named by the environment (bucket per run unless S3_BUCKET is set)."""
    env = {name: os.environ[name] for name in EXTERNAL_REQUIRED + EXTERNAL_OPTIONAL
           if os.environ.get(name)}
    env.setdefault("S3_BUCKET", bucket_name(run_id))
    return env


def database_name(run_id: str) -> str:
    """The run's own database."""
    return f"sealdrop_t_{run_id}"


def bucket_name(run_id: str) -> str:
    """The run's own bucket name (the tests create the bucket)."""
    return f"sealdrop-t-{run_id}"


def clean_run_id(run_id: str) -> str:
    # It becomes part of a database and a bucket name: lower-case letters and digits only.
    cleaned = re.sub(r"[^a-z0-9]", "", run_id.lower())[:40]
    return cleaned or secrets.token_hex(8)


# -- the shared pool -------------------------------------------------------------------------

@dataclass(frozen=True)
class ServicePool:
    """The embedded services in one folder, shared by processes through a lock and a users file."""

    folder: Path
    ports: embedded.Ports

    @property
    def lock(self) -> FileLock:
        return FileLock(str(self.folder / "services.lock"), timeout=LOCK_TIMEOUT)

    @property
    def users_file(self) -> Path:
        return self.folder / "users.json"

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    def attach(self, run_id: str) -> None:
        """Register this process as a user; leftovers nobody uses are stopped first."""
        self._make_folder()
        with self.lock:
            users = self._live_users()
            if not users:
                self._stop_and_wipe()
            users[process_key(os.getpid())] = run_id
            self._save_users(users)

    def acquire(self, run_id: str) -> dict[str, str]:
        """Make sure the services run and the run's database exists; the environment for them."""
        self._make_folder()
        with self.lock:
            users = self._live_users()
            users[process_key(os.getpid())] = run_id
            secrets_ = self._running_secrets()
            if secrets_ is None:
                secrets_ = self._start_fresh()
            embedded.ensure_database(self.ports, secrets_, database_name(run_id))
            self._save_users(users)
        env = embedded.service_environment(self.ports, secrets_, database=database_name(run_id))
        env["S3_BUCKET"] = bucket_name(run_id)
        return env

    def detach(self) -> None:
        """Unregister this process; drop databases of finished runs, stop when nobody is left."""
        if not self.folder.exists():
            return
        with self.lock:
            users = self._live_users(leaving=process_key(os.getpid()))
            if not users and embedded.running_services(self.folder):
                embedded.stop_services(self.folder)

    # Everything below runs with the lock held.

    def _live_users(self, leaving: str | None = None) -> dict[str, str]:
        """The users without dead (or leaving) processes; runs that ended lose their database."""
        users = self._read_users()
        live = {key: run for key, run in users.items() if key != leaving and process_is_alive(key)}
        finished = set(users.values()) - set(live.values())
        secrets_ = self._running_secrets() if finished else None
        for run_id in finished if secrets_ is not None else ():
            embedded.drop_database(self.ports, secrets_, database_name(run_id))
        if live != users:
            self._save_users(live)
        return live

    def _running_secrets(self) -> embedded.ServiceSecrets | None:
        if len(embedded.running_services(self.folder)) != len(SERVICE_FOLDERS):
            return None
        try:
            return embedded.ServiceSecrets.from_dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError, KeyError):
            return None

    def _start_fresh(self) -> embedded.ServiceSecrets:
        self._stop_and_wipe()
        secrets_ = embedded.ServiceSecrets.generate()
        write_private(self.state_file, json.dumps(secrets_.to_dict()))
        log.info("starting the test services in %s", self.folder)
        embedded.start_services(self.folder, self.ports, secrets_, durable=False)
        return secrets_

    def _stop_and_wipe(self) -> None:
        embedded.stop_services(self.folder)
        for name in SERVICE_FOLDERS:
            shutil.rmtree(self.folder / name, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)

    def _read_users(self) -> dict[str, str]:
        try:
            return json.loads(self.users_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save_users(self, users: dict[str, str]) -> None:
        write_private(self.users_file, json.dumps(users))

    def _make_folder(self) -> None:
        # 0711 on var/: the postgres system user (when we run as root) must traverse it.
        self.folder.parent.mkdir(mode=0o711, exist_ok=True)
        self.folder.mkdir(mode=0o711, exist_ok=True)


def _pool() -> ServicePool:
    return ServicePool(services_dir(), ports_for_tests())


def services_dir() -> Path:
    """Where the test services keep their data and pid files: one folder per port set."""
    offset = _port_offset()
    return SERVICES_DIR if offset == 0 else SERVICES_DIR.with_name(f"test-services-{offset}")


def _port_offset() -> int:
    return int(os.environ.get("SEALDROP_TEST_PORT_OFFSET", "0"))


def ports_for_tests() -> embedded.Ports:
    """The test services' ports; a second checkout on the same machine shifts them with
    SEALDROP_TEST_PORT_OFFSET (e.g. 100), so the two never meet."""
    offset = _port_offset()
    base = embedded.TEST_PORTS
    return embedded.Ports(postgres=base.postgres + offset, valkey=base.valkey + offset,
                          s3=base.s3 + offset)


def process_key(pid: int) -> str:
    """pid plus its start time, so a recycled pid is not mistaken for a live user."""
    return f"{pid}:{_start_time(pid)}"


def process_is_alive(key: str) -> bool:
    pid_text, _, started = key.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    return _start_time(pid) == started != ""


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    # fields[0] is the state (Z: a zombie is dead), fields[19] the start time in clock ticks.
    return "" if fields[0] == "Z" else fields[19]
