"""The embedded backing services: PostgreSQL, Valkey (Redis) and SeaweedFS (S3), on 127.0.0.1.

`start_services(data_dir, ports, secrets)` starts all three (in parallel where it can), waits
until each answers a real client, and returns the environment variables that reach them;
`stop_services(data_dir)` stops them by their recorded pids (PostgreSQL with `pg_ctl stop`).
Each service keeps its data, its pid file and its log in its own folder under `data_dir`.
SeaweedFS gets a random server-side encryption key made once per data folder (`S3_SSE=s3`
needs it); `start_object_store` starts SeaweedFS alone, with or without that key.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import pwd
import secrets as random_tokens
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from devstack import binaries

log = logging.getLogger(__name__)

POSTGRES_USER = "sealdrop"  # the database superuser role (not a system account)
POSTGRES_SYSTEM_USER = "postgres"  # as root without user namespaces, initdb/postgres run as it
LOCALHOST = "127.0.0.1"
READY_TIMEOUT = 60.0
# AF_UNIX paths are limited to 108 bytes; longer socket paths make postgres refuse to start.
MAX_SOCKET_PATH = 100
# Seconds between SIGTERM and SIGKILL. weed's graceful stop can take 15 s or more, and its
# writes are already durable when acknowledged, so it gets less patience than valkey's save.
STOP_GRACE = {"valkey": 15.0, "seaweedfs": 3.0}


class ServiceError(RuntimeError):
    """A backing service could not be started or stopped; the message names it and its log."""


@dataclass(frozen=True)
class Ports:
    """The TCP ports of one stack; SeaweedFS's companions sit just above the S3 port."""

    postgres: int
    valkey: int
    s3: int

    def seaweed(self) -> dict[str, int]:
        """Every port `weed server` binds, by flag name: all set, so two stacks never clash."""
        names = ("s3.port", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                 "filer.port", "filer.port.grpc", "s3.port.grpc")
        return {name: self.s3 + offset for offset, name in enumerate(names)}


DEV_PORTS = Ports(postgres=54320, valkey=63790, s3=8333)
# Below Linux's ephemeral range (32768-60999): a client connection that happens to get one of
# these as its local port would otherwise hold it and stop the test services from starting.
TEST_PORTS = Ports(postgres=25432, valkey=26379, s3=28333)


