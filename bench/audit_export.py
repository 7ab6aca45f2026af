"""The nightly audit export at scale: our whole export against XlsxWriter alone, same rows.

Run from the repository root, with the project's virtualenv:

    python bench/audit_export.py [--events 1000000] [--port-base 47300]

It starts the embedded PostgreSQL, Valkey and SeaweedFS (devstack.backing, data in a temporary
folder), migrates, creates an account and loads `--events` audit events into one UTC day with
a valid hash chain (COPY, straight into audit_events; names and paths are sealed once per
distinct value from small pools, so loading stays cheap while the export still decrypts every
row). `audit verify` logic checks the chain before measuring. Then, each in a fresh process:

- ours: `export_day` (the server-side cursor, decryption, CSV and XLSX, both uploaded
  through the Workspace, encrypted into the spool; with `--ingest inline` also sent on to the
  object store by the same process, as on hosts whose spool is not durable);
- XlsxWriter alone: the same rows, made in clear as they are written, written cell by cell with
  XlsxWriter's public calls (`write_cells`) in constant-memory mode to a discarding sink (no
  CSV, no database, no encryption). Ours writes the same XML per row itself (see
  `_StreamedWorksheet.write_event_row`).

For each: wall time, peak RSS (VmHWM) and the peak size of the XLSX temp folder on tmpfs
(sampled every 50 ms). Everything started is stopped at the end, on errors too.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from devstack import backing  # noqa: E402

DAY = date(2026, 1, 15)
USERS = 50
PATHS = 2000
ACTIONS = (("login", None), ("upload", "in"), ("download", "out"), ("download", "out"), ("login_failed", None),
           ("mkdir", None), ("rename", None), ("logout", None))
MiB = 1024 * 1024


def rows(count: int):
    """The benchmark's events, deterministic: (at, user index, ip, protocol, action, direction,
    path index, bytes, duration, status, detail)."""
    start = datetime.combine(DAY, datetime.min.time(), tzinfo=timezone.utc)
    step = 86_000 / max(count, 1)
    for i in range(count):
        action, direction = ACTIONS[i % len(ACTIONS)]
        transfer = direction is not None
        yield (start + timedelta(seconds=i * step), i % USERS, f"10.{i % 200}.{(i // 200) % 250}.{i % 250 + 1}",
               ("web", "ftps", "sftp")[i % 3], action, direction, i % PATHS if action != "login" else None,
               (i * 7919) % 50_000_000 if transfer else None, i % 9000 if transfer else None,
               "failed" if action == "login_failed" else "ok", None if i % 97 else "-checked=1+1")


def user_name(index: int) -> str:
    return f"user{index:03d}"


def path_name(index: int) -> str:
    # Some names are formula injections, as customers' files sometimes are.
    return f"/clients/batch-{index // 100:03d}/" + ("=cmd|' -C calc'!A0.txt" if index % 50 == 0 else f"report-{index}.pdf")


# -- loading ------------------------------------------------------------------------------------
def load_events(services, account_id: int, count: int) -> float:
    """COPY `count` chained events into the account; returns the seconds taken."""
    from common import audit
    from common.models import Account
    started = time.monotonic()
    with services.db.session() as session:
        keys = services.keyring.account(session, account_id)
        names = [keys.seal_text(user_name(i), "audit-username") for i in range(USERS)]
        paths = [keys.seal_text(path_name(i), "audit-path") for i in range(PATHS)]
        account = session.get(Account, account_id, with_for_update=True)
        seq, prev = account.audit_count, account.audit_head
        raw = session.connection().connection.driver_connection
        columns = ("account_id", "seq", "at", "user_id", "username_sealed", "ip", "protocol", "action",
                   "direction", "path_sealed", "bytes", "duration_ms", "status", "detail", "prev_hash", "hash")
        with raw.cursor() as cursor, cursor.copy(f"COPY audit_events ({', '.join(columns)}) FROM STDIN") as copy:
            for at, user, ip, protocol, action, direction, path, nbytes, duration, status, detail in rows(count):
                seq += 1
                row = SimpleNamespace(
                    prev_hash=prev, account_id=account_id, seq=seq, at=at, user_id=1000 + user,
                    username_sealed=names[user], ip=ip, protocol=protocol, action=action, direction=direction,
                    path_sealed=paths[path] if path is not None else None, nbytes=nbytes, duration_ms=duration,
                    status=status, detail=detail)
                row.hash = audit.event_hash(row)
                copy.write_row((account_id, seq, at, row.user_id, row.username_sealed, ip, protocol, action,
                                direction, row.path_sealed, nbytes, duration, status, detail, prev, row.hash))
                prev = row.hash
        account.audit_head, account.audit_count = prev, seq
    return time.monotonic() - started


# -- measuring (in a fresh process each) ---------------------------------------------------------
class TmpfsPeak:
    """The peak bytes under our XLSX temp folders in the tmpfs, sampled on a thread."""

    def __init__(self, root: str, prefix: str):
        self.root, self.prefix, self.peak, self.running = root, prefix, 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        while self.running:
            total = 0
            for folder in Path(self.root).glob(self.prefix + "*"):
                for path in folder.rglob("*"):
                    with contextlib.suppress(OSError):
                        total += path.stat().st_blocks * 512
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_ours(env: dict, account_id: int) -> dict:
    from common.audit_export import export_day
    from common.config import load_settings
    from common.services import Services
    services = Services(load_settings(env))
    tmp = TmpfsPeak(services.settings.export_tmpdir, "sealdrop-xlsx-")
    started = time.monotonic()
    result = export_day(services, account_id, DAY)
    seconds = time.monotonic() - started
    return dict(seconds=seconds, rss=peak_rss(), tmpfs=tmp.stop(), events=result.events)


def measure_xlsxwriter(count: int, tmpdir: str) -> dict:
    import xlsxwriter

    from common.audit_export import write_cells

    class Discard:
        position = 0

        def write(self, data):
            self.position += len(data)
            return len(data)

        def tell(self):
            return self.position

        def flush(self):
            pass

    folder = tempfile.mkdtemp(prefix="bench-xlsx-", dir=tmpdir)
    tmp = TmpfsPeak(tmpdir, "bench-xlsx-")
    names, paths = [user_name(i) for i in range(USERS)], [path_name(i) for i in range(PATHS)]
    # The rows are made as they are written (a list of a million would dominate the RSS).
    data = ((at.replace(tzinfo=None), names[u], ip, proto, action, direction or "",
             paths[p] if p is not None else "", nbytes, duration, status, detail or "")
            for at, u, ip, proto, action, direction, p, nbytes, duration, status, detail in rows(count))
    started = time.monotonic()
    book = xlsxwriter.Workbook(Discard(), {"constant_memory": True, "tmpdir": folder,
                                           "strings_to_formulas": False, "strings_to_urls": False})
    when = book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss.000"})
    sheet = book.add_worksheet("Events")
    for r, values in enumerate(data, start=1):
        write_cells(sheet, r, values, when)  # XlsxWriter's own cell calls, nothing else
    book.close()
    seconds = time.monotonic() - started
    os.rmdir(folder)
    return dict(seconds=seconds, rss=peak_rss(), tmpfs=tmp.stop())


def run_child(kind: str, env: dict, args) -> dict:
    output = subprocess.run([sys.executable, __file__, "--child", kind, "--events", str(args.events),
                             "--account", str(args.account)], env={**os.environ, **env}, cwd=REPO_ROOT,
                            capture_output=True, text=True, check=False)
    if output.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def prepare(env: dict) -> int:
    from flask_migrate import upgrade

    from common import accounts
    from common.config import load_settings
    from common.services import Services
    from portal import create_app
    app = create_app(load_settings(env))
    with app.app_context():
        upgrade()
    app.extensions["sealdrop"].close()
    services = Services(load_settings(env))
    services.store.ensure_bucket()
    with services.db.session() as session:
        account, _ = accounts.create_account(session, services.keyring, name="bench", tier="t5",
                                             admin_username="benchadmin", admin_email="b@example.test",
                                             admin_password="Bench-" + secrets.token_hex(8))
        account_id = account.id
    return account_id, services


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--port-base", type=int, default=47300)
    parser.add_argument("--ingest", choices=("worker", "inline"), default="worker",
                        help="INGEST_MODE: worker (the default) leaves the upload to the store to the ingest "
                             "worker; inline makes the export's process do it too")
    parser.add_argument("--child", choices=("ours", "xlsxwriter"))
    parser.add_argument("--account", type=int, default=0)
    args = parser.parse_args()
    if args.child == "ours":
        print(json.dumps(measure_ours(dict(os.environ), args.account)))
        return
    if args.child == "xlsxwriter":
        print(json.dumps(measure_xlsxwriter(args.events, os.environ.get("EXPORT_TMPDIR", "/dev/shm"))))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    services_dir = work / "services"
    ports = backing.Ports(postgres=args.port_base, valkey=args.port_base + 1, s3=args.port_base + 10)
    try:
        service_env = backing.start_services(services_dir, ports, backing.ServiceSecrets.generate(), durable=False)
        env = {"APP_ENV": "test", **service_env, "S3_BUCKET": "bench",
               "MASTER_KEYS": "b1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
               "SECRET_KEY": secrets.token_hex(16), "SPOOL_DIR": str(work / "spool"), "SPOOL_ID": "bench",
               "INGEST_MODE": args.ingest}
        args.account, services = prepare(env)
        print(f"loading {args.events} events ...", flush=True)
        load_seconds = load_events(services, args.account, args.events)
        from common import audit
        with services.db.session() as session:
            started = time.monotonic()
            report = audit.verify_chain(session, args.account)
            verify_seconds = time.monotonic() - started
        assert report.ok, report.problem
        services.close()
        print(f"loaded in {load_seconds:.1f} s; chain verified in {verify_seconds:.1f} s", flush=True)
        alone = run_child("xlsxwriter", env, args)
        ours = run_child("ours", env, args)
        assert ours["events"] == args.events, ours
        report_figures(args, load_seconds, verify_seconds, ours, alone)
    finally:
        backing.stop_services(services_dir)
        subprocess.run(["rm", "-rf", str(work)], check=False)


def report_figures(args, load_seconds, verify_seconds, ours, alone) -> None:
    def mib(n):
        return f"{n / MiB:.0f} MiB"
    ratio = ours["seconds"] / alone["seconds"]
    print(f"""
Run on {datetime.now(timezone.utc):%d %b %Y} with --events {args.events}
Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {" ".join(f"{x:.2f}" for x in os.getloadavg())} (1, 5, 15 min),
Python {platform.python_version()}
load (COPY, chained): {load_seconds:.1f} s; audit verify: {verify_seconds:.1f} s; INGEST_MODE={args.ingest}

| | wall time | peak RSS | peak tmpfs | RSS + tmpfs |
|---|---|---|---|---|
| our export (CSV + XLSX, decrypt, upload) | {ours['seconds']:.1f} s | {mib(ours['rss'])} | {mib(ours['tmpfs'])} | {mib(ours['rss'] + ours['tmpfs'])} |
| XlsxWriter alone (same rows, XLSX only) | {alone['seconds']:.1f} s | {mib(alone['rss'])} | {mib(alone['tmpfs'])} | {mib(alone['rss'] + alone['tmpfs'])} |

ratio ours / XlsxWriter alone: {ratio:.2f}x (goal <= 1.25x); RSS + tmpfs goal < 200 MiB
""", flush=True)


if __name__ == "__main__":
    main()
