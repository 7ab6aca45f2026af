"""SFTP and FTPS throughput and server memory: our servers against OpenSSH and vsftpd.

Run from the repository root, as root (vsftpd logs in a throwaway local user; the Debian
packages are installed with apt-get when missing):

    .venv/bin/python bench/transfer.py [--size-mib 256] [--quick] [--rounds 3] [--profile]
                                       [--append-docs]

In one run, on one random file, with the same client and the same cipher on both sides:

- SFTP: `python -m transfer.sftp` against OpenSSH's sshd (`Subsystem sftp internal-sftp`),
  both driven by OpenSSH `sftp -b` with `-c aes256-gcm@openssh.com` (put, then get);
- FTPS: `python -m transfer.ftps` against vsftpd with TLS, both driven by
  `curl --ssl-reqd -k` (`-T` to upload, `-o` to download);
- memory: the peak RSS (VmHWM; reset through /proc/PID/clear_refs before the download) of a
  fresh process of each of our servers taking a small file up and down, and of another taking
  the full-size file, to show that it does not grow with the file;
- CPU time of each server and client per round, and (--profile, with py-spy installed) where
  our servers spend theirs;
- every download is compared with the source by SHA-256; a mismatch fails the run.

Everything listens on 127.0.0.1 on ports from --port-base (47100 by default) upwards: the
embedded PostgreSQL, Valkey and SeaweedFS (started with devstack.backing, data in a
temporary folder), our two servers, sshd and vsftpd. Everything started is stopped at the
end, on errors too, and the temporary folder and the throwaway user are removed.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import os
import platform
import pwd
import re
import resource
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import paramiko  # noqa: E402
import pyftpdlib  # noqa: E402

from devstack import backing  # noqa: E402
from devstack.keys import ensure_ssh_host_key, ensure_tls_certificate  # noqa: E402

MIB = 1024 * 1024
HOST = "127.0.0.1"
CIPHER = "aes256-gcm@openssh.com"
BENCH_USER = "sdbench"  # the throwaway local user vsftpd logs in
BENCH_USER_MARK = "sealdrop transfer benchmark (throwaway)"
CLIENT_TIMEOUT = 900
DOCS = REPO_ROOT / "docs" / "benchmarks.md"
DOCS_SECTION = "## File transfer: our SFTP and FTPS servers against OpenSSH and vsftpd (`bench/transfer.py`)"
PLOT = DOCS.with_name("benchmarks-transfer.png")
DEFAULT_PORT_BASE = 47100


# -- small helpers ---------------------------------------------------------------------------

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", CLIENT_TIMEOUT)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(command, **kwargs)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def make_random_file(path: Path, size: int) -> str:
    """size random bytes, written a piece at a time; their SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        left = size
        while left:
            piece = os.urandom(min(left, 4 * MIB))
            digest.update(piece)
            handle.write(piece)
            left -= len(piece)
    return digest.hexdigest()


def disk_write_seconds(source: Path, folder: Path) -> tuple[float, float]:
    """Seconds to copy source into folder through the page cache, then to fsync it (our spool
    fsyncs an upload before acknowledging it; OpenSSH and vsftpd do not)."""
    target = folder / "disk-check.bin"
    try:
        started = time.monotonic()
        with open(source, "rb") as reader, open(target, "wb") as writer:
            while block := reader.read(4 * MIB):
                writer.write(block)
            writer.flush()
            written = time.monotonic()
            os.fsync(writer.fileno())
            synced = time.monotonic()
    finally:
        target.unlink(missing_ok=True)
    return written - started, synced - written


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def wait_ports_free(ports: list[int], patience: float = 75) -> None:
    """Wait for the ports to be free: a previous run's connections linger in TIME_WAIT for a
    minute, which blocks binding their ports again."""
    deadline = time.monotonic() + patience
    while busy := [p for p in ports if not port_is_free(p)]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"ports in use: {busy[:10]}; choose another --port-base")
        log(f"ports {busy[:5]} are busy (TIME_WAIT of an earlier run?); waiting")
        time.sleep(5)


def wait_listening(port: int, process: subprocess.Popen, name: str, log_file: Path,
                   timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}; see its log:\n"
                               + tail(log_file))
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on {port} within {timeout:.0f} s:\n" + tail(log_file))


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def client_env(home: Path) -> dict[str, str]:
    """A clean environment for the clients: throwaway HOME, no agent, no client config."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
    return {**keep, "HOME": str(home)}


# -- processes we start ----------------------------------------------------------------------

@dataclasses.dataclass
class Started:
    name: str
    process: subprocess.Popen
    log_file: Path


class Processes:
    """The servers this run started, each in a session of its own; stopped by process group."""

    def __init__(self):
        self.started: list[Started] = []

    def spawn(self, name: str, command: list[str], log_file: Path, **kwargs) -> Started:
        with open(log_file, "ab") as handle:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle,
                                       stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        item = Started(name, process, log_file)
        self.started.append(item)
        return item

    def start_listening(self, name: str, command: list[str], log_file: Path, port: int,
                        attempts: int = 6, **kwargs) -> Started:
        """Spawn a server and wait until it listens on port.  Our ports lie in Linux's
        ephemeral range, so a client connection of any process (ours to PostgreSQL included)
        may hold one for a moment: a server that exits at once is started again."""
        for attempt in range(1, attempts + 1):
            wait_ports_free([port])
            item = self.spawn(name, command, log_file, **kwargs)
            try:
                wait_listening(port, item.process, name, log_file)
                return item
            except RuntimeError:
                if item.process.poll() is None or attempt == attempts:
                    raise
                self.started.remove(item)
                log(f"{name} exited at start (port {port} taken for a moment?); starting it again")
                time.sleep(2)
        raise AssertionError("unreachable")

    def stop_all(self) -> None:
        for item in reversed(self.started):
            self._stop(item)
        self.started.clear()

    def stop(self, item: Started) -> None:
        self._stop(item)
        self.started.remove(item)

    @staticmethod
    def _stop(item: Started) -> None:
        pgid = item.process.pid  # start_new_session: the group is the process's own
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            item.process.wait(15)
        except subprocess.TimeoutExpired:
            log(f"{item.name} did not stop on SIGTERM; killing its process group")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            item.process.wait(10)
        # Session children (sshd's per-connection processes, vsftpd's) share the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


# -- memory sampling -------------------------------------------------------------------------

def read_status(pid: int, field: str) -> int:
    """A kB field of /proc/PID/status, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its reaped children (sshd's and vsftpd's per-session
    processes are reaped by the listener when the session ends)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # fields[11:15] are utime, stime, cutime, cstime (man 5 proc, fields 14-17).
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")