@dataclass(frozen=True)
class ServiceSecrets:
    """The credentials the services are started with."""

    postgres_password: str = field(repr=False)
    valkey_password: str = field(repr=False)
    s3_access_key: str = field(repr=False)
    s3_secret_key: str = field(repr=False)

    @classmethod
    def generate(cls) -> ServiceSecrets:
        """Fresh random credentials (URL- and shell-safe characters only)."""
        return cls(postgres_password=random_tokens.token_hex(24),
                   valkey_password=random_tokens.token_hex(24),
                   s3_access_key="SD" + random_tokens.token_hex(9).upper(),
                   s3_secret_key=random_tokens.token_hex(24))

    @classmethod
    def from_dict(cls, values: dict[str, str]) -> ServiceSecrets:
        """Rebuild from `to_dict()` output."""
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready mapping."""
        return asdict(self)


@dataclass(frozen=True)
class Layout:
    """Where each service keeps its data, pid file and log under one data folder."""

    root: Path

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def pgdata(self) -> Path:
        return self.postgres / "data"

    @property
    def pg_socket_dir(self) -> Path:
        return self.postgres / "run"

    @property
    def pg_log(self) -> Path:
        return self.postgres / "postgres.log"

    @property
    def valkey(self) -> Path:
        return self.root / "valkey"

    @property
    def valkey_log(self) -> Path:
        return self.valkey / "valkey.log"

    @property
    def seaweed(self) -> Path:
        return self.root / "seaweedfs"

    @property
    def seaweed_log(self) -> Path:
        return self.seaweed / "weed.log"

    @property
    def seaweed_sse_key(self) -> Path:
        return self.seaweed / "sse.key"

    def pid_file(self, service: str) -> Path:
        return self.root / service / f"{service}.pid"


# -- public API ------------------------------------------------------------------------------

def start_services(data_dir: Path, ports: Ports, secrets: ServiceSecrets, *,
                   durable: bool = True, timeout: float = READY_TIMEOUT) -> dict[str, str]:
    """Start (or restart) the services under data_dir; the env vars that reach them."""
    layout = Layout(Path(data_dir).resolve())
    layout.root.mkdir(parents=True, exist_ok=True)
    stop_services(layout.root)  # leftovers of a crashed run hold our ports and pid files
    _check_ports_free(ports)
    started: list[str] = []
    try:
        # valkey and weed start in the background while postgres initialises and starts.
        valkey = _start_valkey(layout, ports, secrets, durable=durable)
        started.append("valkey")
        weed = _start_seaweed(layout, ports, secrets)
        started.append("seaweedfs")
        _start_postgres(layout, ports, secrets, durable=durable, timeout=timeout)
        started.append("postgres")
        deadline = time.monotonic() + timeout
        _wait_ready("postgres", layout.pg_log, None, deadline,
                    lambda: _ping_postgres(ports, secrets))
        _wait_ready("valkey", layout.valkey_log, valkey, deadline,
                    lambda: _ping_valkey(ports, secrets))
        _wait_ready("seaweedfs", layout.seaweed_log, weed, deadline,
                    lambda: _ping_s3(ports, secrets))
    except BaseException:
        if started:
            stop_services(layout.root)
        raise
    return service_environment(ports, secrets)


def start_object_store(data_dir: Path, ports: Ports, secrets: ServiceSecrets, *,
                       encryption: bool = True, timeout: float = READY_TIMEOUT) -> None:
    """Start SeaweedFS alone under data_dir (without its encryption key if asked: a store that
    refuses S3_SSE=s3); stop it with `stop_services(data_dir)`."""
    layout = Layout(Path(data_dir).resolve())
    layout.root.mkdir(parents=True, exist_ok=True)
    _check_ports_free(ports, only="seaweedfs")
    try:
        weed = _start_seaweed(layout, ports, secrets, encryption=encryption)
        _wait_ready("seaweedfs", layout.seaweed_log, weed, time.monotonic() + timeout,
                    lambda: _ping_s3(ports, secrets))
    except BaseException:
        stop_services(layout.root)
        raise


def stop_services(data_dir: Path) -> None:
    """Stop whichever of the services under data_dir are running (by pid file, never by name)."""
    layout = Layout(Path(data_dir).resolve())
    errors = []
    # Signal all three first and wait afterwards, so the slow stops overlap.
    stopping = {name: _signal_by_pid_file(layout, name) for name in ("valkey", "seaweedfs")}
    try:
        _stop_postgres(layout)
    except (OSError, subprocess.SubprocessError, ServiceError) as exc:
        errors.append(f"postgres: {exc}")
    for name, pid in stopping.items():
        _finish_stop(layout, name, pid, grace=STOP_GRACE[name])
    _remove_seaweed_sockets(layout)
    if errors:
        raise ServiceError("could not stop every backing service: " + "; ".join(errors))


def running_services(data_dir: Path) -> list[str]:
    """Names of the services under data_dir whose recorded process is alive."""
    return list(running_pids(data_dir))


def running_pids(data_dir: Path) -> dict[str, int]:
    """The pid of each service under data_dir whose recorded process is alive, by name."""
    layout = Layout(Path(data_dir).resolve())
    pids = {"postgres": _postmaster_pid(layout),
            **{name: _recorded_pid(layout, name) for name in ("valkey", "seaweedfs")}}
    return {name: pid for name, pid in pids.items() if pid is not None}


def service_environment(ports: Ports, secrets: ServiceSecrets, *,
                        database: str = "postgres") -> dict[str, str]:
    """The environment variables that reach the services (DATABASE_URL names `database`)."""
    return {
        "DATABASE_URL": database_url(ports, secrets, database),
        "REDIS_URL": f"redis://:{secrets.valkey_password}@{LOCALHOST}:{ports.valkey}/0",
        "S3_ENDPOINT": f"{LOCALHOST}:{ports.s3}",
        "S3_ACCESS_KEY": secrets.s3_access_key,
        "S3_SECRET_KEY": secrets.s3_secret_key,
        "S3_SECURE": "0",
    }


def database_url(ports: Ports, secrets: ServiceSecrets, database: str) -> str:
    """The SQLAlchemy URL of one database on the embedded PostgreSQL."""
    return (f"postgresql+psycopg://{POSTGRES_USER}:{secrets.postgres_password}"
            f"@{LOCALHOST}:{ports.postgres}/{database}")


def ensure_database(ports: Ports, secrets: ServiceSecrets, name: str) -> bool:
    """Create the database unless it exists; True if it was created."""
    import psycopg
    from psycopg import sql

    with _admin_connection(ports, secrets, psycopg) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return not exists


def drop_database(ports: Ports, secrets: ServiceSecrets, name: str) -> None:
    """Drop the database if it exists, disconnecting its sessions."""
    import psycopg
    from psycopg import sql

    with _admin_connection(ports, secrets, psycopg) as conn:
        statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(statement.format(sql.Identifier(name)))


def _admin_connection(ports: Ports, secrets: ServiceSecrets, psycopg):
    return psycopg.connect(host=LOCALHOST, port=ports.postgres, user=POSTGRES_USER,
                           password=secrets.postgres_password, dbname="postgres",
                           autocommit=True, connect_timeout=5)


def _check_ports_free(ports: Ports, only: str | None = None) -> None:
    wanted = {"postgres": [ports.postgres], "valkey": [ports.valkey],
              "seaweedfs": list(ports.seaweed().values())}
    for name, numbers in wanted.items():
        if only is not None and name != only:
            continue
        for port in numbers:
            with socket.socket() as probe:
                # As the servers do: connections in TIME_WAIT must not count as "in use".
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((LOCALHOST, port))
                except OSError:
                    raise ServiceError(f"{name} cannot start: {LOCALHOST}:{port} is in use "
                                       "(another checkout's stack or test services?)") from None


# -- readiness -------------------------------------------------------------------------------

def _wait_ready(name: str, log_file: Path, process: subprocess.Popen | None, deadline: float,
                ping: Callable[[], None]) -> None:
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"{name} exited with status {process.returncode} during start-up; "
                               f"see {log_file}")
        try:
            ping()
            return
        except Exception as exc:  # any failure just means "not ready yet"
            last_error = exc
            time.sleep(0.1)
    raise ServiceError(f"{name} did not become ready in time ({type(last_error).__name__}: "
                       f"{last_error}); see {log_file}")


def _ping_postgres(ports: Ports, secrets: ServiceSecrets) -> None:
    import psycopg

    with _admin_connection(ports, secrets, psycopg) as conn:
        conn.execute("SELECT 1")


def _ping_valkey(ports: Ports, secrets: ServiceSecrets) -> None:
    import redis

    client = redis.Redis(host=LOCALHOST, port=ports.valkey, password=secrets.valkey_password,
                         socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def _ping_s3(ports: Ports, secrets: ServiceSecrets) -> None:
    import urllib3
    from minio import Minio

    # No retries: the readiness loop does the retrying, with its own deadline.
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=5), retries=False)
    try:
        Minio(f"{LOCALHOST}:{ports.s3}", access_key=secrets.s3_access_key,
              secret_key=secrets.s3_secret_key, secure=False, http_client=http).list_buckets()
    finally:
        http.clear()


# -- PostgreSQL --------------------------------------------------------------------------------

def _start_postgres(layout: Layout, ports: Ports, secrets: ServiceSecrets, *, durable: bool,
                    timeout: float) -> None:
    identity = _postgres_identity()
    for folder in (layout.postgres, layout.pg_socket_dir):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.geteuid() == 0:
        _chown_tree(layout.postgres, *identity.owner())
    if identity.account is not None:
        _check_reachable(identity, layout.postgres, binaries.postgres_bin("postgres"))
    if not (layout.pgdata / "PG_VERSION").exists():
        _init_postgres(layout, secrets, identity, durable=durable)
    command = [str(binaries.postgres_bin("pg_ctl")), "start", "--silent", "--wait",
               f"--timeout={int(timeout)}", "-D", str(layout.pgdata), "-l", str(layout.pg_log),
               "-o", _postgres_options(layout, ports, durable=durable)]
    result = _run_as(identity, command, timeout=timeout + 10)
    if result.returncode != 0:
        raise ServiceError(f"postgres did not start ({_one_line(result)}); see {layout.pg_log}")


def _init_postgres(layout: Layout, secrets: ServiceSecrets, identity: PostgresIdentity, *,
                   durable: bool) -> None:
    if layout.pgdata.exists():
        shutil.rmtree(layout.pgdata)  # a half-made cluster from an interrupted initdb
    password_file = layout.postgres / "initdb.pw"
    _write_private(password_file, secrets.postgres_password + "\n", identity.account)
    command = [str(binaries.postgres_bin("initdb")), "-D", str(layout.pgdata), "-U", POSTGRES_USER,
               f"--pwfile={password_file}", "--auth=scram-sha-256", "--encoding=UTF8",
               "--no-locale", "--no-instructions"]
    if not durable:
        command.append("--no-sync")
    try:
        result = _run_as(identity, command, timeout=120)
    finally:
        password_file.unlink(missing_ok=True)
    if result.returncode != 0:
        layout.pg_log.write_text(result.stdout + result.stderr)
        raise ServiceError(f"postgres initdb failed ({_one_line(result)}); see {layout.pg_log}")


def _postgres_options(layout: Layout, ports: Ports, *, durable: bool) -> str:
    socket_dir = str(layout.pg_socket_dir)
    if len(socket_dir) + len(f"/.s.PGSQL.{ports.postgres}") > MAX_SOCKET_PATH:
        log.warning("postgres: %s is too long for a socket path; TCP only", socket_dir)
        socket_dir = ""
    settings = {"listen_addresses": LOCALHOST, "port": str(ports.postgres),
                "unix_socket_directories": socket_dir, "unix_socket_permissions": "0700"}
    if not durable:
        # Test data is thrown away: skip the flushes that make a crash safe.
        settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
    # pg_ctl hands -o to /bin/sh, so every word is shell-quoted.
    return " ".join(f"-c {shlex.quote(f'{key}={value}')}" for key, value in settings.items())


def _stop_postgres(layout: Layout) -> None:
    if _postmaster_pid(layout) is None:
        return
    command = [str(binaries.postgres_bin("pg_ctl")), "stop", "--silent", "--wait", "--timeout=30",
               "-m", "fast", "-D", str(layout.pgdata)]
    result = _run_as(_postgres_identity(), command, timeout=40)
    if result.returncode != 0 and _postmaster_pid(layout) is not None:
        raise ServiceError(f"pg_ctl stop failed ({_one_line(result)}); see {layout.pg_log}")


def _postmaster_pid(layout: Layout) -> int | None:
    try:
        pid = int((layout.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if _is_alive(pid) else None


@dataclass(frozen=True)
class PostgresIdentity:
    """How PostgreSQL's programs run, since they refuse to run as root.

    As root they run in a user namespace in which we are `nobody`: the files stay ours, so a
    checkout inside a home folder others cannot enter (mode 0700, as /root) still works. Where
    the kernel allows no user namespace, they run as the `postgres` system account instead,
    which must then be able to reach the checkout.
    """

    wrapper: tuple[str, ...] = ()
    account: tuple[int, int] | None = None

    def owner(self) -> tuple[int, int]:
        """The (uid, gid) that must own PostgreSQL's folder."""
        return self.account if self.account is not None else (os.geteuid(), os.getegid())


