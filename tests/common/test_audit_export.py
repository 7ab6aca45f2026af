"""The daily audit export: files in /Audit Logs, their format and safety, the chain head, the
no-plaintext rule for XlsxWriter's temp files, and the clock's nightly fan-out with catch-up."""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import subprocess
import sys
import zipfile
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import openpyxl
import pytest
import xlsxwriter
from rq import Queue
from rq.job import Job
from sqlalchemy import select

import common.audit
from common import audit
from common.audit_export import COLUMNS, day_bounds, export_day, memory_tmpdir, write_cells, write_xlsx
from common.errors import ConfigError, IntegrityFailure
from common.jobs import audit_exports
from common.jobs.audit_exports import enqueue_due_exports, export_job_id, export_fan_out
from common.jobs.registry import MAINTENANCE_QUEUE
from common.models import Account, AuditEvent, AuditExport
from common.services import Services
from common.vfs import Principal, Workspace
from tests.factories import admin_workspace, download, upload, wait_for
from tests.links import make_link, owner_workspace, shared_projects
from tests.plaintext import Scanner, file_blocks, needles_for

REPO_ROOT = Path(__file__).resolve().parents[2]
INJECTION = "=cmd|' /C calc'!A0.txt"
# Days ahead of the real one: the account's own creation events stay before them, so the
# chain's times run forward as in service.
DAY = date.today() + timedelta(days=40)


def at(day_offset: int, *hms) -> datetime:
    return datetime.combine(DAY + timedelta(days=day_offset), datetime.min.time(), tzinfo=timezone.utc).replace(
        **dict(zip(("hour", "minute", "second", "microsecond"), hms)))


def iso(day: date) -> str:
    return day.isoformat()


class _Clock:
    """What `datetime.now` returns inside common.audit (events of past days without editing rows)."""

    def __init__(self):
        self.at = None


@pytest.fixture
def clock(monkeypatch):
    # The audit module stamps events with datetime.now(); a test that needs yesterday's events
    # moves that one clock (the rows are then recorded and chained exactly as in service).
    moment = _Clock()

    class ClockedDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return moment.at if moment.at is not None else datetime.now(tz)

    monkeypatch.setattr(common.audit, "datetime", ClockedDatetime)
    return moment


