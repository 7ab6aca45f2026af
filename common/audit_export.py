"""Audit events as CSV and XLSX: the nightly files in /Audit Logs and the portal's downloads.

Both writers stream: rows come from `audit.iter_events` (a server-side cursor), the CSV goes
out as it is made, and XlsxWriter runs in constant-memory mode with the rows kept deflated in
memory and each sheet piped into the zip; what little it puts in its temp folder (an empty file,
the pipes) is on memory-backed storage (tmpfs), never on disk, since it would hold decrypted
paths and names. No cell can become a formula: XLSX text is only ever an inline string (the
Events rows written by `write_event_row`, the rest through `write_string`, with formula and
URL conversion off), and CSV text starting with a formula character gets a `'`.
"""
from __future__ import annotations

import codecs
import csv
import logging
import os
import shutil
import tempfile
import threading
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import BinaryIO

import xlsxwriter
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from xlsxwriter.utility import _preserve_whitespace, _utf16_len, _utf16_truncate, xl_col_to_name
from xlsxwriter.worksheet import Worksheet

from common import audit, notifications, refs
from common.audit import EventFilter, EventView
from common.errors import AlreadyExists, ConfigError
from common.models import AuditEvent, AuditExport
from common.services import Services
from common.vfs import AUDIT_LOGS, Principal, Workspace

log = logging.getLogger(__name__)

COLUMNS = ("time_utc", "user", "client_ip", "protocol", "action", "direction", "path", "bytes",
           "duration_ms", "status", "detail")
LETTERS = tuple(xl_col_to_name(column) for column in range(len(COLUMNS)))
WIDTHS = (24, 20, 18, 9, 16, 9, 60, 14, 12, 9, 30)  # characters, in COLUMNS order
SUMMARY_COLUMNS = ("user", "logins", "failed_logins", "uploads", "downloads", "bytes_in", "bytes_out")
CHAIN_HEAD = "chain_head"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")
DEFAULT_TMPDIR = "/dev/shm"
NO_USER = "(no user)"
CSV_BUFFER = 64 * 1024
ROW_STORE_LEVEL = 6  # zlib: a fifth less memory than level 1 for the rows held until the sheet is zipped


# -- the per-user day totals --------------------------------------------------------------------
@dataclass
class UserTotals:
    logins: int = 0
    failed_logins: int = 0
    uploads: int = 0
    downloads: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass
class Summary:
    """Per-user totals, filled from the rows as they stream past (completed transfers are
    counted; bytes count every byte moved, failed transfers included)."""

    users: dict[str, UserTotals] = field(default_factory=dict)
    events: int = 0

    def add(self, event: EventView) -> None:
        self.events += 1
        totals = self.users.setdefault(event.username or NO_USER, UserTotals())
        if event.action == "login" and event.status == "ok":
            totals.logins += 1
        elif event.action == "login_failed" or (event.action == "login" and event.status != "ok"):
            totals.failed_logins += 1
        elif event.action == "upload" and event.status == "ok":
            totals.uploads += 1
        elif event.action == "download" and event.status == "ok":
            totals.downloads += 1
        if event.bytes and event.direction == "in":
            totals.bytes_in += event.bytes
        elif event.bytes and event.direction == "out":
            totals.bytes_out += event.bytes