@functools.lru_cache(maxsize=1)
def _postgres_identity() -> PostgresIdentity:
    if os.geteuid() != 0:
        return PostgresIdentity()
    wrapper = _user_namespace_wrapper()
    if wrapper is not None:
        return PostgresIdentity(wrapper=wrapper)
    return PostgresIdentity(account=_postgres_system_account())


def _user_namespace_wrapper() -> tuple[str, ...] | None:
    """`unshare` arguments that make us `nobody` in a user namespace, if this machine allows it."""
    unshare = shutil.which("unshare")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return None
    if unshare is None:
        return None
    wrapper = (unshare, "--user", f"--map-user={nobody.pw_uid}", f"--map-group={nobody.pw_gid}", "--")
    probe = subprocess.run([*wrapper, "true"], capture_output=True, timeout=10)
    return wrapper if probe.returncode == 0 else None


def _postgres_system_account() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                        "--shell", "/usr/sbin/nologin", POSTGRES_SYSTEM_USER],
                       check=True, capture_output=True, timeout=30)
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _check_reachable(identity: PostgresIdentity, folder: Path, binary: Path) -> None:
    probe = _run_as(identity, ["/bin/sh", "-c", 'test -x "$1" && cd "$2"', "sh",
                               str(binary), str(folder)], timeout=10)
    if probe.returncode != 0:
        raise ServiceError(f"the '{POSTGRES_SYSTEM_USER}' system user cannot reach {folder} or run "
                           f"{binary}: a parent folder lacks o+x; move the checkout or allow it")