class TreeSampler:
    """The largest summed RSS of a process and its descendants, sampled every 20 ms."""

    def __init__(self, pid: int):
        import psutil
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil
        while not self._stop.is_set():
            total = 0
            try:
                for proc in [self.root, *self.root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += proc.memory_info().rss
            except psutil.Error:
                pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.02)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU time of processes, their live descendants and every child they reaped."""
    import psutil
    seen, total = set(), 0.0
    for root in roots:
        with contextlib.suppress(psutil.Error):
            top = psutil.Process(root)
            for proc in [top, *top.children(recursive=True)]:
                if proc.pid in seen:
                    continue
                seen.add(proc.pid)
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system + times.children_user + times.children_system
    return total


def service_roots(services_dir: Path) -> list[int]:
    """The PostgreSQL, Valkey and SeaweedFS processes started under services_dir."""
    import psutil
    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(str(services_dir) in part for part in (proc.info["cmdline"] or [])):
            roots.append(proc.info["pid"])
    return roots


class Ingest:
    """Waits, by the database, until the worker has moved every upload to the object store."""

    def __init__(self, env: dict[str, str], spool: Path):
        self.url = env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        self.ready = spool / "ready"

    def pending(self) -> int:
        import psycopg
        with psycopg.connect(self.url) as connection:
            failed, spooled = connection.execute(
                "select count(*) filter (where state = 'failed'), count(*) filter (where state = 'spooled') "
                "from file_versions").fetchone()
        if failed:
            raise RuntimeError(f"{failed} upload(s) failed ingest: see worker.log")
        return spooled

    def wait(self, patience: float = 600) -> float:
        """Seconds until nothing is spooled (versions stored, spool's ready/ empty)."""
        started = time.monotonic()
        while self.pending() or any(self.ready.iterdir()):
            if time.monotonic() - started > patience:
                raise RuntimeError("ingest did not finish in time: see worker.log")
            time.sleep(0.05)
        return time.monotonic() - started


# -- profiling (optional: py-spy, not a project requirement) ----------------------------------

class Profiler:
    """py-spy sampling a server while a transfer runs (--profile); collapsed stacks to a file."""

    def __init__(self, pid: int, out: Path, enabled: bool = True):
        self.pid, self.out, self.enabled = pid, out, enabled
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Profiler:
        if self.enabled:
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            if not Path(spy).exists():
                raise RuntimeError("--profile needs py-spy (pip install py-spy into the venv)")
            self.process = subprocess.Popen(
                [spy, "record", "--pid", str(self.pid), "--rate", "200", "--format", "raw",
                 "--output", str(self.out), "--nonblocking", "--threads"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def summary(self, top: int = 10) -> str:
        """Busy samples by layer (the innermost frame that belongs to one) and by function."""
        own: dict[str, int] = {}
        layers: dict[str, int] = {}
        total = 0
        for line in self.out.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = stack.split(";")[1:]  # the first names the thread
            total += count
            if frames:
                leaf = short_frame(frames[-1])
                own[leaf] = own.get(leaf, 0) + count
            layer = next((name for frame in reversed(frames) if (name := layer_of(frame))), "other")
            layers[layer] = layers.get(layer, 0) + count
        if not total:
            return "(no samples)\n"
        lines = [f"{total} busy samples (py-spy, 200 Hz, every thread) by layer:", ""]
        lines += [f"- {share(n, total)} {name}"
                  for name, n in sorted(layers.items(), key=lambda kv: -kv[1])]
        lines += ["", "Functions with the most own time (native code counts for the Python function "
                  "that called it):", ""]
        lines += [f"- {share(n, total)} `{name}`" for name, n in
                  sorted(own.items(), key=lambda kv: -kv[1])[:top]]
        return "\n".join(lines) + "\n"


# Which layer a frame belongs to, by the module path py-spy prints (first match wins).
LAYERS = (
    (("common/cipherstream.py", "common/content.py", "common/storage.py", "concurrent/futures/"),
     "content encryption + SHA-256/MD5 fingerprints, spool writes "
     "(ours; the hashes' worker thread included)"),
    (("argon2/", "common/passwords.py", "common/auth.py"), "login (argon2id)"),
    (("common/vfs.py", "common/audit.py", "common/db.py", "common/jobs/", "common/purging.py",
      "sqlalchemy/", "psycopg/", "redis/", "rq/"), "database, audit and queue (open, commit)"),
    (("paramiko/packet.py", "paramiko/transport.py", "paramiko/channel.py", "paramiko/buffered_pipe.py",
      "paramiko/message.py", "paramiko/pipe.py"),
     "SSH transport: packet framing, AES-GCM, socket, channel pipe between threads (paramiko)"),
    (("paramiko/sftp", "transfer/sftp/", "paramiko/server.py"),
     "SFTP request loop (paramiko's SFTPServer and our handles)"),
    (("OpenSSL/",), "TLS records: pyOpenSSL send/recv (AES-GCM, socket)"),
    (("pyftpdlib/", "transfer/ftps/"), "FTP data channel loop (pyftpdlib, our handlers)"),
)


def short_frame(frame: str) -> str:
    """`function (path/to/module.py:12)` -> `module.py:function`."""
    match = re.match(r"(.*) \((.*?):\d+\)$", frame.strip())
    if not match:
        return frame.strip()
    function, path = match.groups()
    return f"{Path(path).name}:{function}"


def share(n: int, total: int) -> str:
    return f"{100 * n / total:4.1f} %"


def layer_of(frame: str) -> str | None:
    match = re.search(r"\(([^()]*):\d+\)$", frame.strip())
    if not match:
        return None
    path = match.group(1)
    for prefixes, name in LAYERS:
        if any(prefix in path for prefix in prefixes):
            return name
    return None


# -- our stack -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PortPlan:
    base: int

    @property
    def backing(self) -> backing.Ports:
        return backing.Ports(postgres=self.base, valkey=self.base + 1, s3=self.base + 10)

    @property
    def our_sftp(self) -> int:
        return self.base + 20

    @property
    def our_ftps(self) -> int:
        return self.base + 21

    @property
    def sshd(self) -> int:
        return self.base + 22

    @property
    def vsftpd(self) -> int:
        return self.base + 23

    def memory_server(self, index: int) -> int:
        """Ports of the fresh servers of the memory runs (one per protocol and size)."""
        return self.base + 24 + index

    @property
    def our_passive(self) -> range:
        return range(self.base + 30, self.base + 40)

    @property
    def vsftpd_passive(self) -> range:
        return range(self.base + 40, self.base + 50)

    def listeners(self) -> list[int]:
        """The fixed listening ports (the passive ranges are checked by the servers themselves:
        they pick a free port of the range, and other programs' short-lived client
        connections may sit in TIME_WAIT on one of them)."""
        return [self.backing.postgres, self.backing.valkey, *self.backing.seaweed().values(),
                self.our_sftp, self.our_ftps, self.sshd, self.vsftpd,
                *(self.memory_server(i) for i in range(6))]


def our_environment(service_env: dict[str, str], work: Path, ports: PortPlan,
                    master_keys: str) -> dict[str, str]:
    """The servers' environment, built like tests/fixtures.test_environment."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")}
    return {
        **keep,
        "APP_ENV": "test",
        **service_env,
        "S3_BUCKET": "sealdrop-bench",
        "MASTER_KEYS": master_keys,
        "SECRET_KEY": secrets.token_hex(24),
        "SPOOL_DIR": str(work / "spool"),
        "SPOOL_ID": "bench",
        "INGEST_MODE": "worker",
        "PUBLIC_URL": "http://127.0.0.1:5000",
        "SFTP_PORT": str(ports.our_sftp),
        "SFTP_HOST_KEY_FILE": str(work / "our-ssh" / "host_ed25519_key"),
        "FTPS_PORT": str(ports.our_ftps),
        "FTPS_PASSIVE_PORTS": f"{ports.our_passive.start}-{ports.our_passive.stop - 1}",
        "TLS_CERT_FILE": str(work / "tls" / "cert.pem"),
        "TLS_KEY_FILE": str(work / "tls" / "key.pem"),
    }


def start_backing_services(work: Path, services_dir: Path, ports: PortPlan) -> dict[str, str]:
    """PostgreSQL, Valkey and SeaweedFS with data under services_dir, a TLS certificate, an SSH
    host key and master keys in work: the environment our processes run with."""
    log("starting PostgreSQL, Valkey and SeaweedFS")
    service_env = backing.start_services(services_dir, ports.backing,
                                         backing.ServiceSecrets.generate(), durable=False)
    (work / "tls").mkdir()
    ensure_tls_certificate(work / "tls" / "cert.pem", work / "tls" / "key.pem")
    (work / "our-ssh").mkdir(mode=0o700)
    ensure_ssh_host_key(work / "our-ssh" / "host_ed25519_key")
    master_keys = "b1:" + base64.b64encode(secrets.token_bytes(32)).decode()
    return our_environment(service_env, work, ports, master_keys)


def prepare_our_database(env: dict[str, str], username: str, password: str) -> None:
    """Migrate the database and create an account, as tests/fixtures.py does."""
    from flask_migrate import upgrade

    from common import accounts
    from common.config import load_settings
    from common.services import Services
    from portal import create_app

    settings = load_settings(env)
    app = create_app(settings)
    with app.app_context():
        upgrade()
    app.extensions["sealdrop"].close()
    services = Services(settings)
    try:
        services.store.ensure_bucket()
        with services.db.session() as session:
            accounts.create_account(session, services.keyring, name="bench", tier="t5",
                                    admin_username=username, admin_email=f"{username}@example.test",
                                    admin_password=password)
    finally:
        services.close()


# -- OpenSSH's sshd and vsftpd ---------------------------------------------------------------

def ensure_packages() -> None:
    missing = [pkg for pkg, binary in (("openssh-server", "/usr/sbin/sshd"), ("vsftpd", "/usr/sbin/vsftpd"),
                                       ("openssh-client", "/usr/bin/sftp"), ("curl", "/usr/bin/curl"),
                                       ("sshpass", "/usr/bin/sshpass"))
               if not Path(binary).exists()]
    if not missing:
        return
    log(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)
    if result.returncode != 0:
        run(["apt-get", "update"], env=env)
        result = run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)
    if result.returncode != 0:
        raise RuntimeError(f"apt-get install {' '.join(missing)} failed: {result.stderr.strip()[-400:]}")


def write_sshd_config(folder: Path, port: int, user: str) -> Path:
    folder.mkdir(mode=0o700)
    host_key = folder / "ssh_host_ed25519_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    client_key = folder / "client_ed25519_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key)], check=True)
    authorized = folder / "authorized_keys"
    shutil.copy(str(client_key) + ".pub", authorized)
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        f"ListenAddress {HOST}",
        f"HostKey {host_key}",
        f"PidFile {folder / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}",
        "StrictModes no",  # the key files sit in our temporary folder
        f"AllowUsers {user}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "PrintMotd no",
        f"Ciphers {CIPHER}",
        "Subsystem sftp internal-sftp",
        "",
    ]))
    return config


def write_vsftpd_config(folder: Path, port: int, passive: range, home: Path, tls: Path,
                        reuse: bool) -> Path:
    folder.mkdir(mode=0o700)
    config = folder / "vsftpd.conf"
    config.write_text("\n".join([
        "listen=YES",
        "listen_ipv6=NO",
        f"listen_address={HOST}",
        f"listen_port={port}",
        "background=NO",
        "anonymous_enable=NO",
        "local_enable=YES",
        "write_enable=YES",
        "local_umask=077",
        f"local_root={home}",
        "userlist_enable=NO",
        "pam_service_name=vsftpd",
        "ssl_enable=YES",
        "allow_anon_ssl=NO",
        "force_local_data_ssl=YES",
        "force_local_logins_ssl=YES",
        "ssl_tlsv1=YES",
        "ssl_sslv2=NO",
        "ssl_sslv3=NO",
        f"require_ssl_reuse={'YES' if reuse else 'NO'}",
        "ssl_ciphers=HIGH",
        f"rsa_cert_file={tls / 'cert.pem'}",
        f"rsa_private_key_file={tls / 'key.pem'}",
        "pasv_enable=YES",
        f"pasv_address={HOST}",
        f"pasv_min_port={passive.start}",
        f"pasv_max_port={passive.stop - 1}",
        "connect_from_port_20=NO",
        "xferlog_enable=NO",
        "dirmessage_enable=NO",
        "seccomp_sandbox=NO",  # containers refuse the sandbox's syscalls
        "isolate=NO",
        "isolate_network=NO",
        "secure_chroot_dir=/var/run/vsftpd/empty",
        "",
    ]))
    return config


@contextlib.contextmanager
def throwaway_user(home: Path):
    """A local user with a random password for vsftpd; deleted afterwards."""
    password = secrets.token_urlsafe(18)
    try:
        existing = pwd.getpwnam(BENCH_USER)
    except KeyError:
        existing = None
    if existing is not None and existing.pw_gecos != BENCH_USER_MARK:
        raise RuntimeError(f"a local user {BENCH_USER!r} exists and is not ours; not touching it")
    if existing is None:
        run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh",
             "--comment", BENCH_USER_MARK, BENCH_USER], check=True)
    try:
        run(["usermod", "--home", str(home), BENCH_USER], check=True)
        run(["chpasswd"], input=f"{BENCH_USER}:{password}\n", check=True)
        entry = pwd.getpwnam(BENCH_USER)
        home.mkdir(mode=0o700)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        yield BENCH_USER, password
    finally:
        result = run(["userdel", BENCH_USER])
        if result.returncode != 0:
            log(f"userdel {BENCH_USER} failed: {result.stderr.strip()}")


@contextlib.contextmanager
def privsep_dir():
    """sshd started as root wants /run/sshd; made (and removed again) if missing."""
    path = Path("/run/sshd")
    made = False
    if os.geteuid() == 0 and not path.exists():
        path.mkdir(mode=0o755)
        made = True
    try:
        yield
    finally:
        if made:
            with contextlib.suppress(OSError):
                path.rmdir()


# -- the clients -----------------------------------------------------------------------------

@dataclasses.dataclass
class Transfer:
    seconds: float
    size: int
    detail: str = ""

    @property
    def mib_s(self) -> float:
        return self.size / MIB / self.seconds

    @property
    def mb_s(self) -> float:
        return self.size / 1e6 / self.seconds


SSH_COMMON = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
              "-o", "IdentityAgent=none", "-o", "ConnectTimeout=20", "-o", "NumberOfPasswordPrompts=1",
              "-o", "Compression=no", "-c", CIPHER]


class SftpTarget:
    """One SFTP server and how OpenSSH's sftp logs in to it."""

    def __init__(self, name: str, port: int, user: str, remote_dir: str, work: Path,
                 *, password: str | None = None, key: Path | None = None):
        self.name, self.port, self.user, self.remote_dir = name, port, user, remote_dir
        self.work, self.password, self.key = work, password, key

    def command(self, batch: Path) -> tuple[list[str], dict[str, str]]:
        env = client_env(self.work / "client-home")
        if self.password is not None:
            env["SSHPASS"] = self.password
            command = ["sshpass", "-e", "sftp", *SSH_COMMON, "-o", "BatchMode=no",
                       "-o", "PubkeyAuthentication=no",
                       "-o", "PreferredAuthentications=password,keyboard-interactive"]
        else:
            command = ["sftp", *SSH_COMMON, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                       "-o", "PreferredAuthentications=publickey", "-i", str(self.key)]
        return command + ["-v", "-P", str(self.port), "-b", str(batch), f"{self.user}@{HOST}"], env

    def put_get(self, local: Path, remote_name: str, back: Path) -> tuple[Transfer, Transfer]:
        """One session: put, then get; each timed between local `date` stamps in the batch."""
        stamps = self.work / "stamps.txt"
        stamps.unlink(missing_ok=True)
        remote = f"{self.remote_dir.rstrip('/')}/{remote_name}"
        stamp = f"!date +%s.%N >> {stamps}"
        batch = self.work / "batch.txt"
        batch.write_text(f"{stamp}\nput {local} {remote}\n{stamp}\nget {remote} {back}\n{stamp}\n")
        command, env = self.command(batch)
        result = run(command, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"sftp to {self.name} failed ({result.returncode}): "
                               f"{result.stderr.strip()[-800:]}")
        ciphers = set(re.findall(r"kex: \S+->\S+ cipher: (\S+)", result.stderr))
        if ciphers != {CIPHER}:
            raise RuntimeError(f"sftp to {self.name} negotiated {ciphers}, not {CIPHER}")
        t0, t1, t2 = (float(x) for x in stamps.read_text().split())
        size = local.stat().st_size
        return Transfer(t1 - t0, size, CIPHER), Transfer(t2 - t1, size, CIPHER)


class FtpsTarget:
    """One FTPS server and how curl logs in to it."""

    def __init__(self, name: str, port: int, user: str, password: str, work: Path):
        self.name, self.port, self.user, self.password, self.work = name, port, user, password, work

    def _curl(self, extra: list[str]) -> tuple[str, str]:
        netrc = self.work / "netrc"  # keeps the password off the command line
        netrc.touch(mode=0o600)
        netrc.write_text(f"machine {HOST} login {self.user} password {self.password}\n")
        command = ["curl", "--silent", "--show-error", "--ssl-reqd", "-k", "--connect-timeout", "20",
                   "--max-time", str(CLIENT_TIMEOUT), "--netrc-file", str(netrc), "-v",
                   "-w", "%{time_pretransfer} %{time_total}\\n", *extra]
        result = run(command, env=client_env(self.work / "client-home"))
        if result.returncode != 0:
            raise RuntimeError(f"curl to {self.name} failed ({result.returncode}): "
                               f"{result.stderr.strip()[-800:]}")
        return result.stdout, result.stderr

    def _transfer(self, extra: list[str], size: int) -> Transfer:
        out, err = self._curl(extra)
        pre, total = (float(x) for x in out.split()[-2:])
        tls = sorted(set(re.findall(r"SSL connection using (\S+) / (\S+)", err)))
        return Transfer(total - pre, size, ", ".join(f"{v} {c}" for v, c in tls))

    def put_get(self, local: Path, remote_name: str, back: Path) -> tuple[Transfer, Transfer]:
        url = f"ftp://{HOST}:{self.port}/{remote_name}"
        size = local.stat().st_size
        up = self._transfer(["-T", str(local), url], size)
        down = self._transfer(["-o", str(back), url], size)
        return up, down


# -- the run ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Measured:
    server: str
    protocol: str
    up: list[Transfer] = dataclasses.field(default_factory=list)
    down: list[Transfer] = dataclasses.field(default_factory=list)
    # Ours only: a download of a stored file while the worker ingests the upload just made.
    busy_down: list[Transfer] = dataclasses.field(default_factory=list)
    tree_peak: int = 0  # summed RSS of the server's process tree, full-size transfers
    # Server CPU seconds per transfer (ours: door, worker, PostgreSQL, Valkey and SeaweedFS;
    # an upload's includes its ingest), and the client's per round.
    cpu_up: list[float] = dataclasses.field(default_factory=list)
    cpu_down: list[float] = dataclasses.field(default_factory=list)
    cpu_client: list[float] = dataclasses.field(default_factory=list)

    def median_mb_s(self, direction: str) -> float:
        return median([t.mb_s for t in getattr(self, direction)])


@dataclasses.dataclass
class Memory:
    """One fresh server process, one file up then down."""
    size_mib: int
    idle: int  # RSS once listening
    peak_up: int  # VmHWM after the upload (login included)
    peak_down: int  # VmHWM after the download, reset before it


def transfer_checked(target, local: Path, expected: str, name: str, back: Path,
                     pid_for_peak: int | None = None,
                     hash_back: bool = True) -> tuple[Transfer, Transfer, int, int]:
    """Put then get; the download's SHA-256 must equal the source's.  With pid_for_peak, the
    process's VmHWM after the upload and after the download (reset before each)."""
    back.unlink(missing_ok=True)
    peaks = [0, 0]
    if pid_for_peak is None:
        up, down = target.put_get(local, name, back)
    else:
        # Separate sessions, so each direction's peak is its own.
        reset_peak(pid_for_peak)
        up, _ = _put_only(target, local, name)
        peaks[0] = read_status(pid_for_peak, "VmHWM")
        reset_peak(pid_for_peak)
        down = _get_only(target, name, back, local.stat().st_size)
        peaks[1] = read_status(pid_for_peak, "VmHWM")
    if hash_back:
        check_download(target, back, expected, name)
    return up, down, peaks[0], peaks[1]


def check_download(target, back: Path, expected: str, name: str) -> None:
    got = sha256_file(back)
    if got != expected:
        raise RuntimeError(f"{target.name}: the download of {name} differs from the source "
                           f"(SHA-256 {got} != {expected})")
    back.unlink()


def _put_only(target, local: Path, name: str):
    if isinstance(target, FtpsTarget):
        url = f"ftp://{HOST}:{target.port}/{name}"
        return target._transfer(["-T", str(local), url], local.stat().st_size), None
    stamps = target.work / "stamps.txt"
    stamps.unlink(missing_ok=True)
    stamp = f"!date +%s.%N >> {stamps}"
    batch = target.work / "batch.txt"
    batch.write_text(f"{stamp}\nput {local} {target.remote_dir.rstrip('/')}/{name}\n{stamp}\n")
    return _run_sftp_batch(target, batch, stamps, local.stat().st_size), None


def _get_only(target, name: str, back: Path, size: int) -> Transfer:
    if isinstance(target, FtpsTarget):
        return target._transfer(["-o", str(back), f"ftp://{HOST}:{target.port}/{name}"], size)
    stamps = target.work / "stamps.txt"
    stamps.unlink(missing_ok=True)
    stamp = f"!date +%s.%N >> {stamps}"
    batch = target.work / "batch.txt"
    batch.write_text(f"{stamp}\nget {target.remote_dir.rstrip('/')}/{name} {back}\n{stamp}\n")
    return _run_sftp_batch(target, batch, stamps, size)


def _run_sftp_batch(target: SftpTarget, batch: Path, stamps: Path, size: int) -> Transfer:
    command, env = target.command(batch)
    result = run(command, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"sftp to {target.name} failed ({result.returncode}): "
                           f"{result.stderr.strip()[-800:]}")
    t0, t1 = (float(x) for x in stamps.read_text().split())
    return Transfer(t1 - t0, size, CIPHER)


def machine_description() -> dict[str, str]:
    def first_line(command: list[str], stream: str = "stdout") -> str:
        try:
            result = run(command, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return "?"
        text = (getattr(result, stream) or "").strip().splitlines()
        return text[0] if text else "?"

    def dpkg(package: str) -> str:
        return first_line(["dpkg-query", "-W", "-f", "${Version}", package])

    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "CPU": f"{model}, {os.cpu_count()} logical cores (shared with other work)",
        "kernel": f"Linux {platform.release()}",
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "paramiko": paramiko.__version__,
        "pyftpdlib": pyftpdlib.__ver__,
        "cryptography": __import__("cryptography").__version__,
        "Python's OpenSSL": ssl.OPENSSL_VERSION,
        "OpenSSH": first_line(["ssh", "-V"], "stderr") + f" (Debian package {dpkg('openssh-server')})",
        "vsftpd": dpkg("vsftpd") + " (Debian package)",
        "curl": first_line(["curl", "--version"]),
        "sshpass": dpkg("sshpass"),
    }


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench(args: argparse.Namespace) -> str:
    size, small = args.size_mib * MIB, args.small_mib * MIB
    ports = PortPlan(args.port_base)
    wait_ports_free(ports.listeners())
    ensure_packages()
    machine = machine_description()
    started_load = loadavg()
    work = Path(tempfile.mkdtemp(prefix="sealdrop-bench-"))
    work.chmod(0o711)  # the throwaway user must reach its home folder inside
    processes = Processes()
    services_dir = work / "services"
    results: list[Measured] = []
    memory: dict[str, list[Memory]] = {"sftp": [], "ftps": []}
    profiles: dict[str, str] = {}
    # Undone in reverse order, each step even when an earlier one fails: the servers first
    # (so no session of the throwaway user is left), then the backing services, the user,
    # /run/sshd if we made it, and the temporary folder.
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(remove_work_folder, work, args.keep)
        cleanup.enter_context(privsep_dir())
        ftp_user, ftp_password = cleanup.enter_context(throwaway_user(work / "vsftpd-home"))
        cleanup.callback(stop_backing_services, services_dir)
        cleanup.callback(processes.stop_all)
        cleanup.callback(log, "stopping everything this run started")
        log(f"work folder {work}; making {args.size_mib} MiB and {args.small_mib} MiB random files")
        full_file, small_file = work / "full.bin", work / "small.bin"
        full_sha = make_random_file(full_file, size)
        small_sha = make_random_file(small_file, small)
        disk = disk_write_seconds(full_file, work)
        memory_files = [(args.small_mib, small_file, small_sha), (args.size_mib, full_file, full_sha)]
        if args.memory_big_mib:
            big_file = work / "big.bin"
            memory_files.append((args.memory_big_mib, big_file, make_random_file(big_file, args.memory_big_mib * MIB)))

        env = {**start_backing_services(work, services_dir, ports),
               "FTPS_PROCESSES": str(args.processes), "SFTP_PROCESSES": str(args.processes)}
        our_user, our_password = "benchadmin", "Bench-" + secrets.token_urlsafe(12) + "-9q"
        log("migrating the database and creating the account")
        prepare_our_database(env, our_user, our_password)

        def start_ours(protocol: str, port: int, label: str) -> Started:
            """`python -m transfer.<protocol>` on port, listening when this returns."""
            return processes.start_listening(
                f"our {protocol} ({label})", [sys.executable, "-m", f"transfer.{protocol}"],
                work / f"our-{protocol}-{label}.log", port, cwd=REPO_ROOT,
                env={**env, f"{protocol.upper()}_PORT": str(port)})

        # The servers of the throughput runs first, before our processes' client connections
        # spread over the ephemeral port range (which holds our ports).
        our_sftp = start_ours("sftp", ports.our_sftp, "throughput")
        our_ftps = start_ours("ftps", ports.our_ftps, "throughput")
        worker = processes.spawn("worker", [sys.executable, "-m", "common.jobs.worker"], work / "worker.log",
                                 cwd=REPO_ROOT, env=env)
        ingest = Ingest(env, work / "spool")
        me = pwd.getpwuid(os.geteuid()).pw_name
        sshd_config = write_sshd_config(work / "sshd", ports.sshd, me)
        sshd = processes.start_listening("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(sshd_config)],
                                         work / "sshd.log", ports.sshd)
        vsftpd_config = write_vsftpd_config(work / "vsftpd", ports.vsftpd, ports.vsftpd_passive,
                                            work / "vsftpd-home", work / "tls", reuse=True)
        vsftpd = processes.start_listening("vsftpd", ["/usr/sbin/vsftpd", str(vsftpd_config)],
                                           work / "vsftpd.log", ports.vsftpd)

        # Memory: for each of our servers and each size, a fresh process takes the file up,
        # then down (separate sessions; VmHWM reset before the download), and is stopped.
        # A fresh process per size, so that the two peaks differ only by the file's size.
        index = 0
        for protocol in ("sftp", "ftps"):
            for label, path, sha in memory_files:
                port = ports.memory_server(index)
                index += 1
                item = start_ours(protocol, port, f"memory-{label}")
                time.sleep(1.0)  # let start-up settle before reading its RSS
                idle = read_status(item.process.pid, "VmRSS")
                name = f"our {protocol.upper()} ({label} MiB memory run)"
                target = (SftpTarget(name, port, our_user, "/", work, password=our_password)
                          if protocol == "sftp" else FtpsTarget(name, port, our_user, our_password, work))
                log(f"{protocol} ours, fresh process: {label} MiB up, then down (memory)")
                _, _, peak_up, peak_down = transfer_checked(
                    target, path, sha, f"mem-{protocol}-{label}.bin", work / "download.bin",
                    pid_for_peak=item.process.pid)
                memory[protocol].append(Memory(label, idle, peak_up, peak_down))
                processes.stop(item)

        openssh_dir = work / "openssh-files"
        openssh_dir.mkdir(mode=0o700)

        targets = [
            ("sftp", "ours", SftpTarget("our SFTP", ports.our_sftp, our_user, "/", work,
                                        password=our_password), our_sftp),
            ("sftp", "OpenSSH", SftpTarget("OpenSSH sshd", ports.sshd, me, str(openssh_dir), work,
                                           key=work / "sshd" / "client_ed25519_key"), sshd),
            ("ftps", "ours", FtpsTarget("our FTPS", ports.our_ftps, our_user, our_password, work),
             our_ftps),
            ("ftps", "vsftpd", FtpsTarget("vsftpd", ports.vsftpd, ftp_user, ftp_password, work), vsftpd),
        ]
        back = work / "download.bin"
        results = [Measured(server, protocol) for protocol, server, _, _ in targets]

        # A warm-up for every server: the small file up and down, not counted.
        for protocol, server, target, item in targets:
            log(f"{protocol} {server}: warm-up")
            transfer_checked(target, small_file, small_sha, "warm-up.bin", back)

        # Throughput: rounds of put, then get in a session of its own, servers interleaved, so
        # a burst of load from other processes on this shared machine hits all of them. Every
        # timed transfer starts once the worker has moved the previous uploads to the store, so
        # our downloads are read back from it. Then, for ours, one more upload and, while the
        # worker ingests it, the download again.
        size = full_file.stat().st_size
        for round_ in range(1, args.rounds + 1):
            for (protocol, server, target, item), measured in zip(targets, results):
                log(f"round {round_}/{args.rounds}: {protocol} {server}: {args.size_mib} MiB put, get")
                ours = server == "ours"
                roots = [item.process.pid, *([worker.process.pid, *service_roots(services_dir)] if ours else [])]
                name = f"round-{round_}.bin"
                ingest.wait()
                client_cpu, cpu = children_cpu_seconds(), tree_cpu_seconds(roots)
                up, _ = _put_only(target, full_file, name)
                if ours:
                    ingest.wait()
                uploaded = tree_cpu_seconds(roots)
                down = _get_only(target, name, back, size)
                # Taken before the download's SHA-256 is checked, so that is not counted.
                downloaded = tree_cpu_seconds(roots)
                measured.cpu_client.append(children_cpu_seconds() - client_cpu)
                measured.cpu_up.append(uploaded - cpu)
                measured.cpu_down.append(downloaded - uploaded)
                check_download(target, back, full_sha, name)
                measured.up.append(up)
                measured.down.append(down)
                line = f"    up {up.mb_s:.0f} MB/s, down {down.mb_s:.0f} MB/s"
                if ours:
                    _put_only(target, full_file, f"busy-{round_}.bin")
                    busy = _get_only(target, name, back, size)
                    check_download(target, back, full_sha, name)
                    measured.busy_down.append(busy)
                    line += f", down during ingest {busy.mb_s:.0f} MB/s"
                log(line)

        # The memory of each long-lived server tree, in one more put and get, not timed: sampling
        # it every 20 ms during the timed rounds slowed them (by up to 15 % for our SFTP upload).
        for (protocol, server, target, item), measured in zip(targets, results):
            ingest.wait()
            with TreeSampler(item.process.pid) as sampler:
                transfer_checked(target, full_file, full_sha, "sampled.bin", back)
            measured.tree_peak = sampler.peak

        # With --profile, one more upload and download of each of ours under py-spy, not counted
        # (a profiler attached slows what it watches).
        for (protocol, server, target, item) in targets if args.profile else ():
            if server != "ours":
                continue
            log(f"{protocol} {server}: {args.size_mib} MiB put, then get from the store, under py-spy (not counted)")
            ingest.wait()
            with Profiler(item.process.pid, work / f"profile-{protocol}-up.txt") as prof_up:
                _put_only(target, full_file, "profiled.bin")
            ingest.wait()
            with Profiler(item.process.pid, work / f"profile-{protocol}-down.txt") as prof_down:
                _get_only(target, "profiled.bin", back, size)
            check_download(target, back, full_sha, "profiled.bin")
            profiles[f"{protocol} upload"] = prof_up.summary()
            profiles[f"{protocol} download (read back from the store)"] = prof_down.summary()
    text = report(args, machine, started_load, results, memory, disk, profiles)
    for what, summary in profiles.items():
        text += (f"\n#### Profile of our {what.split()[0].upper()} door: {what.split(' ', 1)[1]} "
                 f"(one more {args.size_mib} MiB, not counted above)\n\n{summary}")
    return text, results


def stop_backing_services(services_dir: Path) -> None:
    if services_dir.exists():
        backing.stop_services(services_dir)


def remove_work_folder(work: Path, keep: bool) -> None:
    if keep:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


# -- the report ------------------------------------------------------------------------------

def report(args, machine, started_load, results: list[Measured], memory: dict[str, Memory],
           disk: tuple[float, float], profiles: dict[str, str]) -> str:
    by = {(m.protocol, m.server): m for m in results}
    lines = [f"### Results: {date.today().strftime('%d %b %Y')}, `{command_line(args)}`", "",
             "#### Machine"]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    lines += [f"- load average at start: {started_load}; at end: {loadavg()}",
              f"- disk of the temporary folder: {args.size_mib} MiB written through the page cache in "
              f"{disk[0]:.2f} s, then fsynced in {disk[1]:.2f} s", ""]

    runs = args.rounds
    rounds_text = f"{args.rounds} round{'s' if args.rounds > 1 else ''}"
    lines += [f"#### Throughput ({args.size_mib} MiB random file, median of {rounds_text}; "
              "MB/s (10^6 bytes) of the transfer itself, login excluded; our downloads read back "
              "from the object store)", "",
              "| protocol | direction | ours MB/s | reference MB/s | ours / reference | goal "
              "| ours, all rounds | reference, all rounds |",
              "|---|---|---|---|---|---|---|---|"]
    for protocol, direction, reference, label, ratio, goal in ratios(results):
        ours, ref = by[(protocol, "ours")], by[(protocol, reference)]
        met = "(no goal)" if not goal else f">= {goal:.2f}: " + ("met" if ratio >= goal else "**missed**")
        lines.append(
            f"| {protocol.upper()} vs {reference} | {label} | {ours.median_mb_s(direction):.0f} "
            f"| {ref.median_mb_s(ref_direction(direction)):.0f} | **{ratio:.2f}** "
            f"| {met} | {spread(getattr(ours, direction))} "
            f"| {spread(getattr(ref, ref_direction(direction)))} |")
    lines += ["", "\"Download during ingest\": ours only, the same stored file downloaded again right "
              "after another upload, while the worker moves that upload to the store; against the "
              "reference's plain download.", ""]
    lines += [f"#### Server CPU (seconds per GiB moved, medians of {rounds_text})", "",
              "| server | upload | download | client CPU s per round (put + get) |", "|---|---|---|---|"]
    gib = args.size_mib / 1024
    for m in results:
        lines.append(f"| {m.server} {m.protocol.upper()} | {median(m.cpu_up) / gib:.1f} "
                     f"| {median(m.cpu_down) / gib:.1f} | {median(m.cpu_client):.2f} |")
    lines += ["", "Ours counts every process of the stack: the door, the ingest worker (and the forks "
              "it runs jobs in), PostgreSQL, Valkey and SeaweedFS; an upload's figure includes its "
              "ingest into the store. OpenSSH and vsftpd: the listener and its per-session processes. "
              "Client: sftp + ssh (+ sshpass) or curl."]
    ftps_tls = {m.server: m.up[0].detail for m in results if m.protocol == "ftps"}
    lines += ["", f"SFTP cipher on both: {CIPHER} (checked in `sftp -v` output of every run). "
              "FTPS TLS as curl reported it: "
              + "; ".join(f"{server}: {detail}" for server, detail in ftps_tls.items()) + ".", ""]

    lines += ["#### Memory of our servers (MiB of RSS; a fresh process for each size)", "",
              "| server | file | RSS once listening | peak during login + upload | peak during download |",
              "|---|---|---|---|---|"]
    for protocol in ("sftp", "ftps"):
        for mem in memory[protocol]:
            lines.append(f"| our {protocol.upper()} (`python -m transfer.{protocol}`) | {mem.size_mib} MiB "
                         f"| {mem.idle / MIB:.1f} | {mem.peak_up / MIB:.1f} | {mem.peak_down / MIB:.1f} |")
    lines += ["", "Peaks are VmHWM, read after each transfer; the download's is reset "
              "(`/proc/PID/clear_refs`) to the RSS the upload left, so it can only be as high or higher."]
    lines += ["", f"Peak RSS of each server's process tree during one more {args.size_mib} MiB put and get "
              "after the timed rounds (not timed), the same process having served every earlier session "
              "(summed, sampled every 20 ms; for sshd "
              "and vsftpd the listener plus the per-session processes, shared pages counted in each): "
              + ", ".join(f"{m.server} {m.protocol.upper()} {m.tree_peak / MIB:.0f} MiB" for m in results)
              + ".", ""]
    downloads = (len(results) * (runs + 2) + 2 * runs + 2 * len(memory["sftp"])
                 + len(profiles) // 2)  # + warm-up and sampled, during ingest, memory runs
    lines.append(f"Every download ({downloads} of them) matched the source's SHA-256.")
    return "\n".join(lines) + "\n"


GOALS = {("sftp", "up"): 0.45, ("sftp", "down"): 0.5, ("sftp", "busy_down"): 0.0,
         ("ftps", "up"): 1.3, ("ftps", "down"): 0.8, ("ftps", "busy_down"): 0.0}
LABELS = {"up": "upload", "down": "download", "busy_down": "download during ingest"}


def ref_direction(direction: str) -> str:
    return "down" if direction == "busy_down" else direction


def ratios(results: list[Measured]) -> list[tuple[str, str, str, str, float, float]]:
    """(protocol, direction, reference, label, ours / reference, goal) of every comparison."""
    by = {(m.protocol, m.server): m for m in results}
    rows = []
    for protocol, reference in (("sftp", "OpenSSH"), ("ftps", "vsftpd")):
        ours, ref = by[(protocol, "ours")], by[(protocol, reference)]
        for direction in ("up", "down", "busy_down"):
            ratio = ours.median_mb_s(direction) / ref.median_mb_s(ref_direction(direction))
            rows.append((protocol, direction, reference, LABELS[direction], ratio, GOALS[(protocol, direction)]))
    return rows


def plot_ratios(results: list[Measured], out: Path, title: str) -> None:
    """A bar per comparison, its goal marked: the PNG docs/benchmarks.md shows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = ratios(results)
    names = [f"{p.upper()} {label}" for p, _, _, label, _, _ in rows]
    values = [ratio for *_, ratio, _ in rows]
    fig, axis = plt.subplots(figsize=(8, 3.6), dpi=120)
    bars = axis.barh(names, values, color=["#2b6cb0" if r >= g else "#c05621" for *_, r, g in rows])
    for index, (*_, ratio, goal) in enumerate(rows):
        if goal:
            axis.plot([goal, goal], [index - 0.4, index + 0.4], color="black", linewidth=2)
        axis.text(ratio + 0.02, index, f"{ratio:.2f}", va="center", fontsize=8)
    axis.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    axis.invert_yaxis()
    axis.set_xlabel("ours / reference (OpenSSH for SFTP, vsftpd for FTPS); black mark: goal")
    axis.set_title(title, fontsize=9)
    axis.set_xlim(0, max(values + [1.4]) + 0.2)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    del bars


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def spread(transfers: list[Transfer]) -> str:
    return ", ".join(f"{t.mb_s:.0f}" for t in transfers)


def command_line(args: argparse.Namespace) -> str:
    text = ".venv/bin/python bench/transfer.py"
    if args.quick:
        text += " --quick"
    else:
        text += (f" --size-mib {args.size_mib} --small-mib {args.small_mib} --rounds {args.rounds}"
                 f" --memory-big-mib {args.memory_big_mib}")
    if args.processes != 1:
        text += f" --processes {args.processes}"
    if args.port_base != DEFAULT_PORT_BASE:
        text += f" --port-base {args.port_base}"
    return text + (" --profile" if args.profile else "") + (" --append-docs" if args.append_docs else "")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="the full-size file (default 256)")
    parser.add_argument("--small-mib", type=int, default=64,
                        help="the small file of the memory comparison (default 64)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed put+get rounds per server after the memory runs (default 5)")
    parser.add_argument("--memory-big-mib", type=int, default=1024,
                        help="a third, larger file for the memory runs only (default 1024; 0: none)")
    parser.add_argument("--processes", type=int, default=1,
                        help="FTPS_PROCESSES and SFTP_PROCESSES of our doors (default 1)")
    parser.add_argument("--quick", action="store_true", help="64 MiB and 16 MiB, two rounds")
    parser.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE,
                        help=f"first of the 50 ports used (default {DEFAULT_PORT_BASE})")
    parser.add_argument("--append-docs", action="store_true",
                        help="append the results to docs/benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument("--profile", action="store_true",
                        help="profile our servers with py-spy in one more, uncounted put+get "
                             "(pip install py-spy)")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.small_mib, args.rounds, args.memory_big_mib = 64, 16, 2, 0
    if args.small_mib >= args.size_mib:
        parser.error("--small-mib must be below --size-mib")
    return args


def append_to_section(section: str, text: str) -> None:
    """Results go at the end of their benchmark's section of docs/benchmarks.md (before the next
    `## `), or at the end of the file with the heading when the section is missing."""
    doc = DOCS.read_text()
    start = doc.find(section)
    if start < 0:
        DOCS.write_text(doc.rstrip("\n") + f"\n\n{section}\n\n{text}")
        return
    end = doc.find("\n## ", start + len(section))
    end = len(doc) if end < 0 else end + 1
    DOCS.write_text(doc[:end].rstrip("\n") + "\n\n" + text + ("\n" + doc[end:] if end < len(doc) else ""))


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("bench/transfer.py runs as root: vsftpd logs in a throwaway local user, sshd runs "
              "privilege-separated and missing packages are installed with apt-get", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so every server is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    text, results = bench(args)
    text += f"\nWhole run: {time.monotonic() - started:.0f} s.\n"
    print(text)
    if args.append_docs:
        plot_ratios(results, PLOT, f"Ours against OpenSSH and vsftpd, {args.size_mib} MiB, median of "
                                   f"{args.rounds} rounds, {date.today().strftime('%d %b %Y')}")
        text += f"\n![Ratios against OpenSSH and vsftpd]({PLOT.name})\n"
        append_to_section(DOCS_SECTION, text)
        log(f"added to {DOCS.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
