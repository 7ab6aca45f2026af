"""Load on our doors: parallel streams, many sessions, a big folder's listing, ingest throughput.

Run from the repository root, with the project's virtualenv:

    .venv/bin/python bench/load.py [concurrency] [sessions] [listing] [ingest]
                                   [--quick] [--port-base 49100] [--append-docs] [--keep]

With no part named, all four run, in that order, each on a stack of its own:

- concurrency: 1, 8 and 32 parallel 64 MiB uploads, then downloads, through each door, the door
  started with FTPS_PROCESSES / SFTP_PROCESSES = 1 and = the number of cores; one OpenSSH
  `sftp` or `curl` process per stream; the ingest worker runs and every version is `stored`
  before the downloads start;
- sessions: 200 concurrent sessions per door (4 client processes x 50 threads, paramiko or
  ftplib), each moving 20 files of 1 MiB up then down once every session is logged in;
- listing: a 10,000-entry folder made through common.vfs.Workspace (empty files), listed over
  SFTP (paramiko listdir_attr, OpenSSH `sftp ls -l`), FTPS (MLSD, LIST) and the portal's
  files page (first and last page), with the SQL statements each listing runs;
- ingest: 8 x 64 MiB spooled through each door with no worker running, then 1 (and 2) workers
  started and timed until every version is `stored`.

Everything listens on 127.0.0.1, on ports from --port-base upwards (the embedded PostgreSQL,
Valkey and SeaweedFS from devstack.backing, data in a temporary folder, then our doors; FTPS
passive ports at +100 to +399). Everything started is stopped at the end, on errors too, and
the temporary folder is removed. The client processes re-enter this file (`client`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def _bench_transfer():
    """bench/transfer.py as a module of its own name (`transfer` is our doors' package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_transfer", REPO_ROOT / "bench" / "transfer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


import psutil  # noqa: E402


_shared = _bench_transfer()
(PortPlan, Processes, append_to_section, cpu_seconds, loadavg, log, machine_description, make_random_file,
 median, prepare_our_database, read_status, remove_work_folder, run, sha256_file, start_backing_services,
 stop_backing_services) = (getattr(_shared, name) for name in (
    "PortPlan", "Processes", "append_to_section", "cpu_seconds", "loadavg", "log", "machine_description",
    "make_random_file", "median", "prepare_our_database", "read_status", "remove_work_folder", "run",
    "sha256_file", "start_backing_services", "stop_backing_services"))

MIB = 1024 * 1024
HOST = "127.0.0.1"
CIPHER = "aes256-gcm@openssh.com"
DOCS = REPO_ROOT / "docs" / "benchmarks.md"
DOCS_SECTION = "## Load: parallel streams, many sessions, big listings, ingest (`bench/load.py`)"
DEFAULT_PORT_BASE = 49100
CLIENT_TIMEOUT = 1800  # seconds for all the streams of one round
PARTS = ("concurrency", "sessions", "listing", "ingest")
DOORS = ("sftp", "ftps")
USER = "loadbench"
# The per-IP caps and the login timeout, raised so that the load itself is never refused. The
# lockout counts a login attempt while its password is checked, so more than LOCKOUT_THRESHOLD
# simultaneous logins of one name freeze it (common.auth.lockout.reserve): raised as well.
LOAD_LIMITS = {"MAX_SESSIONS_PER_IP": "1000", "MAX_UNAUTHENTICATED_PER_IP": "1000",
               "LOGIN_TIMEOUT_SECONDS": "600", "LOCKOUT_THRESHOLD": "100000"}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each part moves; --quick shrinks all of it."""
    stream_mib: int = 64
    streams: tuple[int, ...] = (1, 8, 32)
    sessions: int = 200
    session_processes: int = 4
    session_files: int = 20
    session_file_mib: int = 1
    entries: int = 10_000
    listing_rounds: int = 5
    ingest_files: int = 8
    ingest_mib: int = 64
    ingest_workers: tuple[int, ...] = (1, 2)


QUICK = Sizes(stream_mib=16, streams=(1, 4), sessions=20, session_processes=2, session_files=5,
              entries=2_000, listing_rounds=3, ingest_files=4, ingest_mib=16)


def p95(values: list[float]) -> float:
    """The nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]


def mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / 1e6 / seconds


def goal_line(name: str, met: bool, figure: str) -> str:
    return f"- {name}: **{'met' if met else 'missed'}** ({figure})"


# -- process trees ---------------------------------------------------------------------------

