"""The SFTP subsystem: packet loop, the one error translator, extensions."""

from __future__ import annotations

import logging
import struct
import time

from paramiko.message import Message
from paramiko.sftp import (
    CMD_CLOSE, CMD_EXTENDED, CMD_EXTENDED_REPLY, CMD_FSETSTAT, CMD_INIT, CMD_NAMES, CMD_OPEN,
    CMD_OPENDIR, CMD_VERSION, SFTPError, SFTP_BAD_MESSAGE, SFTP_FAILURE, SFTP_OK,
)
from paramiko.sftp_attr import SFTPAttributes
from paramiko.sftp_server import SFTPServer
from paramiko.ssh_exception import SSHException

from common import paths
from common.errors import NotFound, SealdropError, Unsupported
from common.vfs import Entry
from transfer.sftp.interface import WorkspaceSFTP
from transfer.sftp.limits import EXTENSIONS, HASHES, MAX_HANDLES, MAX_PACKET, TRANSFER_LENGTH
from transfer.sftp.session import SshSession

# One logger for the whole door, named after the package.
log = logging.getLogger(__package__)


class _WireMessage(Message):
    """An SFTP request body that refuses to read past its end and decodes text strictly."""

    def get_bytes(self, n):
        data = self.packet.read(n)
        if len(data) < n:
            raise SFTPError("truncated request")
        return data

    def get_text(self):
        return paths.decode_wire(self.get_string())


class WorkspaceSFTPServer(SFTPServer):
    """paramiko's SFTP server with our loop, one error translator and stored-hash check-file."""

    def __init__(self, channel, name, server, *args, **kwargs):
        super().__init__(channel, name, server, WorkspaceSFTP)
        self.session: SshSession = server
        server.subsystems.append(self)

    def _log(self, level, msg):
        if level > logging.DEBUG and not isinstance(msg, list):
            super()._log(level, msg)

    def start_subsystem(self, name, transport, channel):
        self.sock = channel
        try:
            self._send_server_version()
            self.server.session_started()
            while True:
                t, data = self._read_packet()
                self._serve(t, _WireMessage(data))
        except (EOFError, OSError, SFTPError, SSHException) as exc:
            log.info("sftp session %s: sftp channel closed (%s)", self.session.id, type(exc).__name__)

    def _read_packet(self):
        size = struct.unpack(">I", self._read_all(4))[0]
        if not 0 < size <= MAX_PACKET:
            raise SFTPError("request too large")  # ends the session: the stream is unusable
        data = self._read_all(size)
        return data[0], data[1:]

    def _send_server_version(self):
        t, _ = self._read_packet()
        if t != CMD_INIT:
            raise SFTPError("expected SSH_FXP_INIT")
        msg = Message()
        msg.add_int(3)
        for name, value in EXTENSIONS:
            msg.add_string(name)
            msg.add_string(value)
        self._send_packet(CMD_VERSION, msg)

    def _serve(self, t: int, msg: _WireMessage) -> None:
        request = msg.get_int()
        self.session.busy += 1
        try:
            self._process(t, request, msg)
        except SealdropError as exc:
            # The one translation of the failure vocabulary into SFTP status replies. The
            # Workspace audits its own permission refusals; what this door refuses, it audits.
            if isinstance(exc, Unsupported):
                self.session.refuse(CMD_NAMES.get(t, "request"))
            self._send_status(request, exc.sftp_status, exc.message)
        except (SFTPError, struct.error, TypeError, ValueError):
            self._send_status(request, SFTP_BAD_MESSAGE, "Malformed request")
        except Exception as exc:  # a bug or an outage: the client gets a status, we get a line
            log.warning("sftp session %s: %s failed (%s)", self.session.id, CMD_NAMES.get(t, t), type(exc).__name__)
            self._send_status(request, SFTP_FAILURE, SealdropError.default_message)
        finally:
            self.session.busy -= 1
            self.session.last_activity = time.monotonic()

    def _process(self, t, request_number, msg):
        if t not in CMD_NAMES:
            raise Unsupported("Unknown request type")
        if t in (CMD_OPEN, CMD_OPENDIR):
            with self.session.handle_slot():
                super()._process(t, request_number, msg)
        elif t == CMD_CLOSE:
            self._close(request_number, msg.get_binary())
        elif t == CMD_FSETSTAT:
            handle, attr = self._file(msg.get_binary()), SFTPAttributes._from_msg(msg)
            self._send_status(request_number, handle.chattr(attr))
        elif t == CMD_EXTENDED:
            self._extended(request_number, msg)
        else:
            super()._process(t, request_number, msg)

    def _file(self, handle: bytes):
        if handle not in self.file_table:
            raise SFTPError("invalid handle")
        return self.file_table[handle]

    def _close(self, request_number: int, handle: bytes) -> None:
        if self.folder_table.pop(handle, None) is None:
            self._file(handle)
            self.file_table.pop(handle).close()  # an upload's commit happens here, before the reply
        self._send_status(request_number, SFTP_OK)

    def _extended(self, request_number: int, msg: _WireMessage) -> None:
        tag = msg.get_text()
        if tag in ("check-file", "check-file-handle"):
            self._check_file_entry(request_number, self._file(msg.get_binary()).checkable_entry(), msg)
        elif tag == "check-file-name":
            self._check_file_entry(request_number, self.server.ws.fingerprint(msg.get_text()), msg)
        elif tag == "limits@openssh.com":
            self._send_limits(request_number)
        elif tag == "posix-rename@openssh.com":
            oldpath, newpath = msg.get_text(), msg.get_text()
            self._send_status(request_number, self.server.posix_rename(oldpath, newpath))
        else:
            raise Unsupported("That extension is not supported")

    def _send_limits(self, request_number: int) -> None:
        """limits@openssh.com: the longest packet we read, the read and write lengths clients
        should use, and the open handles a connection may hold."""
        reply = Message()
        reply.add_int(request_number)
        for value in (MAX_PACKET, TRANSFER_LENGTH, TRANSFER_LENGTH, MAX_HANDLES):
            reply.add_int64(value)
        self._send_packet(CMD_EXTENDED_REPLY, reply)

    def _check_file(self, request_number, msg):
        # paramiko's own would hash the file by reading it through the handle (MD5/SHA-1 only).
        self._check_file_entry(request_number, self._file(msg.get_binary()).checkable_entry(), msg)

    def _check_file_entry(self, request_number: int, entry: Entry, msg: _WireMessage) -> None:
        """Answer check-file from the recorded, verified fingerprints of the whole file."""
        wanted, start, length, block = msg.get_text().split(","), msg.get_int64(), msg.get_int64(), msg.get_int()
        algorithm = next((name for name in wanted if name in HASHES), None)
        if algorithm is None:
            raise Unsupported("Supported hashes: md5, sha256")
        if start != 0 or length not in (0, entry.size) or (block != 0 and block < entry.size):
            raise Unsupported("Only whole-file hashes are offered")
        digest = getattr(entry, HASHES[algorithm])
        if digest is None:
            raise NotFound()
        reply = Message()
        reply.add_int(request_number)
        reply.add_string("check-file")
        reply.add_string(algorithm)
        reply.add_bytes(digest)
        self._send_packet(CMD_EXTENDED_REPLY, reply)