def _run_as(identity: PostgresIdentity, command: list[str], *,
            timeout: float) -> subprocess.CompletedProcess:
    options: dict = {}
    if identity.account is not None:
        options = dict(user=identity.account[0], group=identity.account[1], extra_groups=[],
                       cwd="/")
    # A session of its own: the terminal's Ctrl-C must not reach the postmaster directly.
    return subprocess.run([*identity.wrapper, *command], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, start_new_session=True,
                          env=_plain_environment(), **options)


def _chown_tree(folder: Path, uid: int, gid: int) -> None:
    os.chown(folder, uid, gid)
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), uid, gid, follow_symlinks=False)


def _write_private(path: Path, text: str, account: tuple[int, int] | None) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    if account is not None:
        os.chown(path, *account)


# -- Valkey --------------------------------------------------------------------------------

def _start_valkey(layout: Layout, ports: Ports, secrets: ServiceSecrets, *,
                  durable: bool) -> subprocess.Popen:
    layout.valkey.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = layout.valkey / "valkey.conf"
    lines = [
        f"bind {LOCALHOST}", f"port {ports.valkey}", "protected-mode yes",
        f"requirepass {secrets.valkey_password}", f"dir {_valkey_quote(layout.valkey)}",
        "daemonize no", 'logfile ""',
    ]
    # Tests start from nothing every run; development data survives a restart.
    lines += ["appendonly yes", 'save "3600 1 300 100 60 10000"'] if durable else \
        ["appendonly no", 'save ""']
    _write_private(config, "\n".join(lines) + "\n", None)
    return _spawn("valkey", layout, [str(binaries.valkey_server()), str(config)], layout.valkey_log)