def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process, its live descendants and the children each of them reaped."""
    total = cpu_seconds(pid)
    for child in process_tree(pid)[1:]:
        with contextlib.suppress(psutil.Error, OSError):
            total += cpu_seconds(child.pid)
    return total


class TreeCounter:
    """The most processes seen at once in a door's tree, sampled by whoever waits on the load."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, len(process_tree(self.pid)))


# -- the stack: backing services, our doors, the worker ---------------------------------------

class LoadPorts(PortPlan):
    """transfer.py's plan with room for more door starts and 300 FTPS passive ports."""

    def door(self, index: int) -> int:
        return self.base + 20 + index % 40

    @property
    def our_passive(self) -> range:
        return range(self.base + 100, self.base + 400)


@dataclasses.dataclass
class Door:
    protocol: str
    port: int
    item: object  # transfer.Started

    @property
    def pid(self) -> int:
        return self.item.process.pid


class Stack:
    """Backing services, a migrated database with one account, and the processes we start."""

    def __init__(self, work: Path, ports: LoadPorts, cleanup: contextlib.ExitStack):
        self.work, self.ports = work, ports
        self.processes = Processes()
        self.services_dir = work / "services"
        self.starts = self.worker_starts = 0
        cleanup.callback(stop_backing_services, self.services_dir)
        cleanup.callback(self.processes.stop_all)
        self.env = {**start_backing_services(work, self.services_dir, ports), **LOAD_LIMITS}
        self.password = "Load-" + secrets.token_urlsafe(12) + "-9q"
        log("migrating the database and creating the account")
        prepare_our_database(self.env, USER, self.password)
        from common.config import load_settings
        from common.services import Services
        self.settings = load_settings(self.env)
        self.services = Services(self.settings)
        cleanup.callback(self.services.close)

    def start_door(self, protocol: str, processes: int) -> Door:
        """`python -m transfer.<protocol>` with <PROTOCOL>_PROCESSES=processes, listening."""
        port = self.ports.door(self.starts)
        self.starts += 1
        name = f"{protocol} ({processes} process{'es' if processes > 1 else ''})"
        item = self.processes.start_listening(
            name, [sys.executable, "-m", f"transfer.{protocol}"], self.work / f"{protocol}-{port}.log",
            port, cwd=REPO_ROOT, env={**self.env, f"{protocol.upper()}_PORT": str(port),
                                      f"{protocol.upper()}_PROCESSES": str(processes)})
        time.sleep(1.0)  # a door with several processes forks them after it listens
        door = Door(protocol, port, item)
        log(f"{name} on {port}: {len(process_tree(door.pid))} process(es) in its tree")
        return door

    def start_workers(self, count: int) -> list:
        self.worker_starts += 1
        return [self.processes.spawn(f"worker {i + 1}", [sys.executable, "-m", "common.jobs.worker"],
                                     self.work / f"worker-{self.worker_starts}-{i}.log", cwd=REPO_ROOT,
                                     env=self.env) for i in range(count)]

    @staticmethod
    def wait_workers_listening(workers: list, timeout: float = 120) -> None:
        """Until every worker has subscribed to its queues (rq logs `Listening on`)."""
        deadline = time.monotonic() + timeout
        while not all("Listening on" in w.log_file.read_text(errors="replace") for w in workers):
            if time.monotonic() > deadline or any(w.process.poll() is not None for w in workers):
                raise RuntimeError(f"a worker did not start; see {workers[0].log_file}")
            time.sleep(0.05)

    def stop(self, items) -> None:
        for item in items:
            self.processes.stop(item)

    def spooled(self) -> int:
        """Versions not yet in the object store (common.models.VERSION_STATES)."""
        from sqlalchemy import func, select

        from common.models import FileVersion
        with self.services.db.session() as session:
            counts = dict(session.execute(select(FileVersion.state, func.count())
                                          .group_by(FileVersion.state)).all())
        if counts.get("failed"):
            raise RuntimeError(f"{counts['failed']} version(s) failed to ingest; see the worker logs")
        return counts.get("spooled", 0)

    def wait_stored(self, timeout: float = 3600) -> float:
        """Seconds until every version is `stored`."""
        started = time.monotonic()
        while self.spooled():
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"ingest not finished after {timeout:.0f} s")
            time.sleep(0.2)
        return time.monotonic() - started

    def client_env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        home = self.work / "client-home"
        home.mkdir(exist_ok=True)
        return {**keep, "HOME": str(home), "SSHPASS": self.password}


# -- native clients: one OpenSSH sftp or curl process per stream ------------------------------

def sftp_command(stack: Stack, port: int, batch: Path) -> list[str]:
    return ["sshpass", "-e", "sftp", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=no", "-o", "PubkeyAuthentication=no",
            "-o", "PreferredAuthentications=password", "-o", "Compression=no", "-c", CIPHER,
            "-P", str(port), "-b", str(batch), f"{USER}@{HOST}"]