def flask(env: dict, *args: str) -> subprocess.CompletedProcess:
    """The operator CLI as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "flask", "--app", "portal", *args], cwd=REPO_ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def record(services, account, action, *, at, **fields):
    with services.db.session() as session:
        audit.record(session, services.keyring, audit.Event(
            action=action, protocol=fields.pop("protocol", "sftp"), account_id=account.id,
            user_id=account.admin_id, username=account.admin_username, **fields))


def system_read(services, account_id, path) -> bytes:
    return download(Workspace(services, Principal.system(account_id)), path)


def csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def day_events(services, account, clock):
    """Events before, on and after DAY (the export must keep only DAY's)."""
    ws = admin_workspace(services, account, door="sftp")
    ws = Workspace(services, dataclasses.replace(ws.me, ip="203.0.113.7"))
    clock.at = at(-1, 23, 59, 59)
    record(services, account, "login", at=clock.at, ip="203.0.113.7")
    clock.at = at(0, 0, 0, 0, 500000)
    record(services, account, "login", ip="203.0.113.7", at=clock.at)
    record(services, account, "login_failed", ip="::ffff:198.51.100.2", status="failed", at=clock.at)
    clock.at = at(0, 12, 30)
    ws.make_dir("/" + INJECTION.split("/")[0])  # the name holds a slash: a folder, then the file
    upload(ws, "/" + INJECTION, b"x" * 1000)
    download(ws, "/" + INJECTION)
    ws.rename("/" + INJECTION, "/@SUM(1+1)")
    record(services, account, "denied", ip="203.0.113.7", status="refused", detail=INJECTION, at=clock.at)
    clock.at = at(0, 23, 59, 59, 999000)
    record(services, account, "logout", ip="203.0.113.7", detail="-2+3", at=clock.at)
    clock.at = at(1, 0, 0)
    record(services, account, "login", ip="203.0.113.7", at=clock.at)
    clock.at = None


def test_a_day_is_exported_to_csv_and_xlsx_with_only_its_events(services, account, clock, test_env):
    day_events(services, account, clock)
    clock.at = at(1, 0, 5)  # the nightly run: its own events belong to the next day
    result = export_day(services, account.id, DAY)
    folder = f"/Audit Logs/{DAY:%Y}/audit-{iso(DAY)}"
    assert result.paths == (folder + ".csv", folder + ".xlsx")
    assert result.events == 8

    rows = csv_rows(system_read(services, account.id, result.paths[0]))
    assert tuple(rows[0]) == COLUMNS
    events, last = rows[1:-1], rows[-1]
    assert [r[4] for r in events] == ["login", "login_failed", "mkdir", "upload", "download", "rename",
                                      "denied", "logout"]
    assert events[0][0] == f"{iso(DAY)}T00:00:00.500Z" and events[-1][0] == f"{iso(DAY)}T23:59:59.999Z"
    assert [r[2] for r in events] == ["203.0.113.7", "198.51.100.2", *["203.0.113.7"] * 6]  # no port
    assert events[3][3:8] == ["sftp", "upload", "in", "/" + INJECTION, "1000"]
    assert events[4][5] == "out" and events[4][7] == "1000"
    assert events[5][6] == f"/{INJECTION} -> /@SUM(1+1)"
    assert events[6][10] == "'" + INJECTION and events[7][10] == "'-2+3"  # formula starts neutralised
    assert last[4] == "chain_head" and bytes.fromhex(last[10]) == result.chain_head

    book = openpyxl.load_workbook(io.BytesIO(system_read(services, account.id, result.paths[1])))
    sheet = book["Events"]
    values = list(sheet.iter_rows(values_only=True))
    assert values[0] == COLUMNS and len(values) == 9
    assert sheet.freeze_panes == "A2" and sheet.auto_filter.ref == "A1:K9"
    assert sheet["A2"].is_date and sheet["A2"].value == at(0, 0, 0, 0, 500000).replace(tzinfo=None)
    assert values[4][6] == "/" + INJECTION and sheet["G5"].data_type == "s"
    assert values[7][10] == INJECTION and sheet["K8"].data_type == "s"  # text, shown as typed
    assert values[8][10] == "-2+3" and sheet["K9"].data_type == "s"
    summary = {row[0]: row for row in book["Summary"].iter_rows(values_only=True) if row[0]}
    assert summary[account.admin_username][1:] == (1, 1, 1, 1, 1000, 1000)
    assert summary["events"][1] == 8 and summary["chain_head"][1] == result.chain_head.hex()

    ready = Job.fetch(f"export-ready-{account.id}-{iso(DAY)}", connection=services.redis)  # the admins' mail
    assert ready.func_name == "common.jobs.notify.export_ready"
    ready.delete()

    verified = flask(test_env, "audit", "verify", account.name, "--until", iso(DAY))
    assert verified.returncode == 0, verified.stderr
    assert f"head {result.chain_head.hex()}" in verified.stdout
    with services.db.session() as session:
        assert session.get(Account, account.id).audit_head != result.chain_head  # later events exist


def test_no_cell_is_a_formula_in_the_xlsx(services, account, clock):
    day_events(services, account, clock)
    xlsx = system_read(services, account.id, export_day(services, account.id, DAY).paths[1])
    with zipfile.ZipFile(io.BytesIO(xlsx)) as archive:
        sheets = [archive.read(name) for name in archive.namelist() if name.startswith("xl/worksheets/")]
    assert sheets and not any(b"<f>" in sheet or b"<f " in sheet for sheet in sheets)
    assert not any(b"hyperlink" in sheet.lower() for sheet in sheets)


TRICKY_TEXTS = ("a & b < c > d \"e\" 'f'", "tab\there\x01\x1f", "_x0041_ literal", "  padded  ", "line\nbreak",
                "naïve 日本 😀", "😀" * 20_000, "x" * 40_000, INJECTION)


def _sheet_values(data: bytes) -> list[tuple]:
    return list(openpyxl.load_workbook(io.BytesIO(data))["Events"].iter_rows(min_row=2, values_only=True))


def test_xlsx_rows_read_back_as_xlsxwriter_writes_them_cell_by_cell():
    # The export writes each row's XML itself; every cell must read back as XlsxWriter's own
    # write_datetime / write_string / write_number make it (escapes, control characters,
    # whitespace, the 32,767-unit limit), and text that looks like rich-string XML stays text.
    when = datetime(2026, 1, 15, 3, 4, 5, 678000, tzinfo=timezone.utc)
    views = [audit.EventView(seq, when, 1, text, "203.0.113.7", "sftp", "upload", "in", text, 12_345, 67, "ok",
                             text if seq % 2 else None, bytes(32)) for seq, text in enumerate(TRICKY_TEXTS, start=1)]
    ours = io.BytesIO()
    write_xlsx(views, ours, summary=None, chain_head=None)
    stock = io.BytesIO()
    book = xlsxwriter.Workbook(stock, {"constant_memory": True, "tmpdir": "/dev/shm", "strings_to_formulas": False,
                                       "strings_to_urls": False, "strings_to_numbers": False})
    sheet, stamp = book.add_worksheet("Events"), book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss.000"})
    for row, view in enumerate(views, start=1):
        write_cells(sheet, row, (when.replace(tzinfo=None), view.username, view.ip, view.protocol, view.action,
                                 view.direction, view.path, view.bytes, view.duration_ms, view.status,
                                 view.detail or ""), stamp)
    book.close()
    assert _sheet_values(ours.getvalue()) == _sheet_values(stock.getvalue())
    rich = [dataclasses.replace(views[0], username="<r><t>x</t></r>")]
    rich_out = io.BytesIO()
    write_xlsx(rich, rich_out, summary=None, chain_head=None)
    assert _sheet_values(rich_out.getvalue())[0][1] == "<r><t>x</t></r>"


def test_a_tampered_sealed_path_stops_the_export(services, account, clock):
    # The export opens every name and path with one cipher per export: tampering still fails.
    day_events(services, account, clock)
    since, until = day_bounds(DAY)
    with services.db.session() as session:
        row = session.scalars(select(AuditEvent).where(AuditEvent.account_id == account.id, AuditEvent.at >= since,
                                                       AuditEvent.at < until, AuditEvent.path_sealed.is_not(None))
                              .order_by(AuditEvent.seq).limit(1)).one()
        row.path_sealed = row.path_sealed[:-1] + bytes([row.path_sealed[-1] ^ 1])
    with pytest.raises(IntegrityFailure):
        export_day(services, account.id, DAY)
    listing = Workspace(services, Principal.system(account.id)).list_dir(f"/Audit Logs/{DAY:%Y}")
    assert [entry.name for entry in listing] == []  # both uploads aborted


def test_an_empty_day_gets_both_files_and_carries_the_head_over(services, account, clock):
    clock.at = at(0, 9, 0)
    record(services, account, "login", ip="203.0.113.7", at=clock.at)
    with services.db.session() as session:
        head = session.get(Account, account.id).audit_head
    clock.at = at(2, 0, 5)  # the export runs two days on: the day between is empty
    result = export_day(services, account.id, DAY + timedelta(days=1))
    assert result.events == 0 and result.chain_head == head
    rows = csv_rows(system_read(services, account.id, result.paths[0]))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 2 and rows[1][10] == head.hex()
    book = openpyxl.load_workbook(io.BytesIO(system_read(services, account.id, result.paths[1])))
    assert list(book["Events"].iter_rows(values_only=True)) == [COLUMNS]
    summary = {row[0]: row[1] for row in book["Summary"].iter_rows(values_only=True) if row[0]}
    assert summary["events"] == 0 and summary["chain_head"] == head.hex()


def test_a_rerun_replaces_the_days_files(services, account, clock, test_env):
    day_events(services, account, clock)
    first = export_day(services, account.id, DAY)
    clock.at = at(0, 18, 0)  # a late arrival in that day
    record(services, account, "download", ip="203.0.113.9", direction="out", bytes=5, at=clock.at)
    clock.at = None
    printed = flask(test_env, "audit", "export", account.name, "--date", iso(DAY))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.splitlines()[:2] == list(first.paths)
    listing = Workspace(services, Principal.system(account.id)).list_dir(f"/Audit Logs/{DAY:%Y}")
    assert sorted(e.name for e in listing) == [f"audit-{iso(DAY)}.csv", f"audit-{iso(DAY)}.xlsx"]
    rows = csv_rows(system_read(services, account.id, first.paths[0]))
    assert len(rows) == 1 + 9 + 1 and "203.0.113.9" in [r[2] for r in rows]
    with services.db.session() as session:
        exports = session.scalars(select(AuditExport).where(AuditExport.account_id == account.id)).all()
        assert [(e.day, e.events) for e in exports] == [(DAY, 9)]
        assert exports[0].chain_head != first.chain_head


def test_xlsx_temp_files_refuse_storage_on_disk(tmp_path):
    with pytest.raises(ConfigError):
        memory_tmpdir(str(tmp_path))
    with pytest.raises(ConfigError):
        write_xlsx([], io.BytesIO(), summary=None, chain_head=None, tmpdir=str(tmp_path))
    assert memory_tmpdir("/dev/shm") == "/dev/shm"


def test_no_plaintext_reaches_disk_while_exporting(services, account, tmp_path):
    # Every file the export opens for writing is watched (a Python audit hook): each must be on
    # memory-backed storage or be the spool's ciphertext; the spool and temp folders are then
    # scanned for the marker in any encoding.
    marker = "PLAINTEXT-MARKER-" + os.urandom(6).hex()
    ws = admin_workspace(services, account, door="sftp")
    upload(ws, f"/{marker}.txt", b"data")
    written = []
    watching = [True]
    others = set(Path("/dev/shm").glob("sealdrop-xlsx-*"))  # another process's export, if any

    def watch(event, args):
        if watching[0] and event == "open" and isinstance(args[0], (str, bytes)) and args[1] not in (None, "r", "rb"):
            written.append(os.fsdecode(args[0]))
        if watching[0] and event == "os.open" and args[2] & (os.O_WRONLY | os.O_RDWR):
            written.append(os.fsdecode(args[0]))

    sys.addaudithook(watch)
    try:
        result = export_day(services, account.id, datetime.now(timezone.utc).date())
    finally:
        watching[0] = False
    assert written, "the hook saw the export's temp files"
    spool = os.path.realpath(services.settings.spool_dir)
    for path in written:
        real = os.path.realpath(path)
        assert real.startswith("/dev/shm/") or real.startswith(spool + "/"), real
    scanner = Scanner(needles_for(marker))
    for folder in (Path(spool), Path("/tmp"), tmp_path):
        for path in folder.rglob("*"):
            if path.is_file():
                assert not scanner.hits(file_blocks(path)), path
    assert marker in system_read(services, account.id, result.paths[0]).decode()
    assert set(Path("/dev/shm").glob("sealdrop-xlsx-*")) <= others  # ours is gone


# -- the schedule ---------------------------------------------------------------------------------

def test_the_schedule_holds_the_nightly_fan_out():
    from common.jobs import schedules
    entry = next(s for s in schedules.SCHEDULES if s["name"] == "audit-export-fan-out")
    assert entry["func"] is export_fan_out and entry["cron"] == "5 0 * * *"
    assert export_fan_out.job_spec.queue == MAINTENANCE_QUEUE
    assert audit_exports.export_audit_day.job_spec.timeout >= 3600


@pytest.fixture
def fresh(fresh_settings):
    svc = Services(fresh_settings)
    yield svc
    svc.close()


def _make_account(svc: Services, created: datetime):
    from common import accounts
    with svc.db.session() as session:
        account, _ = accounts.create_account(session, svc.keyring, name="acct-" + os.urandom(4).hex(), tier="t5",
                                             admin_username="adm" + os.urandom(4).hex(),
                                             admin_email="a@example.test", admin_password="Correct-horse-9-battery")
        account.created_at = created
        return account.id


def _clear(svc: Services, account_id: int, days) -> None:
    for day in days:
        Job.fetch(export_job_id(account_id, day), connection=svc.redis).delete()


def test_the_fan_out_queues_yesterday_and_catches_up_a_skipped_day(fresh, monkeypatch):
    today = date(2026, 3, 20)
    old = _make_account(fresh, datetime(2025, 1, 1, tzinfo=timezone.utc))
    new = _make_account(fresh, datetime(2026, 3, 18, 15, 0, tzinfo=timezone.utc))
    with fresh.db.session() as session:
        for day in (date(2026, 3, 17), date(2026, 3, 19)):  # the run of the 18th was missed
            session.add(AuditExport(account_id=old, day=day, events=0, chain_head=bytes(32)))
        session.flush()
        old_due = audit_exports.due_days(session, old, date(2025, 1, 1), today)
        assert date(2026, 3, 18) in old_due and date(2026, 3, 19) not in old_due
        assert old_due[0] == today - timedelta(days=audit_exports.CATCH_UP_DAYS)  # capped
        assert audit_exports.due_days(session, new, date(2026, 3, 18), today) == [
            date(2026, 3, 18), date(2026, 3, 19)]  # not before its creation
    try:
        queued = enqueue_due_exports(fresh, today)
        assert queued == len(old_due) + 2
        assert enqueue_due_exports(fresh, today) == 0  # still waiting: not queued twice
        job = Job.fetch(export_job_id(old, date(2026, 3, 18)), connection=fresh.redis)
        assert job.origin == MAINTENANCE_QUEUE and job.args == (old, "2026-03-18")
        # The queued job as a worker runs it (in this process, on these services).
        monkeypatch.setattr(audit_exports, "worker_services", lambda: fresh)
        job.perform()
        with fresh.db.session() as session:
            assert session.scalar(select(AuditExport.events).where(
                AuditExport.account_id == old, AuditExport.day == date(2026, 3, 18))) == 0
            assert date(2026, 3, 18) not in audit_exports.due_days(session, old, date(2025, 1, 1), today)
        assert Workspace(fresh, Principal.system(old)).stat("/Audit Logs/2026/audit-2026-03-18.xlsx")
    finally:
        _clear(fresh, old, old_due)
        _clear(fresh, new, [date(2026, 3, 18), date(2026, 3, 19)])


def _tz_where_it_is_almost(hour: int, minute: int) -> str:
    """A POSIX TZ whose local time reaches hour:minute a few seconds from now (cron reads local time)."""
    now = datetime.now(timezone.utc)
    target = now.replace(hour=hour, minute=minute, second=0, microsecond=0) - timedelta(seconds=4)
    offset = int((target - now).total_seconds()) % 86400
    if offset > 43200:
        offset -= 86400
    sign = "-" if offset >= 0 else "+"  # POSIX: the sign is west-positive
    h, rest = divmod(abs(offset), 3600)
    return f"<CLK>{sign}{h:02d}:{rest // 60:02d}:{rest % 60:02d}"


def test_the_real_clock_enqueues_the_fan_out(fresh, test_env):
    # `rq cron common/jobs/schedules.py`, as the Procfile's clock runs it, against the test
    # Redis. Its cron expressions follow the process's local time, so the test gives it a time
    # zone where 00:05 comes within seconds: the real schedule fires, nothing is sped up.
    default = Queue(MAINTENANCE_QUEUE, connection=fresh.redis)
    before = set(default.get_job_ids())
    env = {**os.environ, **test_env, "TZ": _tz_where_it_is_almost(0, 5), "RQ_REDIS_URL": fresh.settings.redis_url,
           "PYTHONPATH": str(REPO_ROOT)}
    clock = subprocess.Popen([str(Path(sys.executable).with_name("rq")), "cron", "common/jobs/schedules.py"],
                             cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        found = []

        def fan_out_queued():
            for job_id in set(default.get_job_ids()) - before:
                job = Job.fetch(job_id, connection=fresh.redis)
                if job.func_name == "common.jobs.audit_exports.export_fan_out":
                    found.append(job)
            return found
        wait_for(fan_out_queued, timeout=90, step=0.2)
        job = found[0]
        assert job.origin == MAINTENANCE_QUEUE and job.args == ()
    finally:
        clock.terminate()
        output, _ = clock.communicate(timeout=30)
        for job_id in set(default.get_job_ids()) - before:  # what our clock queued is ours to remove
            Job.fetch(job_id, connection=fresh.redis).delete()
    assert clock.returncode is not None, output


# -- every door ------------------------------------------------------------------------------------

def test_every_door_is_exported_and_read_back_over_sftp(request, services, account, clock, test_env,
                                                        ftps_server, sftp_server):
    from tests.portal.web_door import web_door
    from tests.transfer import ftps_door, sftp_door
    ftps_ip, sftp_ip = "127.0.0.21", "127.0.0.22"
    web = web_door(request, services, account)
    web_ip = web.client.environ_base["REMOTE_ADDR"]
    web.upload("/web.txt", b"w" * 11)
    assert web.download("/web.txt") == b"w" * 11
    ftp = ftps_door.connect(ftps_server, account.admin_username, account.password, source=ftps_ip)
    ftps = ftps_door.FTPSDoor(ftp)
    ftps.mkdir("/" + INJECTION.split("/")[0])
    ftps.upload("/" + INJECTION, b"f" * 22)
    assert ftps.download("/" + INJECTION) == b"f" * 22
    ftps_door.quit_quietly(ftp)
    transport, client = sftp_door.connect(sftp_server.port, account.admin_username, password=account.password,
                                          source=sftp_ip)
    sftp = sftp_door.SftpDoor(client)
    sftp.upload("/sftp.txt", b"s" * 33)
    assert sftp.download("/sftp.txt") == b"s" * 33
    transport.close()
    link_client = request.getfixturevalue("web_app").test_client()
    link_ip = link_client.environ_base["REMOTE_ADDR"]
    _, token = make_link(services, account, shared_projects(services, account, "read"))
    plan = owner_workspace(services, account).stat("/projects/plan.txt").id
    assert link_client.get(f"/s/{token}/item/{plan}/download").data == b"the plan"
    today = datetime.now(timezone.utc).date()
    wait_for(lambda: {e.protocol for e in _today(services, account, today) if e.action == "logout"} >= {"ftps", "sftp"})
    expected = [_row(e) for e in _today(services, account, today)]

    clock.at = datetime.combine(today + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc).replace(minute=5)
    first = export_day(services, account.id, today)
    again = export_day(services, account.id, today)  # a re-run replaces the files
    assert again.paths == first.paths and again.chain_head == first.chain_head

    transport, client = sftp_door.connect(sftp_server.port, account.admin_username, password=account.password)
    try:
        folder = f"/Audit Logs/{today:%Y}"
        assert sorted(client.listdir(folder)) == [f"audit-{today}.csv", f"audit-{today}.xlsx"]
        csv_data = client.open(first.paths[0]).read()
        xlsx_data = client.open(first.paths[1]).read()
    finally:
        transport.close()
        wait_for(lambda: [e for e in _today(services, account, today + timedelta(days=1)) if e.action == "logout"])
        clock.at = None  # the reading session belongs to the next day too, as it would at 00:05

    rows = csv_rows(csv_data)
    assert tuple(rows[0]) == COLUMNS and rows[-1][4] == "chain_head"
    assert [tuple(r[:8]) for r in rows[1:-1]] == [_csv_cells(e) for e in expected]  # exactly the day's events
    book = openpyxl.load_workbook(io.BytesIO(xlsx_data))
    sheet_rows = list(book["Events"].iter_rows(values_only=True))[1:]
    assert [r[1:8] for r in sheet_rows] == [e[1:] for e in expected]
    # Date cells are days as floating point: the millisecond survives, give or take one.
    assert all(abs(r[0] - e[0]) <= timedelta(milliseconds=1) for r, e in zip(sheet_rows, expected))
    address_of = {r[3:8]: r[2] for r in expected}  # (protocol, action, direction, path, bytes) -> IP
    for protocol, ip, name, size in (("web", web_ip, "/web.txt", 11), ("ftps", ftps_ip, "/" + INJECTION, 22),
                                     ("sftp", sftp_ip, "/sftp.txt", 33)):
        assert address_of[(protocol, "upload", "in", name, size)] == ip  # the address, no port
        assert address_of[(protocol, "download", "out", name, size)] == ip
        assert (ip, protocol, "login") in {r[2:5] for r in expected}
    assert (link_ip, "link", "download", "out", 8) in {(r[2], *r[3:6], r[7]) for r in expected}
    injected = [r for r in sheet_rows if r[6] == "/" + INJECTION]
    assert injected and all(c.data_type == "s" for row in book["Events"].iter_rows(min_col=7, max_col=7)
                            for c in row if c.value is not None)
    with zipfile.ZipFile(io.BytesIO(xlsx_data)) as archive:
        assert not any(b"<f>" in archive.read(n) for n in archive.namelist() if n.startswith("xl/worksheets/"))

    with services.db.session() as session:
        assert session.scalars(select(AuditExport.events).where(AuditExport.account_id == account.id)).all() == [
            len(expected)]
    summary = {row[0]: row[1] for row in book["Summary"].iter_rows(values_only=True) if row[0]}
    verified = flask(test_env, "audit", "verify", account.name, "--until", today.isoformat())
    assert verified.returncode == 0, verified.stderr
    assert f"{len(expected)} events, head {summary['chain_head']}." in verified.stdout
    assert bytes.fromhex(rows[-1][10]) == first.chain_head


def _today(services, account, day):
    with services.db.session() as session:
        since, until = day_bounds(day)
        return list(audit.iter_events(session, services.keyring, account.id, audit.EventFilter(since=since, until=until)))


def _row(event) -> tuple:
    at = event.at.astimezone(timezone.utc).replace(tzinfo=None)
    return (at.replace(microsecond=at.microsecond // 1000 * 1000), event.username, event.ip, event.protocol,
            event.action, event.direction, event.path, event.bytes)


def _csv_cells(row) -> tuple:
    at, user, ip, protocol, action, direction, path, nbytes = row
    return (at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", user or "", ip or "", protocol, action, direction or "",
            path or "", "" if nbytes is None else str(nbytes))