# -- cells ----------------------------------------------------------------------------------------
def iso_utc(at: datetime) -> str:
    """ISO 8601 in UTC with `Z`, to the millisecond."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def neutralised(text: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula (OWASP CSV injection; ASVS 1.2.10)."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _text_cells(event: EventView) -> tuple:
    """The row in COLUMNS order, time and numbers left as they are."""
    return (event.at, event.username or "", event.ip or "", event.protocol, event.action,
            event.direction or "", event.path or "", event.bytes, event.duration_ms, event.status,
            event.detail or "")


# -- CSV ------------------------------------------------------------------------------------------
class _TextSink:
    """What csv.writer writes to: UTF-8 bytes into `out`, in blocks."""

    def __init__(self, out: BinaryIO):
        self.out, self.parts, self.size = out, [], 0

    def write(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size >= CSV_BUFFER:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.out.write("".join(self.parts).encode("utf-8"))
            self.parts, self.size = [], 0


class CsvExport:
    """A CSV file being written: `add` each event, then `close` (adds the chain_head row)."""

    def __init__(self, out: BinaryIO):
        self.sink = _TextSink(out)
        self.writer = csv.writer(self.sink, lineterminator="\r\n")
        self.writer.writerow(COLUMNS)

    def add(self, event: EventView) -> None:
        cells = _text_cells(event)
        self.writer.writerow((iso_utc(cells[0]), *(
            neutralised(value) if isinstance(value, str) else ("" if value is None else value)
            for value in cells[1:])))

    def close(self, chain_head: bytes | None) -> None:
        if chain_head is not None:
            row = [""] * len(COLUMNS)
            row[COLUMNS.index("action")], row[COLUMNS.index("detail")] = CHAIN_HEAD, chain_head.hex()
            self.writer.writerow(row)
        self.sink.flush()


def write_csv(rows: Iterable[EventView], out: BinaryIO, *, chain_head: bytes | None) -> int:
    """Stream events as CSV into `out`; a final `chain_head` row when a head is given. Returns the count."""
    export, count = CsvExport(out), 0
    for event in rows:
        export.add(event)
        count += 1
    export.close(chain_head)
    return count


# -- XLSX -----------------------------------------------------------------------------------------
def memory_tmpdir(path: str | None = None) -> str:
    """The folder for XlsxWriter's temp files, refused unless it is memory-backed (tmpfs).

    Its temp files hold decrypted paths and names: falling back to disk would put them there.
    """
    path = os.path.realpath(path or DEFAULT_TMPDIR)
    fstype = filesystem_of(path)
    if fstype not in MEMORY_FILESYSTEMS or not os.path.isdir(path):
        raise ConfigError(f"EXPORT_TMPDIR must be a memory-backed folder (tmpfs), not {fstype or 'missing'}")
    return path


def filesystem_of(path: str) -> str | None:
    """The type of the filesystem holding `path`, from /proc/self/mountinfo (Linux)."""
    best, fstype = "", None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
            for line in mounts:
                before, _, after = line.partition(" - ")
                mount_point = before.split()[4].replace("\\040", " ")
                inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, fstype = mount_point, after.split()[0]
    except OSError:
        return None
    return fstype


class _Sink:
    """`out` as zipfile wants it: `write`, `flush` and a `tell` of the bytes written so far."""

    def __init__(self, out: BinaryIO):
        self.out, self.position = out, 0

    def write(self, data) -> int:
        self.out.write(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass


def write_cells(sheet, row: int, cells: tuple, when) -> None:
    """One event's row: a real date cell, then text only ever as text (no formula, no link)."""
    sheet.write_datetime(row, 0, cells[0], when)
    for column, value in enumerate(cells[1:], start=1):
        if isinstance(value, str):
            if value:
                sheet.write_string(row, column, value)
        elif value is not None:
            sheet.write_number(row, column, value)


class _DeflatedRows:
    """XlsxWriter's constant-memory row store, kept deflated in this process's memory instead
    of a temp file: the rows' XML deflates eight- to tenfold, and nothing of it is written anywhere."""

    def __init__(self):
        self.deflate, self.blocks, self.pending, self.pending_size = zlib.compressobj(ROW_STORE_LEVEL), deque(), [], 0
        self.reading = iter(())

    def write(self, text: str) -> int:
        self.pending.append(text)
        self.pending_size += len(text)
        if self.pending_size >= CSV_BUFFER:
            self._deflate_pending()
        return len(text)

    def _deflate_pending(self) -> None:
        self.blocks.append(self.deflate.compress("".join(self.pending).encode("utf-8")))
        self.pending, self.pending_size = [], 0

    def seek(self, offset: int) -> None:  # XlsxWriter rewinds once, to copy the rows into the sheet
        self._deflate_pending()
        self.blocks.append(self.deflate.flush())
        self.reading = self._inflated()

    def _inflated(self):
        inflate, decoder = zlib.decompressobj(), codecs.getincrementaldecoder("utf-8")()
        while self.blocks:
            if text := decoder.decode(inflate.decompress(self.blocks.popleft())):
                yield text

    def read(self, size: int = -1) -> str:
        return next(self.reading, "")

    def close(self) -> None:
        self.blocks.clear()