def curl_command(stack: Stack, port: int, remote: str, *, upload: Path | None = None,
                 download: Path | None = None) -> list[str]:
    netrc = stack.work / "netrc"  # keeps the password off the command line
    if not netrc.exists():
        netrc.touch(mode=0o600)
        netrc.write_text(f"machine {HOST} login {USER} password {stack.password}\n")
    what = ["-T", str(upload)] if upload else ["-o", str(download)]
    return ["curl", "--silent", "--show-error", "--ssl-reqd", "-k", "--netrc-file", str(netrc),
            *what, f"ftp://{HOST}:{port}/{remote}"]


def stream_command(stack: Stack, door: Door, direction: str, local: Path, remote: str) -> list[str]:
    if door.protocol == "ftps":
        return curl_command(stack, door.port, remote, **{"upload" if direction == "up" else "download": local})
    batch = local.with_name(f"{remote}.{direction}.batch")
    batch.write_text(f"put {local} /{remote}\n" if direction == "up" else f"get /{remote} {local}\n")
    return sftp_command(stack, door.port, batch)


def run_together(commands: list[list[str]], env: dict[str, str], tick=lambda: None) -> list[float]:
    """Start every command at once; each one's completion time (seconds from the start).
    tick() is called every 10 ms meanwhile."""
    started = time.monotonic()
    running = [subprocess.Popen(c, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env) for c in commands]
    done: dict[int, float] = {}
    errors = []
    while len(done) < len(running):
        if time.monotonic() - started > CLIENT_TIMEOUT:
            for proc in running:
                proc.kill()
            raise RuntimeError(f"transfers still running after {CLIENT_TIMEOUT} s; stopped")
        for i, proc in enumerate(running):
            if i not in done and proc.poll() is not None:
                done[i] = time.monotonic() - started
                if proc.returncode:
                    errors.append(f"{commands[i][0:3]}...: exit {proc.returncode}: "
                                  f"{proc.stderr.read().decode(errors='replace').strip()[-300:]}")
        tick()
        time.sleep(0.01)
    for proc in running:
        proc.stderr.close()
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(commands)} transfers failed: " + "; ".join(errors[:3]))
    return [done[i] for i in range(len(running))]


# -- 1. concurrency ---------------------------------------------------------------------------

@dataclasses.dataclass
class StreamRun:
    protocol: str
    processes_asked: int
    processes_seen: int
    streams: int
    direction: str
    seconds: list[float]
    nbytes: int
    cpu: float  # door tree (+ worker tree for uploads, ingest included)

    @property
    def aggregate(self) -> float:
        return mb_s(self.nbytes, max(self.seconds))

    @property
    def cpu_ms_per_mib(self) -> float:
        return 1000 * self.cpu / (self.nbytes / MIB)


def concurrency(stack: Stack, sizes: Sizes) -> tuple[list[str], list[str]]:
    source = stack.work / "stream.bin"
    source_sha = make_random_file(source, sizes.stream_mib * MIB)
    cores = os.cpu_count() or 1
    runs: list[StreamRun] = []
    for protocol in DOORS:
        for asked in sorted({1, cores}):
            door = stack.start_door(protocol, asked)
            workers = stack.start_workers(1)
            try:
                for streams in sizes.streams:
                    runs += stream_round(stack, door, workers[0], asked, streams, source, source_sha, sizes)
            finally:
                stack.stop([*workers, door.item])
    source.unlink()
    return concurrency_report(runs, sizes, cores)


def stream_round(stack: Stack, door: Door, worker, asked: int, streams: int, source: Path,
                 source_sha: str, sizes: Sizes) -> list[StreamRun]:
    """`streams` uploads at once, ingest to the end, then `streams` downloads at once."""
    label = f"{door.protocol}-{asked}p-{streams}s"
    names = [f"{label}-{i}.bin" for i in range(streams)]
    backs = [stack.work / f"back-{i}.bin" for i in range(streams)]
    nbytes = streams * source.stat().st_size
    env = stack.client_env()
    results = []
    for direction in ("up", "down"):
        log(f"concurrency: {door.protocol}, {asked} process(es) asked, {streams} stream(s) {direction}")
        commands = [stream_command(stack, door, direction, source if direction == "up" else back, name)
                    for name, back in zip(names, backs)]
        cpu_before = tree_cpu_seconds(door.pid) + tree_cpu_seconds(worker.process.pid)
        counter = TreeCounter(door.pid)
        seconds = run_together(commands, env, counter.sample)
        if direction == "up":
            stack.wait_stored()  # the worker's ingest is part of an upload's cost
        cpu = tree_cpu_seconds(door.pid) + tree_cpu_seconds(worker.process.pid) - cpu_before
        results.append(StreamRun(door.protocol, asked, counter.peak, streams, direction, seconds, nbytes, cpu))
        log(f"    {results[-1].aggregate:.1f} MB/s in all, {counter.peak} door process(es) seen")
    for back in backs:
        if sha256_file(back) != source_sha:
            raise RuntimeError(f"{door.protocol}: a download differs from the source ({back.name})")
        back.unlink()
    return results