def _valkey_quote(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- SeaweedFS -------------------------------------------------------------------------------

def _start_seaweed(layout: Layout, ports: Ports, secrets: ServiceSecrets, *,
                   encryption: bool = True) -> subprocess.Popen:
    (layout.seaweed / "data").mkdir(mode=0o700, parents=True, exist_ok=True)
    identities = {"identities": [{
        "name": "sealdrop",
        "credentials": [{"accessKey": secrets.s3_access_key, "secretKey": secrets.s3_secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}
    config = layout.seaweed / "s3.json"
    _write_private(config, json.dumps(identities, indent=1), None)
    command = [str(binaries.weed()), "-logtostderr", "server", "-dir=data",
               f"-ip={LOCALHOST}", f"-ip.bind={LOCALHOST}", "-filer", "-s3",
               f"-s3.config={config}", "-s3.iam=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               "-master.telemetry=false", "-volume.max=0", "-master.volumeSizeLimitMB=1024",
               # A restart would otherwise wait 10 s for a raft election and 10 s to stop.
               "-master.electionTimeout=1s", "-volume.preStopSeconds=0"]
    command += [f"-{flag}={port}" for flag, port in ports.seaweed().items()]
    command += _seaweed_socket_options(layout, ports)
    # SSE-S3 needs a key-encryption key; weed derives one from s3.sse.key (WEED_S3_SSE_KEY).
    # It goes through the environment, never argv, so `ps` does not show it.
    extra = {"WEED_S3_SSE_KEY": _seaweed_sse_key(layout)} if encryption else {}
    return _spawn("seaweedfs", layout, command, layout.seaweed_log, extra)


def _seaweed_sse_key(layout: Layout) -> str:
    """The data folder's encryption key, made on first use and kept (0600) beside the data
    it unlocks: a new key would make every object already encrypted unreadable."""
    path = layout.seaweed_sse_key
    if not path.exists():
        _write_private(path, random_tokens.token_hex(32) + "\n", None)
    return path.read_text().strip()


def _seaweed_socket_options(layout: Layout, ports: Ports) -> list[str]:
    """Keep the filer's and gateway's local sockets in our folder (when the path fits)."""
    options = []
    for component in ("filer", "s3"):
        path = layout.seaweed / f"{component}.sock"
        if len(str(path)) <= MAX_SOCKET_PATH:
            options.append(f"-{component}.localSocket={path}")
    # The gRPC sockets are always /tmp/seaweedfs-<component>-grpc-<port>.sock: remember the
    # ports, so stopping can remove them.
    grpc = {name: port for name, port in ports.seaweed().items() if name.endswith(".grpc")}
    (layout.seaweed / "grpc-ports.json").write_text(json.dumps(grpc))
    return options


def _remove_seaweed_sockets(layout: Layout) -> None:
    try:
        grpc = json.loads((layout.seaweed / "grpc-ports.json").read_text())
    except (OSError, ValueError):
        return
    if _recorded_pid(layout, "seaweedfs") is not None:
        return
    for flag, port in grpc.items():
        component = flag.split(".", 1)[0]
        # weed puts them in Go's os.TempDir(): $TMPDIR, else /tmp.
        temp = Path(os.environ.get("TMPDIR") or "/tmp")
        path = temp / f"seaweedfs-{component}-grpc-{int(port)}.sock"
        if path.is_socket():
            path.unlink(missing_ok=True)


# -- processes by pid file -------------------------------------------------------------------

def _spawn(name: str, layout: Layout, command: list[str], log_file: Path,
           extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log_file, "ab") as log_handle:
        process = subprocess.Popen(command, cwd=layout.root / name, stdin=subprocess.DEVNULL,
                                   stdout=log_handle, stderr=subprocess.STDOUT,
                                   start_new_session=True,
                                   env={**_plain_environment(), **(extra_env or {})})
    layout.pid_file(name).write_text(f"{process.pid}\n")
    log.info("%s started (pid %s), log %s", name, process.pid, log_file)
    return process


def _recorded_pid(layout: Layout, name: str) -> int | None:
    """The pid in the service's pid file, if that process is alive and runs in its folder."""
    try:
        pid = int(layout.pid_file(name).read_text().strip())
    except (OSError, ValueError):
        return None
    if not _is_alive(pid):
        return None
    try:
        # A recycled pid belongs to some other program: ours runs in the service's folder.
        if Path(os.readlink(f"/proc/{pid}/cwd")) != layout.root / name:
            return None
    except OSError:
        return None
    return pid


def _signal_by_pid_file(layout: Layout, name: str) -> int | None:
    pid = _recorded_pid(layout, name)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
    return pid


def _finish_stop(layout: Layout, name: str, pid: int | None, *, grace: float) -> None:
    if pid is not None and not _wait_gone(pid, grace):
        log.warning("%s (pid %s) still running after %ss; killing it", name, pid, grace)
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10)
    layout.pid_file(name).unlink(missing_ok=True)


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _is_alive(pid):
            return True
        time.sleep(0.05)
    return not _is_alive(pid)


def _is_alive(pid: int) -> bool:
    try:
        # Reap it if it is our own exited child, so it does not linger as a zombie.
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _plain_environment() -> dict[str, str]:
    # The services need nothing of ours; in particular no secrets from the caller's environment.
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
    return {key: os.environ[key] for key in keep if key in os.environ}


def _one_line(result: subprocess.CompletedProcess) -> str:
    text = (result.stderr or result.stdout or "").strip().splitlines()
    return text[-1] if text else f"exit status {result.returncode}"