class _StreamedWorksheet(Worksheet):
    """A constant-memory worksheet whose rows and sheet XML never sit whole in a temp file.

    Rows go to a _DeflatedRows. XlsxWriter's packager then assembles each sheet into a temp
    file that it copies into the zip; here that file is a pipe, and the sheet is assembled by a
    thread straight into the zip as it reads, so temp storage stays near zero at any size.
    """

    pipe = None
    writer = None
    failure = None

    def _initialize(self, init_data) -> None:
        super()._initialize(init_data)
        if self.constant_memory:
            self.row_data_fh.close()  # its empty file stays, for XlsxWriter to remove as usual
            self.row_data_fh = self.fh = _DeflatedRows()

    def _set_xml_writer(self, filename) -> None:
        if not self.constant_memory or not isinstance(filename, str):
            return super()._set_xml_writer(filename)
        os.unlink(filename)
        os.mkfifo(filename, 0o600)
        self.pipe, self.internal_fh = filename, True

    def _assemble_xml_file(self) -> None:
        if self.pipe is None:
            return super()._assemble_xml_file()
        self.writer = threading.Thread(target=self._assemble_into_pipe, name="xlsx-sheet", daemon=True)
        self.writer.start()

    def _assemble_into_pipe(self) -> None:
        try:
            self.fh = open(self.pipe, "w", encoding="utf-8")  # waits until the zip reads this part
            super()._assemble_xml_file()  # closes it at the end
        except BaseException as exc:  # reported by finish(), in the caller's thread
            self.failure = exc

    def write_event_row(self, row: int, cells: tuple, when) -> None:
        """One event's row, the XML write_cells would make (a real date cell, text only as
        inline text, escaped by XlsxWriter's own helpers), without XlsxWriter's per-cell
        bookkeeping, which at a million rows costs more than the rest of the export."""
        if self._check_dimensions(row, 0) or self._check_dimensions(row, len(cells) - 1):
            raise ValueError(f"row {row} is outside the sheet or already written")
        if row > self.previous_row:
            self._write_single_row(row)  # writes out a row still held cell by cell (the header)
        number = row + 1
        parts = [f'<row r="{number}"><c r="A{number}" s="{when._get_xf_index()}">'
                 f'<v>{self._convert_date_time(cells[0]):.16G}</v></c>']
        for letter, value in zip(LETTERS[1:], cells[1:]):
            if isinstance(value, str):
                if value:
                    parts.append(self._inline_text(f"{letter}{number}", value))
            elif value is not None:
                parts.append(f'<c r="{letter}{number}"><v>{value:.16G}</v></c>')
        parts.append("</row>")
        self.fh.write("".join(parts))

    def _inline_text(self, reference: str, text: str) -> str:
        """An inline string cell, as XlsxWriter writes one in constant-memory mode, except that
        text looking like rich-string XML is escaped too, never passed through."""
        if len(text) > self.xls_strmax // 2 and _utf16_len(text) > self.xls_strmax:
            text = _utf16_truncate(text, self.xls_strmax)
        text = self._escape_control_characters(text)
        preserve = ' xml:space="preserve"' if _preserve_whitespace(text) else ""
        return f'<c r="{reference}" t="inlineStr"><is><t{preserve}>{self._escape_data(text)}</t></is></c>'

    def finish(self) -> None:
        """Wait for the sheet's writer; unblock it first if the zip never came to read it."""
        if self.writer is None:
            return
        if self.writer.is_alive():
            try:
                os.close(os.open(self.pipe, os.O_RDONLY | os.O_NONBLOCK))
            except OSError:
                pass  # the zip took it and removed the pipe: the writer is finishing
        self.writer.join(timeout=60)
        if self.failure is not None and not isinstance(self.failure, BrokenPipeError):
            raise self.failure