def concurrency_report(runs: list[StreamRun], sizes: Sizes, cores: int) -> tuple[list[str], list[str]]:
    lines = [f"#### Parallel streams ({sizes.stream_mib} MiB each; one OpenSSH `sftp` or `curl` "
             "process per stream)", "",
             "| door | processes asked / seen | streams | direction | aggregate MB/s | p95 completion s "
             "| server CPU ms per MiB |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.protocol.upper()} | {r.processes_asked} / {r.processes_seen} | {r.streams} "
                     f"| {'upload' if r.direction == 'up' else 'download'} | {r.aggregate:.1f} "
                     f"| {p95(r.seconds):.2f} | {r.cpu_ms_per_mib:.1f} |")
    lines += ["", "Processes asked: `SFTP_PROCESSES` / `FTPS_PROCESSES`; seen: the most processes in the "
              "door's process tree during the transfers. Server CPU: the door's whole process tree, plus "
              "the worker's for uploads (ingest to `stored` included). Completion: from the start of all "
              "streams to each client's exit, login included. Every download matched the source's SHA-256."]
    goals = []
    parallel = max((s for s in sizes.streams if s <= 8), default=sizes.streams[-1])
    for protocol in DOORS:
        for direction in ("up", "down"):
            one = next(r for r in runs if (r.protocol, r.direction, r.streams, r.processes_asked)
                       == (protocol, direction, parallel, 1))
            many = next(r for r in runs if (r.protocol, r.direction, r.streams, r.processes_asked)
                        == (protocol, direction, parallel, cores))
            ratio = many.aggregate / one.aggregate
            goals.append(goal_line(
                f"{protocol.upper()} {'upload' if direction == 'up' else 'download'}, {parallel} streams, "
                f"{cores} processes vs 1 >= 1.6x", ratio >= 1.6,
                f"{ratio:.2f}x: {many.aggregate:.1f} vs {one.aggregate:.1f} MB/s; "
                f"processes seen {many.processes_seen} vs {one.processes_seen}"))
    return lines, goals


# -- 2. sessions ------------------------------------------------------------------------------

def sessions(stack: Stack, sizes: Sizes) -> tuple[list[str], list[str]]:
    lines = [f"#### {sizes.sessions} concurrent sessions per door ({sizes.session_processes} client "
             f"processes x {sizes.sessions // sizes.session_processes} threads; each session "
             f"{sizes.session_files} files of {sizes.session_file_mib} MiB up, then down)", "",
             "| door | errors | files/s | p95 upload s | p95 download s | login of all sessions s "
             "| peak RSS (VmHWM) of each door process MiB |", "|---|---|---|---|---|---|---|"]
    goals, notes = [], []
    for protocol in DOORS:
        door = stack.start_door(protocol, 1)
        workers = stack.start_workers(1)
        try:
            outcome = session_round(stack, door, sizes)
            peaks = [read_status(p.pid, "VmHWM") for p in process_tree(door.pid)]
        finally:
            stack.stop([*workers, door.item])
        errors = outcome["errors"]
        lines.append(f"| {protocol.upper()} | {len(errors)} | {outcome['files_per_s']:.1f} "
                     f"| {p95(outcome['up']):.3f} | {p95(outcome['down']):.3f} | {outcome['login_s']:.1f} "
                     f"| {', '.join(f'{p / MIB:.0f}' for p in peaks)} |")
        notes += [f"- {protocol.upper()}: {e}" for e in errors[:20]]
        goals.append(goal_line(f"{protocol.upper()} sessions: zero errors", not errors, f"{len(errors)} errors"))
        goals.append(goal_line(f"{protocol.upper()} sessions: peak RSS per door process < 300 MiB",
                               max(peaks) < 300 * MIB, f"largest {max(peaks) / MIB:.0f} MiB"))
    lines += ["", "Files/s: files that went up and came back (compared byte for byte) per second, from "
              "the moment every session was logged in to the last one's end; the door ran as one "
              "process (the worst case for its memory) with the ingest worker beside it."]
    if notes:
        lines += ["", "Errors:", "", *notes]
    return lines, goals


