"""The upload and download handles, and the attribute translation: each operation one `Workspace` call."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone

import paramiko
from paramiko.sftp import SFTP_OK
from paramiko.sftp_attr import SFTPAttributes

from common.errors import InvalidInput, PermissionDenied, SealdropError, Unsupported
from common.vfs import Entry, Workspace
# `WorkspaceSFTP` (interface.py) is named in annotations only: importing it would close a cycle.
from transfer.sftp.limits import (
    MAX_READ, READ_KEEP_BYTES, READ_SKIP_BYTES, REORDER_WINDOW_BYTES, REORDER_WINDOW_PIECES,
    SESSION_REORDER_BYTES,
)


def _attributes(entry: Entry) -> SFTPAttributes:
    attr = SFTPAttributes()
    attr.filename = entry.name
    attr.st_size = entry.size
    kind, mode = (stat.S_IFDIR, 0o755) if entry.is_folder else (stat.S_IFREG, 0o644)
    attr.st_mode = kind | (mode if entry.writable else mode & 0o555)
    attr.st_mtime = attr.st_atime = int(entry.mtime.timestamp())
    return attr


def _mtime(attr: SFTPAttributes) -> datetime | None:
    if attr is None or not attr._flags & SFTPAttributes.FLAG_AMTIME:
        return None
    try:
        return datetime.fromtimestamp(attr.st_mtime, timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise InvalidInput("That modification time is out of range") from None


def apply_attributes(ws: Workspace, path: str, attr: SFTPAttributes) -> None:
    """setstat: times are kept as the modification time; modes and owners are ignored."""
    if attr._flags & SFTPAttributes.FLAG_SIZE and attr.st_size != ws.stat(path).size:
        raise Unsupported("Truncating or extending a file is not supported")
    mtime = _mtime(attr)
    if mtime is not None:
        ws.set_mtime(path, mtime)
    else:
        ws.stat(path)  # a mode-only request still answers "no such file" truthfully


class UploadHandle(paramiko.SFTPHandle):
    """A write handle: sequential writes (bounded reordering), committed only by CLOSE."""

    def __init__(self, sftp: WorkspaceSFTP, upload):
        super().__init__(os.O_WRONLY)
        self.sftp, self.upload = sftp, upload
        self._next = 0
        self._pending: dict[int, bytes] = {}
        self._pending_bytes = 0
        self._error: SealdropError | None = None
        self._mtime: datetime | None = None
        self._closed = False
        sftp.handles.add(self)

    def write(self, offset, data):
        if self._error is not None:
            # Pipelined writes keep arriving after a refusal; only the first is audited.
            raise SealdropError("The upload was abandoned after an earlier error")
        try:
            self._accept(offset, bytes(data))
        except SealdropError as exc:
            self._fail(exc)
        except Exception:
            self._fail(SealdropError("The upload failed"))
        return SFTP_OK

    def _accept(self, offset: int, data: bytes) -> None:
        ahead = offset - self._next
        session = self.sftp.session
        if ahead < 0 or offset in self._pending or ahead + len(data) > REORDER_WINDOW_BYTES \
                or len(self._pending) >= REORDER_WINDOW_PIECES \
                or session.reorder_bytes + len(data) > SESSION_REORDER_BYTES:
            raise Unsupported("Writes must be sequential: random-offset writes are not supported")
        if ahead > 0:
            self._pending[offset] = data
            self._hold(len(data))
            return
        self._append(data)
        while self._next in self._pending:
            piece = self._pending.pop(self._next)
            self._hold(-len(piece))
            self._append(piece)

    def _hold(self, delta: int) -> None:
        self._pending_bytes += delta
        with self.sftp.session.lock:
            self.sftp.session.reorder_bytes += delta

    def _append(self, data: bytes) -> None:
        self.upload.write(data)
        self._next += len(data)

    def _drop_pending(self) -> None:
        self._hold(-self._pending_bytes)
        self._pending.clear()

    def _fail(self, exc: SealdropError):
        self._error = exc
        self._drop_pending()
        self.upload.abort(exc.code)
        raise exc

    def close(self):
        """CLOSE: commit (spool fsync, DB commit, audit, ingest) before the reply is sent."""
        if self._closed:
            return
        self._closed = True
        self.sftp.handles.discard(self)
        if self._error is not None:
            raise self._error
        if self._pending:
            self._fail(Unsupported("The upload has gaps: writes must cover the file from the start"))
        if self._mtime is not None:
            self.upload.set_mtime(self._mtime)
        self.upload.commit()

    def end_session(self):
        self._closed = True
        self.sftp.handles.discard(self)
        self._drop_pending()
        self.upload.abort("session ended")

    def stat(self):
        return _attributes(Entry(self.upload.name, self.upload.path, "file", size=self._next,
                                 mtime=self._mtime or datetime.now(timezone.utc), writable=True))

    def chattr(self, attr):
        if attr._flags & SFTPAttributes.FLAG_SIZE and attr.st_size != self._next:
            raise Unsupported("Truncating or extending a file is not supported")
        self._mtime = _mtime(attr) or self._mtime  # applied once the upload is committed
        return SFTP_OK

    def read(self, offset, length):
        raise PermissionDenied("This handle was opened for writing")

    def checkable_entry(self) -> Entry:
        raise Unsupported("Checksums are available once the upload is closed")


class DownloadHandle(paramiko.SFTPHandle):
    """A read handle: one decrypting stream, re-opened only when a read is not near it."""

    def __init__(self, sftp: WorkspaceSFTP, entry: Entry):
        super().__init__(os.O_RDONLY)
        self.sftp, self.entry = sftp, entry
        self._download = None
        self._blocks = None
        self._base = 0  # the file offset of self._buffer[0]
        self._buffer = bytearray()
        self._at_end = False
        self._failure: Exception | None = None
        self._closed = False
        sftp.handles.add(self)

    def read(self, offset, length):
        if self._failure is not None:
            # Never an EOF after a failed check or a broken stream: a retrying or pipelining
            # client would take what it had as the whole file.
            raise self._failure.with_traceback(None)  # not a traceback growing with each read
        if offset >= self.entry.size:
            self._finish_if_read_through()
            return b""
        length = min(length, MAX_READ)
        if self._download is None or not self._base <= offset <= self._stream_offset + READ_SKIP_BYTES:
            self._restart(offset)
        self._fill(offset + length)
        with memoryview(self._buffer) as buffered:  # one copy, not a slice and then its copy
            data = bytes(buffered[offset - self._base:offset - self._base + length])
        drop = offset - self._base - READ_KEEP_BYTES
        if drop > 0:
            del self._buffer[:drop]
            self._base += drop
        return data

    @property
    def _stream_offset(self) -> int:
        return self._base + len(self._buffer)

    def _restart(self, offset: int) -> None:
        self._end_stream("ok", "partial read")
        self._download = self.sftp.ws.open_read(self.entry.path, offset, version=self.entry.version)
        self._blocks, self._base, self._buffer, self._at_end = iter(self._download), offset, bytearray(), False

    def _fill(self, until: int) -> None:
        while self._stream_offset < until and not self._at_end:
            try:
                block = next(self._blocks, None)  # the last next() verifies a whole-file read
            except Exception as exc:
                self._failure, self._at_end = exc, True  # the stream audited its own failure
                raise
            if block is None:
                self._at_end = True
            else:
                self._buffer += block

    def _finish_if_read_through(self) -> None:
        if self._download is not None and self._stream_offset >= self.entry.size:
            self._fill(self.entry.size + 1)

    def _end_stream(self, status: str, detail: str) -> None:
        if self._download is not None and not self._at_end:
            self._download.close(status, detail)
        self._download = self._blocks = None

    def close(self):
        if self._closed:
            return
        self._closed = True
        self.sftp.handles.discard(self)
        if self._failure is None:
            self._finish_if_read_through()
        self._end_stream("ok", "partial read")

    def end_session(self):
        self._closed = True
        self.sftp.handles.discard(self)
        self._end_stream("failed", "session ended")

    def stat(self):
        return _attributes(self.entry)

    def chattr(self, attr):
        apply_attributes(self.sftp.ws, self.entry.path, attr)
        return SFTP_OK

    def write(self, offset, data):
        raise PermissionDenied("This handle was opened for reading")

    def checkable_entry(self) -> Entry:
        return self.entry