class XlsxExport:
    """An XLSX file being written: an Events sheet streamed row by row, then a Summary sheet."""

    def __init__(self, out: BinaryIO, *, summary: Summary | None, tmpdir: str | None = None):
        self.folder = tempfile.mkdtemp(prefix="sealdrop-xlsx-", dir=memory_tmpdir(tmpdir))
        self.summary, self.row = summary, 0
        self.book = xlsxwriter.Workbook(_Sink(out), {
            "constant_memory": True, "tmpdir": self.folder, "strings_to_formulas": False,
            "strings_to_urls": False, "strings_to_numbers": False})
        self.when = self.book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss.000"})
        self.bold = self.book.add_format({"bold": True})
        self.events = self.book.add_worksheet("Events", worksheet_class=_StreamedWorksheet)
        for column, width in enumerate(WIDTHS):
            self.events.set_column(column, column, width)
        self.events.freeze_panes(1, 0)
        self._header(self.events, COLUMNS)

    def _header(self, sheet, names) -> None:
        for column, name in enumerate(names):
            sheet.write_string(0, column, name, self.bold)

    def add(self, event: EventView) -> None:
        self.row += 1
        cells = _text_cells(event)
        self.events.write_event_row(self.row, (cells[0].astimezone(timezone.utc).replace(tzinfo=None), *cells[1:]),
                                    self.when)
        if self.summary is not None:
            self.summary.add(event)

    def close(self, chain_head: bytes | None) -> None:
        try:
            self.events.autofilter(0, 0, self.row, len(COLUMNS) - 1)
            if self.summary is not None or chain_head is not None:
                self._summary_sheet(chain_head)
            self.book.close()
            self._finish_sheets()
        finally:
            self.discard()

    def _finish_sheets(self) -> None:
        for sheet in self.book.worksheets():
            sheet.finish()

    def discard(self) -> None:
        """Remove the temp folder (and stop any sheet writer still waiting on its pipe)."""
        try:
            self._finish_sheets()
        except BaseException:
            pass  # already failing: the first error is the one reported
        shutil.rmtree(self.folder, ignore_errors=True)

    def _summary_sheet(self, chain_head: bytes | None) -> None:
        sheet = self.book.add_worksheet("Summary", worksheet_class=_StreamedWorksheet)
        sheet.set_column(0, 0, 24)
        sheet.set_column(1, len(SUMMARY_COLUMNS) - 1, 14)
        row = 0
        if self.summary is not None:
            self._header(sheet, SUMMARY_COLUMNS)
            for name in sorted(self.summary.users):
                row += 1
                totals = self.summary.users[name]
                sheet.write_string(row, 0, name)
                for column, value in enumerate((totals.logins, totals.failed_logins, totals.uploads,
                                                totals.downloads, totals.bytes_in, totals.bytes_out), start=1):
                    sheet.write_number(row, column, value)
            row += 2
            sheet.write_string(row, 0, "events", self.bold)
            sheet.write_number(row, 1, self.summary.events)
        if chain_head is not None:
            row += 1
            sheet.write_string(row, 0, CHAIN_HEAD, self.bold)
            sheet.write_string(row, 1, chain_head.hex())


def write_xlsx(rows: Iterable[EventView], out: BinaryIO, *, summary: Summary | None,
               chain_head: bytes | None, tmpdir: str | None = None) -> int:
    """Stream events as XLSX into `out`; returns the count.

    With a `Summary` (e.g. `Summary()`), it is filled from the rows and written as a Summary
    sheet; a `chain_head` is written there too. `tmpdir` must be memory-backed (default /dev/shm).
    """
    export, count = XlsxExport(out, summary=summary, tmpdir=tmpdir), 0
    try:
        for event in rows:
            export.add(event)
            count += 1
    except BaseException:
        export.discard()
        raise
    export.close(chain_head)
    return count