def session_round(stack: Stack, door: Door, sizes: Sizes) -> dict:
    """The client processes log in all their sessions, then move their files on one signal."""
    per_process = sizes.sessions // sizes.session_processes
    log(f"sessions: {door.protocol}, {sizes.sessions} sessions logging in")
    clients = []
    for i in range(sizes.session_processes):
        spec = {"protocol": door.protocol, "port": door.port, "user": USER, "password": stack.password,
                "cert": str(stack.work / "tls" / "cert.pem"), "threads": per_process,
                "files": sizes.session_files, "size": sizes.session_file_mib * MIB, "prefix": f"c{i}"}
        proc = subprocess.Popen([sys.executable, __file__, "client"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        proc.stdin.write(json.dumps(spec) + "\n")
        proc.stdin.flush()
        clients.append(proc)
    started = time.monotonic()
    try:
        for proc in clients:
            json.loads(proc.stdout.readline() or "{}")  # {"ready": n}: its sessions are logged in
        login_s = time.monotonic() - started
        log(f"    all logged in after {login_s:.1f} s; moving files")
        go = time.monotonic()
        for proc in clients:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = [json.loads(proc.stdout.readline() or '{"up": [], "down": [], "errors": ["no report"]}')
                    for proc in clients]
        wall = time.monotonic() - go
    finally:
        for proc in clients:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    merged = {key: [x for o in outcomes for x in o[key]] for key in ("up", "down", "errors")}
    moved = sum(1 for o in outcomes for _ in o["down"])
    log(f"    {moved} files up and down in {wall:.1f} s, {len(merged['errors'])} errors")
    return {**merged, "files_per_s": moved / wall, "login_s": login_s}


def client_main() -> int:
    """One client process of the sessions part: its threads' sessions, timed per file."""
    spec = json.loads(sys.stdin.readline())
    go = threading.Event()
    logged_in = threading.Semaphore(0)
    results = {"up": [], "down": [], "errors": []}

    def session(index: int) -> None:
        name = f"{spec['prefix']}-t{index}"
        data = os.urandom(spec["size"])
        try:
            client = (SftpSession if spec["protocol"] == "sftp" else FtpsSession)(spec)
        except Exception as exc:  # noqa: BLE001 - every failure is a counted error
            results["errors"].append(f"{name} login: {type(exc).__name__}: {exc}")
            logged_in.release()
            return
        logged_in.release()
        go.wait()
        try:
            for i in range(spec["files"]):
                try:
                    t0 = time.monotonic()
                    client.put(f"{name}-{i}.bin", data)
                    t1 = time.monotonic()
                    back = client.get(f"{name}-{i}.bin")
                    t2 = time.monotonic()
                    if back != data:
                        raise RuntimeError("the download differs from the upload")
                    results["up"].append(t1 - t0)
                    results["down"].append(t2 - t1)
                except Exception as exc:  # noqa: BLE001
                    results["errors"].append(f"{name} file {i}: {type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                client.close()

    threads = [threading.Thread(target=session, args=(i,)) for i in range(spec["threads"])]
    for thread in threads:
        thread.start()
    for _ in threads:
        logged_in.acquire()
    print(json.dumps({"ready": len(threads)}), flush=True)
    sys.stdin.readline()
    go.set()
    for thread in threads:
        thread.join()
    print(json.dumps(results), flush=True)
    return 0


class SftpSession:
    def __init__(self, spec: dict):
        import paramiko
        self.transport = paramiko.Transport((HOST, spec["port"]))
        self.transport.connect(username=spec["user"], password=spec["password"])
        self.sftp = paramiko.SFTPClient.from_transport(self.transport)

    def put(self, name: str, data: bytes) -> None:
        self.sftp.putfo(io.BytesIO(data), "/" + name, confirm=False)

    def get(self, name: str) -> bytes:
        buffer = io.BytesIO()
        self.sftp.getfo("/" + name, buffer)
        return buffer.getvalue()

    def close(self) -> None:
        self.sftp.close()
        self.transport.close()


class FtpsSession:
    def __init__(self, spec: dict):
        from tests.transfer.ftps_door import SessionReusingFTP_TLS, client_context
        context = client_context(Path(spec["cert"]))
        context.check_hostname = False
        self.ftp = SessionReusingFTP_TLS(context=context, timeout=300)
        self.ftp.connect(HOST, spec["port"])
        self.ftp.login(spec["user"], spec["password"])
        self.ftp.prot_p()

    def put(self, name: str, data: bytes) -> None:
        self.ftp.storbinary(f"STOR {name}", io.BytesIO(data))

    def get(self, name: str) -> bytes:
        return self.ftp.fetch(f"RETR {name}")

    def close(self) -> None:
        self.ftp.quit()


# -- 3. listing -------------------------------------------------------------------------------

class StatementLog:
    """Counts the SQL statements PostgreSQL runs, from its own log (`log_statement = all`,
    switched on for the listing part only): every process's statements, ours included."""

    def __init__(self, stack: Stack):
        self.url = stack.env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        self.path = stack.services_dir / "postgres" / "postgres.log"

    def _set(self, value: str | None) -> None:
        import psycopg
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET log_statement = 'all'" if value else
                         "ALTER SYSTEM RESET log_statement")
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)

    def __enter__(self) -> StatementLog:
        self._set("all")
        return self

    def __exit__(self, *exc) -> None:
        self._set(None)

    def counted(self, action) -> tuple[float, int]:
        """The seconds action took and the statements logged meanwhile."""
        mark = self.path.stat().st_size
        started = time.monotonic()
        action()
        seconds = time.monotonic() - started
        time.sleep(0.3)  # the log is written by another process
        with open(self.path, "rb") as handle:
            handle.seek(mark)
            text = handle.read().decode(errors="replace")
        return seconds, sum(1 for line in text.splitlines()
                            if "LOG:  statement: " in line or "LOG:  execute " in line)


def listing(stack: Stack, sizes: Sizes) -> tuple[list[str], list[str]]:
    folder = fill_folder(stack, sizes.entries)
    doors = {protocol: stack.start_door(protocol, 1) for protocol in DOORS}
    methods = listing_methods(stack, doors, folder, sizes)
    rows = []
    try:
        with StatementLog(stack) as statements:
            for name, (prepare, action, finish, baseline) in methods.items():
                log(f"listing: {name}")
                prepare()
                measured = [statements.counted(action) for _ in range(sizes.listing_rounds)]
                finish()
                extra = median([statements.counted(baseline)[1] for _ in range(2)]) if baseline else 0
                rows.append((name, median([m[0] for m in measured]), median([m[1] for m in measured]) - extra))
    finally:
        stack.stop([d.item for d in doors.values()])
    lines = [f"#### Listing a folder of {sizes.entries:,} entries (median of {sizes.listing_rounds})", "",
             "| door and client | seconds per listing | SQL statements per listing |", "|---|---|---|"]
    lines += [f"| {name} | {seconds:.3f} | {count:.0f} |" for name, seconds, count in rows]
    lines += ["", "SQL statements: lines `statement:` / `execute` in PostgreSQL's own log with "
              "`log_statement = all` during each listing (every process counted; nothing else ran). "
              "A paramiko and an ftplib session are logged in before the timing; an OpenSSH `sftp` "
              "session is timed between `!date` stamps around its `ls -l`, and its statements are "
              "those of the session minus those of the same session without the `ls -l`. The portal "
              "runs in the bench process (Flask test client, signed in; 50 entries a page, so the "
              "whole folder is decrypted and sorted for any page)."]
    slowest = max(rows, key=lambda r: r[1])
    goals = [goal_line("listing < 1 s on every door", slowest[1] < 1.0,
                       f"slowest {slowest[0]}: {slowest[1]:.3f} s")]
    return lines, goals


def fill_folder(stack: Stack, entries: int) -> str:
    """/big with `entries` empty files, made through the core; its path."""
    from common.auth import authenticate
    from common.vfs import Principal, Workspace
    login = authenticate(stack.services, USER, stack.password, method="password", protocol="sftp", ip=HOST)
    ws = Workspace(stack.services, Principal.from_login(login))
    ws.make_dir("/big")
    log(f"listing: making {entries:,} empty files in /big")
    started = time.monotonic()
    for i in range(entries):
        ws.open_write(f"/big/entry-{i:05d}.txt").commit()
    log(f"    {entries / (time.monotonic() - started):.0f} files/s")
    return "/big"


def listing_methods(stack: Stack, doors: dict[str, Door], folder: str, sizes: Sizes) -> dict:
    """name: (prepare, list once, finish, the same without the listing or None)."""
    box: dict = {}
    nothing = lambda: None  # noqa: E731

    def sftp_login():
        box["sftp"] = SftpSession({"port": doors["sftp"].port, "user": USER, "password": stack.password})

    def ftps_login():
        box["ftps"] = FtpsSession({"port": doors["ftps"].port, "user": USER, "password": stack.password,
                                   "cert": str(stack.work / "tls" / "cert.pem")})

    def check(count: int) -> None:
        if count != sizes.entries:
            raise RuntimeError(f"a listing returned {count} entries, not {sizes.entries}")

    def openssh(with_ls: bool):
        batch = stack.work / f"ls-{with_ls}.batch"
        stamps = stack.work / "stamps.txt"
        stamp = f"!date +%s.%N >> {stamps}"
        batch.write_text(f"{stamp}\nls -l {folder}\n{stamp}\n" if with_ls else "pwd\n")

        def session():
            stamps.unlink(missing_ok=True)
            result = run(sftp_command(stack, doors["sftp"].port, batch), env=stack.client_env())
            if result.returncode:
                raise RuntimeError(f"sftp ls failed: {result.stderr.strip()[-300:]}")
            if with_ls:
                check(sum(1 for line in result.stdout.splitlines() if "entry-" in line))
                t0, t1 = (float(x) for x in stamps.read_text().split())
                box["openssh"].append(t1 - t0)
        return session

    box["openssh"] = []
    web = WebClient(stack, folder, sizes.entries)
    return {
        "SFTP, paramiko `listdir_attr`": (sftp_login, lambda: check(len(box["sftp"].sftp.listdir_attr(folder))),
                                          lambda: box["sftp"].close(), None),
        "SFTP, OpenSSH `sftp ls -l`": (nothing, openssh(True), nothing, openssh(False)),
        "FTPS, ftplib MLSD": (ftps_login, lambda: check(sum(1 for n, f in box["ftps"].ftp.mlsd(folder)
                                                            if f.get("type") == "file")),
                              nothing, None),
        "FTPS, ftplib LIST": (nothing, lambda: check(len(_ftp_lines(box["ftps"].ftp, folder))),
                              lambda: box["ftps"].close(), None),
        "web, files page 1 (by name)": (web.sign_in, lambda: web.page(1), nothing, None),
        "web, last files page (by name)": (nothing, lambda: web.page(web.last_page), web.close, None),
    }


def _ftp_lines(ftp, folder: str) -> list[str]:
    lines: list[str] = []
    ftp.retrlines(f"LIST {folder}", lines.append)
    return lines


class WebClient:
    """The portal in this process, through Flask's test client, signed in as the bench user."""

    def __init__(self, stack: Stack, folder: str, entries: int):
        self.stack, self.folder, self.entries = stack, folder, entries
        self.last_page = max((entries + 49) // 50, 1)

    def sign_in(self) -> None:
        from portal import create_app
        from tests.portal.conftest import PortalClient
        self.app = create_app(self.stack.settings)
        self.app.test_client_class = PortalClient
        self.client = self.app.test_client()
        response = self.client.sign_in(USER, self.stack.password)
        if response.status_code != 302:
            raise RuntimeError(f"portal sign-in answered {response.status_code}")
        from common.auth import authenticate
        from common.vfs import Principal, Workspace
        login = authenticate(self.stack.services, USER, self.stack.password, method="password",
                             protocol="web", ip=HOST)
        self.ref = Workspace(self.stack.services, Principal.from_login(login)).stat(self.folder).id

    def page(self, number: int) -> None:
        response = self.client.get(f"/files/folder/{self.ref}?page={number}")
        if response.status_code != 200 or "entry-" not in response.get_data(as_text=True):
            raise RuntimeError(f"files page {number} answered {response.status_code}")

    def close(self) -> None:
        self.app.extensions["sealdrop"].close()


# -- 4. ingest --------------------------------------------------------------------------------

def ingest(stack: Stack, sizes: Sizes) -> tuple[list[str], list[str]]:
    """Per worker count: the files spooled through each door (no worker running), then timed to `stored`."""
    source = stack.work / "ingest.bin"
    make_random_file(source, sizes.ingest_mib * MIB)
    doors = {protocol: stack.start_door(protocol, 1) for protocol in DOORS}
    env = stack.client_env()
    rows, door_rates = [], {protocol: [] for protocol in DOORS}
    try:
        for workers in sizes.ingest_workers:
            for protocol, door in doors.items():
                log(f"ingest: {sizes.ingest_files} x {sizes.ingest_mib} MiB up through {protocol}, no worker")
                commands = [stream_command(stack, door, "up", source, f"ingest-{workers}w-{protocol}-{i}.bin")
                            for i in range(sizes.ingest_files)]
                door_rates[protocol].append(mb_s(sizes.ingest_files * source.stat().st_size,
                                                 max(run_together(commands, env))))
            spooled = stack.spooled()
            log(f"ingest: {spooled} versions spooled; starting {workers} worker(s)")
            begun = time.monotonic()
            started = stack.start_workers(workers)
            try:
                stack.wait_workers_listening(started)
                listening = time.monotonic()
                stack.wait_stored()
            finally:
                stack.stop(started)
            seconds = time.monotonic() - listening
            rows.append((workers, spooled, mb_s(spooled * source.stat().st_size, seconds), seconds,
                         listening - begun))
            log(f"    {rows[-1][2]:.1f} MB/s")
    finally:
        stack.stop([d.item for d in doors.values()])
        source.unlink()
    fastest = max(DOORS, key=lambda p: max(door_rates[p]))
    fastest_rate = max(door_rates[fastest])
    lines = [f"#### Ingest: spool to object store ({sizes.ingest_files} x {sizes.ingest_mib} MiB spooled "
             "through each door with no worker running, then the workers started)", "",
             "| workers | versions | worker start-up s | then seconds to all `stored` | ingest MB/s "
             "| ingest / fastest door's upload |", "|---|---|---|---|---|---|"]
    lines += [f"| {w} | {n} | {up:.1f} | {s:.1f} | {rate:.1f} | {rate / fastest_rate:.2f} |"
              for w, n, rate, s, up in rows]
    lines += ["", "Door upload rates in the same run (all files of a door at once, MB/s, one figure per "
              "round): " + "; ".join(f"{p.upper()} {', '.join(f'{r:.1f}' for r in door_rates[p])}"
                                     for p in DOORS)
              + ". Ingest MB/s: the spooled bytes over the time from every worker listening on its "
              "queues (rq's `Listening on`; its start-up is the column before) to the last version "
              "`stored`."]
    best = max(rows, key=lambda r: r[2])
    goals = [goal_line("ingest keeps up with the fastest door's upload rate", best[2] >= fastest_rate,
                       f"{best[2]:.1f} MB/s with {best[0]} worker(s) vs {fastest.upper()} upload "
                       f"{fastest_rate:.1f} MB/s")]
    return lines, goals


# -- the run ----------------------------------------------------------------------------------

RUNNERS = {"concurrency": concurrency, "sessions": sessions, "listing": listing, "ingest": ingest}


def run_part(part: str, args: argparse.Namespace, sizes: Sizes, index: int) -> tuple[list[str], list[str]]:
    """One part on a stack of its own (fresh database, spool and store), stopped afterwards."""
    work = Path(tempfile.mkdtemp(prefix=f"sealdrop-load-{part}-"))
    ports = LoadPorts(args.port_base + 500 * index)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(remove_work_folder, work, args.keep)
        stack = Stack(work, ports, cleanup)
        cleanup.callback(log, f"{part}: stopping everything it started")
        started = time.monotonic()
        lines, goals = RUNNERS[part](stack, sizes)
        lines += ["", f"Part run time: {time.monotonic() - started:.0f} s."]
        return lines, goals


def report(args: argparse.Namespace, machine: dict, load_start: str, parts: dict, seconds: float) -> str:
    lines = [f"### Results: {date.today().strftime('%d %b %Y')}, `{command_line(args)}`", "", "#### Machine"]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    lines += [f"- load average at start: {load_start}; at end: {loadavg()}", "", "#### Goals", ""]
    lines += [goal for _, goals in parts.values() for goal in goals]
    for body, _ in parts.values():
        lines += ["", *body]
    lines += ["", f"Whole run: {seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def command_line(args: argparse.Namespace) -> str:
    text = ".venv/bin/python bench/load.py " + " ".join(args.parts)
    if args.quick:
        text += " --quick"
    if args.port_base != DEFAULT_PORT_BASE:
        text += f" --port-base {args.port_base}"
    return text + (" --append-docs" if args.append_docs else "")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", choices=[[], *PARTS], metavar="part",
                        help=f"any of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="a short check: smaller files, fewer streams, sessions and entries")
    parser.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE,
                        help=f"first port; each part uses 500 from its own base (default {DEFAULT_PORT_BASE})")
    parser.add_argument("--append-docs", action="store_true",
                        help="add the results to this benchmark's section of docs/benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (logs)")
    args = parser.parse_args()
    args.parts = [p for p in PARTS if p in args.parts] or list(PARTS)
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    if sys.argv[1:2] == ["client"]:
        return client_main()
    args = parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # unwinds like Ctrl-C: all is stopped
    sizes = QUICK if args.quick else Sizes()
    machine, load_start, started = machine_description(), loadavg(), time.monotonic()
    parts = {part: run_part(part, args, sizes, PARTS.index(part)) for part in args.parts}
    text = report(args, machine, load_start, parts, time.monotonic() - started)
    print(text)
    if args.append_docs:
        append_to_section(DOCS_SECTION, text)
        log(f"appended to {DOCS.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