# -- a day's head ---------------------------------------------------------------------------------
def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


def head_before(session, account_id: int, until: datetime) -> tuple[bytes, int]:
    """The chain's head and count as they stood at `until`: the last earlier event's hash."""
    last = session.execute(
        select(AuditEvent.hash, AuditEvent.seq).where(AuditEvent.account_id == account_id, AuditEvent.at < until)
        .order_by(AuditEvent.seq.desc()).limit(1)).first()
    return (last.hash, last.seq) if last else (audit.GENESIS, 0)



# -- the nightly files --------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportResult:
    paths: tuple[str, str]  # the CSV's and the XLSX's, in the system principal's view
    events: int
    chain_head: bytes


def day_paths(day: date) -> tuple[str, str, str]:
    """The year folder and the day's two files under /Audit Logs."""
    folder = f"/{AUDIT_LOGS}/{day:%Y}"
    base = f"{folder}/audit-{day.isoformat()}"
    return folder, base + ".csv", base + ".xlsx"


def export_day(services: Services, account_id: int, day: date) -> ExportResult:
    """Write the UTC day's events to /Audit Logs/YYYY/audit-YYYY-MM-DD.csv and .xlsx (replacing
    earlier ones), record the export and queue the "export ready" mail. The files' own upload
    events land in the next day."""
    workspace = Workspace(services, Principal.system(account_id))
    folder, csv_path, xlsx_path = day_paths(day)
    _ensure_folder(workspace, folder)
    csv_upload, xlsx_upload = workspace.open_write(csv_path), workspace.open_write(xlsx_path)
    xlsx = None
    try:
        xlsx = XlsxExport(xlsx_upload, summary=Summary(), tmpdir=services.settings.export_tmpdir)
        head, count = _write_day(services, account_id, day, CsvExport(csv_upload), xlsx)
        csv_entry, xlsx_entry = csv_upload.commit(), xlsx_upload.commit()
    except BaseException:
        if xlsx is not None:
            xlsx.discard()
        csv_upload.abort("export failed")
        xlsx_upload.abort("export failed")
        raise
    _record_export(services, account_id, day, (csv_entry, xlsx_entry), count, head)
    try:
        notifications.export_ready(services, account_id, day)  # mail to the admins who opted in
    except RedisError:
        log.warning("export-ready mail for account %s not queued: Redis unreachable", account_id)
    log.info("audit export of account %s for %s: %s events", account_id, day.isoformat(), count)
    return ExportResult((csv_entry.path, xlsx_entry.path), count, head)


def _write_day(services: Services, account_id: int, day: date, csv_file: CsvExport,
               xlsx_file: XlsxExport) -> tuple[bytes, int]:
    """Stream the day's events once into both files; the head is carried over on an empty day."""
    since, until = day_bounds(day)
    count = 0
    with services.db.session() as session:
        head, _ = head_before(session, account_id, since)
        for event in audit.iter_events(session, services.keyring, account_id, EventFilter(since=since, until=until)):
            csv_file.add(event)
            xlsx_file.add(event)
            head, count = event.hash, count + 1
    csv_file.close(head)
    xlsx_file.close(head)
    return head, count


def _ensure_folder(workspace: Workspace, path: str) -> None:
    try:
        workspace.make_dir(path)
    except AlreadyExists:
        pass  # made by an earlier day's export (or by another export just now)


def _record_export(services: Services, account_id: int, day: date, entries, count: int, head: bytes) -> None:
    csv_id, xlsx_id = (refs.parse(entry.id).id for entry in entries)
    values = dict(csv_node_id=csv_id, xlsx_node_id=xlsx_id, events=count, chain_head=head,
                  created_at=datetime.now(timezone.utc))
    with services.db.session() as session:
        session.execute(insert(AuditExport).values(account_id=account_id, day=day, **values)
                        .on_conflict_do_update(index_elements=["account_id", "day"], set_=values))
