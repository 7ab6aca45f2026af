"""The SFTP door: paramiko over `common.auth` and the `Workspace`, and nothing else.

Layers, outermost first: `SftpServer` (listening socket, a thread per connection, session
caps, auth and idle timeouts), `HardenedTransport` (AES-256 ciphers, SHA-2 MACs, strict kex,
no SHA-1, MD5, CBC or 3DES), `SshSession` (logins through `common.auth`; every channel
request but the sftp subsystem refused and audited), `WorkspaceSFTPServer` (the SFTP packet
loop, the one error translator, check-file from stored fingerprints) and `WorkspaceSFTP`
with its `UploadHandle` and `DownloadHandle` (each operation one `Workspace` call).
Logs name sessions, users and accounts by id, never by name or path.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import paramiko
from paramiko.auth_handler import AuthHandler
from paramiko.common import (
    AUTH_FAILED, AUTH_PARTIALLY_SUCCESSFUL, AUTH_SUCCESSFUL, MSG_CHANNEL_DATA, MSG_CHANNEL_EXTENDED_DATA,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED, OPEN_SUCCEEDED,
)
from paramiko.message import Message
from paramiko.server import InteractiveQuery
from paramiko.sftp import (
    CMD_CLOSE, CMD_EXTENDED, CMD_EXTENDED_REPLY, CMD_FSETSTAT, CMD_INIT, CMD_NAMES, CMD_OPEN,
    CMD_OPENDIR, CMD_VERSION,
    SFTP_BAD_MESSAGE, SFTP_FAILURE, SFTP_OK, SFTPError,
)
from paramiko.sftp_attr import SFTPAttributes
from paramiko.sftp_server import SFTPServer
from paramiko.ssh_exception import SSHException

from common import auth, paths
from common.admission import Admission
from common.config import settings_from_environment
from common.errors import (
    AlreadyExists, AuthFailed, Banned, ConfigError, InvalidInput, IsAFolder, NotAFolder,
    NotFound, PermissionDenied, SealdropError, Unsupported,
)
from common.jobs.sweep import prepare_spool_host
from common.services import Services
from common.vfs import Entry, Principal, Workspace

log = logging.getLogger(__name__)
# paramiko's own DEBUG lines (transport and channels) carry names and client text: never emitted.
logging.getLogger(f"{__name__}.ssh").setLevel(logging.INFO)

PROTOCOL = "sftp"
ALL_AUTHS = "publickey,password,keyboard-interactive"

# Only these are offered (DESIGN.md "Protocol hardening"); everything else paramiko knows,
# including whatever a later paramiko adds, is disabled by construction below.
CIPHERS = ("aes256-gcm@openssh.com", "aes256-ctr")
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512")


def _without_sha1(names) -> tuple[str, ...]:
    return tuple(n for n in names if "sha1" not in n and n not in ("ssh-rsa", "ssh-dss"))


def _disabled(kind: str, allowed) -> list[str]:
    return [name for name in getattr(paramiko.Transport, f"_preferred_{kind}") if name not in allowed]


DISABLED_ALGORITHMS = {
    "ciphers": _disabled("ciphers", CIPHERS),
    "macs": _disabled("macs", MACS),
    "kex": _disabled("kex", _without_sha1(paramiko.Transport._preferred_kex)),
    "keys": ["ssh-rsa", "ssh-dss"],
    "pubkeys": ["ssh-rsa", "ssh-dss"],
}

# SFTP limits: OpenSSH's sftp-server caps messages at 256 KiB; clients write 32 KiB at a time.
MAX_PACKET = 256 * 1024 + 1024
MAX_READ = 256 * 1024
MAX_HANDLES = 64  # per connection, over all its channels
MAX_SESSION_CHANNELS = 16
# Pipelining clients (rclone's concurrent writes) deliver WRITEs slightly out of order.
REORDER_WINDOW_BYTES = 8 * 1024 * 1024
REORDER_WINDOW_PIECES = 256
# Early writes held in memory across every handle of one connection: the reordering bound.
SESSION_REORDER_BYTES = 16 * 1024 * 1024
# A read slightly behind or ahead of the stream is served from memory, not by re-decrypting.
READ_KEEP_BYTES = 2 * 1024 * 1024
READ_SKIP_BYTES = 2 * 1024 * 1024
EXTENSIONS = (("posix-rename@openssh.com", "1"), ("check-file", "md5,sha256"))
HASHES = {"md5": "md5", "sha256": "sha256"}
# paramiko's log lines that carry client text, cut to their fixed part; every line is capped.
CLIENT_TEXT = (
    (re.compile(r"Connected \(version .*", re.S), "Connected"),
    (re.compile(r"(Disconnect \(code \d+\)).*", re.S), r"\1"),
    (re.compile(r"(Incompatible version|Indecipherable protocol version|Auth rejected: pubkey algorithm"
                r"|Auth rejected: unsupported or mangled public key|Auth rejected: public key).*", re.S), r"\1"),
)
MAX_LOG_LINE = 200
# Global requests clients send on their own (keepalives): refused, but not worth an audit event.
QUIET_GLOBAL_REQUESTS = ("keepalive@openssh.com", "no-more-sessions@openssh.com")


@dataclass(frozen=True)
class Limits:
    """Caps that keep one client, or one address, from taking the whole process."""

    max_sessions: int = 500
    max_sessions_per_ip: int = 50
    max_unauthenticated_per_ip: int = 10
    auth_timeout: float = 30.0
    idle_timeout: float = 900.0

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        return cls(max_sessions_per_ip=settings.max_sessions_per_ip,
                   max_unauthenticated_per_ip=settings.max_unauthenticated_per_ip,
                   auth_timeout=float(settings.login_timeout_seconds))


# -- the transport --------------------------------------------------------------------------

class KeyProvingAuthHandler(AuthHandler):
    """paramiko's auth handler, told when a public key has really been proven, and reading
    keyboard-interactive answers only to the question we asked."""

    _awaiting: int | None = None  # the number of prompts of our pending INFO_REQUEST

    def _parse_userauth_request(self, m):
        self._awaiting = None  # a new request abandons any keyboard-interactive exchange
        super()._parse_userauth_request(m)

    def _interactive_query(self, q):
        super()._interactive_query(q)
        self._awaiting = len(q.prompts)

    def _parse_userauth_info_response(self, m):
        # paramiko would read whatever count the client sends (up to 2^32 empty strings from a
        # short message) at any time after key exchange: like OpenSSH, a response that answers
        # no pending prompt, or gives another number of answers, ends the connection.
        expected, self._awaiting = self._awaiting, None
        if expected is None or self.authenticated or m.get_int() != expected:
            log.info("sftp session %s: unexpected keyboard-interactive response, disconnected",
                     self.transport.server_object.id)
            self._disconnect_no_more_auth()
            return
        m.rewind()
        super()._parse_userauth_info_response(m)

    def _send_auth_result(self, username, method, result):
        session = self.transport.server_object
        if method == "publickey" and result != AUTH_FAILED:
            # paramiko calls check_auth_publickey before it verifies the signature (and for
            # unsigned probes); reaching here with a non-failure means the signature verified.
            result = session.key_verified(username)
        super()._send_auth_result(username, method, result)
        if session.must_disconnect:
            self._disconnect_no_more_auth()


class HardenedTransport(paramiko.Transport):
    """A server transport that negotiates only the algorithms DESIGN.md allows."""

    _preferred_ciphers = CIPHERS
    _preferred_macs = MACS

    def __init__(self, sock):
        super().__init__(sock, disabled_algorithms=DISABLED_ALGORITHMS, strict_kex=True)

    def _parse_newkeys(self, m):
        if self.server_mode and self.auth_handler is None:
            self.auth_handler = KeyProvingAuthHandler(self)
        return super()._parse_newkeys(m)

    def _log(self, level, msg, *args):
        # paramiko logs user names at DEBUG and whole tracebacks (lists) for malformed
        # packets; neither belongs in our logs. Once we closed the transport ourselves (a
        # timeout, a ban, shutdown), its "error" reading from the closed socket is expected.
        if level > logging.DEBUG and not isinstance(msg, list) and (self.active or level < logging.ERROR):
            super()._log(level, without_client_text(msg % args if args else msg))

    # Every CHANNEL_DATA passes the window check before paramiko buffers it.
    _channel_handler_table = {
        **paramiko.Transport._channel_handler_table,
        MSG_CHANNEL_DATA: lambda channel, m: _feed_within_window(channel, m, extended=False),
        MSG_CHANNEL_EXTENDED_DATA: lambda channel, m: _feed_within_window(channel, m, extended=True),
    }


def without_client_text(message: str) -> str:
    """A paramiko log line with the text the client chose (banner, disconnect reason,
    algorithm names) cut out, and any other control character escaped."""
    for pattern, replacement in CLIENT_TEXT:
        message = pattern.sub(replacement, message)
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    return escaped[:MAX_LOG_LINE]


def _feed_within_window(channel: paramiko.Channel, m: Message, *, extended: bool) -> None:
    """Buffer a channel's data only within the window we advertised; an overrun ends the
    connection (paramiko would buffer it all, however much, on a channel nobody reads)."""
    start = m.packet.tell()
    if extended:
        m.get_int()  # the data type code
    data = m.get_binary()
    # Unacknowledged bytes: still buffered, or read but not yet granted back by WINDOW_ADJUST.
    outstanding = len(channel.in_buffer) + len(channel.in_stderr_buffer) + channel.in_window_sofar
    if outstanding + len(data) > channel.in_window_size:
        log.warning("sftp session %s: channel window overrun, disconnected",
                    channel.transport.server_object.id)
        raise SSHException("channel window overrun")  # the transport closes the connection
    if extended:
        m.packet.seek(start)
        channel._feed_extended(m)
    else:
        channel._feed(data)


# -- authentication and channel policy --------------------------------------------------------

class SshSession(paramiko.ServerInterface):
    """One SSH connection: logs in through common.auth, refuses everything but sftp."""

    def __init__(self, services: Services, ip: str, session_id: str):
        self.services, self.ip, self.id = services, ip, session_id
        self.result: auth.AuthResult | None = None
        self.workspace: Workspace | None = None
        self.must_disconnect = False
        self.last_activity = time.monotonic()
        self.busy = 0
        self.reorder_bytes = 0  # early writes held by all this connection's upload handles
        self.lock = threading.Lock()
        self.subsystems: list[threading.Thread] = []
        self._first: auth.AuthResult | None = None  # a first factor awaiting its TOTP code
        self._username: str | None = None
        self._key: paramiko.PKey | None = None
        self._failure_audited = False
        self._prompt: str | None = None
        self._channels = 0
        self._refusals = 0
        self._opening = 0  # handles being opened now, not yet in a channel's table

    # -- logging in --
    def get_allowed_auths(self, username):
        # The same list for every name, so the reply says nothing about who exists.
        return "keyboard-interactive" if self._first else ALL_AUTHS

    def check_auth_none(self, username):
        self._username = username
        return AUTH_FAILED

    def check_auth_password(self, username, password):
        self._username = username
        if self._first:
            return AUTH_FAILED  # the code comes by keyboard-interactive only
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")  # still a counted wrong password
        return self._first_factor(username, password, "password")

    def check_auth_publickey(self, username, key):
        # Records nothing: this runs for unsigned probes and before the signature is checked.
        self._username = username
        if self._first or not auth.is_authorized_key(self.services, username, key.get_name(), key.asbytes()):
            return AUTH_FAILED
        self._key = key
        return AUTH_SUCCESSFUL

    def key_verified(self, username):
        """The key offered last has signed the session: now it is a login attempt."""
        key, self._key = self._key, None
        if key is None:
            return AUTH_FAILED
        return self._first_factor(username, key.asbytes(), "publickey")

    def check_auth_interactive(self, username, submethods):
        self._username = username
        self._prompt = "code" if self._first else "password"
        return self._query(self._prompt)

    def check_auth_interactive_response(self, responses):
        prompt, self._prompt = self._prompt, None
        if prompt is None or len(responses) != 1:
            return AUTH_FAILED
        if prompt == "code":
            return self._second_factor(responses[0])
        outcome = self._first_factor(self._username, responses[0], "password")
        if outcome == AUTH_PARTIALLY_SUCCESSFUL:
            self._prompt = "code"
            return self._query("code")
        return outcome

    @staticmethod
    def _query(prompt: str) -> InteractiveQuery:
        return InteractiveQuery("", "", ("Verification code: " if prompt == "code" else "Password: ", False))

    def _first_factor(self, username: str, secret, method: str) -> int:
        try:
            result = auth.authenticate(self.services, username, secret, method=method,
                                       protocol=PROTOCOL, ip=self.ip)
        except SealdropError as exc:
            return self._refused(exc)
        if result.needs_totp:
            self._first = result
            return AUTH_PARTIALLY_SUCCESSFUL
        return self._logged_in(result)

    def _second_factor(self, code: str) -> int:
        try:
            result = auth.verify_totp(self.services, self._first, code)
        except SealdropError as exc:
            return self._refused(exc)
        self._first = None
        return self._logged_in(result)

    def _refused(self, exc: SealdropError) -> int:
        if not isinstance(exc, AuthFailed | Banned):
            raise exc
        self._failure_audited = True  # common.auth audited it (or counted it)
        # As on FTPS, every refusal of a name counts alike (locked, unknown, wrong secret,
        # allow-list, MFA not enrolled), so each closes the connection after the same number
        # of tries; a banned address, which says nothing about the name, is closed at once.
        self._refusals += 1
        self.must_disconnect = isinstance(exc, Banned) or \
            self._refusals >= self.services.settings.lockout_threshold
        return AUTH_FAILED

    def _logged_in(self, result: auth.AuthResult) -> int:
        self.result = result
        self.workspace = Workspace(self.services, Principal.from_login(result))
        self.logged_in_at = time.monotonic()
        log.info("sftp session %s: user %s of account %s logged in (%s)",
                 self.id, result.user_id, result.account_id, result.method)
        return AUTH_SUCCESSFUL

    def ended(self) -> None:
        """The connection is gone: one login_failed if it never logged in and nothing was audited."""
        if self.result is None and self._username is not None and not self._failure_audited:
            auth.record_unauthenticated_end(self.services, self._username, PROTOCOL, self.ip)
        if self.workspace is not None:
            self.workspace.record_logout(self.logged_in_at)
        log.info("sftp session %s: ended", self.id)

    # -- channels: a session channel for the sftp subsystem, nothing else --
    def check_channel_request(self, kind, chanid):
        if kind == "session" and self._channels < MAX_SESSION_CHANNELS:
            self._channels += 1
            return OPEN_SUCCEEDED
        self.refuse("channel")
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_subsystem_request(self, channel, name):
        if name == "sftp":
            return super().check_channel_subsystem_request(channel, name)
        return self.refuse("subsystem")

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        self.refuse("port forwarding (local)")
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_port_forward_request(self, address, port):
        return self.refuse("port forwarding (remote)")

    def cancel_port_forward_request(self, address, port):
        return None

    def check_global_request(self, kind, msg):
        return False if kind in QUIET_GLOBAL_REQUESTS else self.refuse("global request")

    def check_channel_shell_request(self, channel):
        return self.refuse("shell")

    def check_channel_exec_request(self, channel, command):
        return self.refuse("exec")  # the command is never logged: it may name paths

    def check_channel_pty_request(self, channel, term, width, height, pixelwidth, pixelheight, modes):
        return self.refuse("pty")

    def check_channel_env_request(self, channel, name, value):
        return self.refuse("env")

    def check_channel_x11_request(self, channel, single_connection, auth_protocol, auth_cookie, screen_number):
        return self.refuse("x11")

    def check_channel_forward_agent_request(self, channel):
        return self.refuse("agent forwarding")

    def check_channel_window_change_request(self, channel, width, height, pixelwidth, pixelheight):
        return False  # meaningless without a pty, which is refused (and audited) already

    def refuse(self, operation: str) -> bool:
        """Audit a refused request (a fixed word, never client text) and answer no."""
        log.info("sftp session %s: refused %s", self.id, operation)
        if self.workspace is not None:
            try:
                self.workspace.record_refusal(operation)
            except SealdropError as exc:
                log.warning("sftp session %s: could not audit a refusal (%s)", self.id, exc.code)
        return False

    # -- open files and folders, over all the connection's channels --
    @contextlib.contextmanager
    def handle_slot(self):
        """Room for one more handle on this connection while it is being opened, or a refusal."""
        with self.lock:
            held = sum(len(s.file_table) + len(s.folder_table) for s in self.subsystems)
            if held + self._opening >= MAX_HANDLES:
                raise SealdropError("Too many open files and folders in this session; close some first")
            self._opening += 1
        try:
            yield
        finally:
            with self.lock:
                self._opening -= 1

    # -- activity, for the idle timeout --
    def is_idle(self, now: float, idle_timeout: float) -> bool:
        return self.busy == 0 and now - self.last_activity > idle_timeout


# -- the SFTP operations over the Workspace -------------------------------------------------------

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


class WorkspaceSFTP(paramiko.SFTPServerInterface):
    """Each SFTP operation as one Workspace call; failures are raised, translated in one place."""

    def __init__(self, session: SshSession, *args, **kwargs):
        super().__init__(session)
        self.session, self.ws = session, session.workspace
        self.handles: set = set()

    def session_ended(self):
        # paramiko calls this before close() on every handle left open: those were not
        # finished by the client, so an upload among them is aborted, never committed.
        for handle in list(self.handles):
            handle.end_session()

    def canonicalize(self, path):
        return paths.normalise(path)

    def stat(self, path):
        return _attributes(self.ws.stat(path))

    lstat = stat  # the Workspace has no symlinks

    def list_folder(self, path):
        return [_attributes(entry) for entry in self.ws.list_dir(path)]

    def open(self, path, flags, attr):
        access = flags & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
        if access == os.O_RDONLY:
            return DownloadHandle(self, self.ws.fingerprint(path))
        if access == os.O_RDWR or flags & os.O_APPEND:
            raise Unsupported("Files are uploaded whole, from the start; append and read-write opens are not supported")
        self._check_replaceable(path, flags)
        return UploadHandle(self, self.ws.open_write(path, mtime=_mtime(attr)))

    def _check_replaceable(self, path: str, flags: int) -> None:
        try:
            existing = self.ws.stat(path)
        except NotFound:
            if not flags & os.O_CREAT:
                raise
            return
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise AlreadyExists()
        if not existing.is_folder and existing.size and not flags & os.O_TRUNC:
            # Writing into an existing file without truncating it is a random-access edit.
            raise Unsupported("Only whole-file uploads are supported; open with truncate to replace a file")

    def remove(self, path):
        if self.ws.stat(path).is_folder:
            raise IsAFolder()
        self.ws.remove(path, recursive=False)
        return SFTP_OK

    def rename(self, oldpath, newpath):
        self.ws.rename(oldpath, newpath, overwrite=False)  # SFTP v3: the target must not exist
        return SFTP_OK

    def posix_rename(self, oldpath, newpath):
        self.ws.rename(oldpath, newpath, overwrite=True)
        return SFTP_OK

    def mkdir(self, path, attr):
        self.ws.make_dir(path)
        return SFTP_OK

    def rmdir(self, path):
        if not self.ws.stat(path).is_folder:
            raise NotAFolder()
        self.ws.remove(path, recursive=False)
        return SFTP_OK

    def chattr(self, path, attr):
        apply_attributes(self.ws, path, attr)
        return SFTP_OK

    def readlink(self, path):
        raise Unsupported("Symbolic links are not supported")

    def symlink(self, target_path, path):
        raise Unsupported("Symbolic links are not supported")


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
        data = bytes(self._buffer[offset - self._base:offset - self._base + length])
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


# -- the SFTP subsystem: packet loop, error translation, extensions -------------------------------

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
        elif tag == "posix-rename@openssh.com":
            oldpath, newpath = msg.get_text(), msg.get_text()
            self._send_status(request_number, self.server.posix_rename(oldpath, newpath))
        else:
            raise Unsupported("That extension is not supported")

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


# -- the listener -----------------------------------------------------------------------------

class SftpServer:
    """Accepts connections and runs each SSH session in its own thread, within the caps."""

    def __init__(self, services: Services, host_key: paramiko.PKey, *, host: str = "127.0.0.1",
                 port: int = 0, limits: Limits = Limits()):
        self.services, self.host_key, self.limits = services, host_key, limits
        self.address = (host, port)
        self.port: int | None = None
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sessions: dict[threading.Thread, tuple[str, HardenedTransport | None]] = {}
        self._acceptor: threading.Thread | None = None
        self.admission = Admission(max_total=limits.max_sessions, max_per_client=limits.max_sessions_per_ip,
                                   max_unauthenticated_per_client=limits.max_unauthenticated_per_ip)

    def start(self) -> "SftpServer":
        listener = socket.create_server(self.address, reuse_port=False)
        listener.settimeout(0.5)  # so stop() is noticed without closing under accept()
        self._listener, self.port = listener, listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="sftp-accept", daemon=True)
        self._acceptor.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, close every session (uploads in flight are aborted), wait for them."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        with self._lock:
            sessions = list(self._sessions.items())
        for _, (_, transport) in sessions:
            if transport is not None:
                transport.close()
        for thread, _ in sessions:
            thread.join(timeout)
        if self._listener is not None:
            self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.1)  # e.g. out of file descriptors: do not spin
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK waits
            self._admit(sock, auth.client_ip(address[0]) or address[0])

    def _admit(self, sock: socket.socket, ip: str) -> None:
        slot = self.admission.admit(ip)
        if slot is None:
            log.warning("sftp: connection from %s refused: too many sessions", ip)
            sock.close()
            return
        with self._lock:
            thread = threading.Thread(target=self._serve, args=(sock, ip, slot), name="sftp-session", daemon=True)
            self._sessions[thread] = (ip, None)
        thread.start()

    def _serve(self, sock: socket.socket, ip: str, slot) -> None:
        session = SshSession(self.services, ip, secrets.token_hex(4))
        transport = HardenedTransport(sock)
        transport.set_log_channel(f"{__name__}.ssh")  # apart from paramiko clients in the same process
        transport.add_server_key(self.host_key)
        transport.set_subsystem_handler("sftp", WorkspaceSFTPServer)
        with self._lock:
            self._sessions[threading.current_thread()] = (ip, transport)
        try:
            if auth.is_banned(self.services, ip):
                log.info("sftp session %s: address banned, disconnected", session.id)
                return
            negotiated = threading.Event()
            transport.start_server(event=negotiated, server=session)
            self._watch(transport, session, negotiated, slot)
        except SealdropError as exc:
            log.warning("sftp session %s: ended by %s", session.id, exc.code)
        finally:
            slot.release()
            self._close_session(transport, session)

    def _watch(self, transport: HardenedTransport, session: SshSession, negotiated: threading.Event,
               slot) -> None:
        started, channels, reported = time.monotonic(), [], False
        while transport.is_active() and not self._stopping.is_set():
            if negotiated.is_set() and not reported:
                reported = True
                log.info("sftp session %s from %s: %s, %s", session.id, session.ip,
                         transport.remote_cipher, transport.remote_mac)
            channel = transport.accept(timeout=0.5)
            if channel is not None:
                # paramiko holds channels weakly: an unreferenced one is closed by the garbage
                # collector before its subsystem request arrives. At most MAX_SESSION_CHANNELS.
                channels.append(channel)
            now = time.monotonic()
            # The auth timeout runs from the TCP accept: a silent client, a slow handshake and
            # a stalled login all count against it.
            if not transport.is_authenticated() and now - started > self.limits.auth_timeout:
                log.info("sftp session %s: authentication timed out", session.id)
                return
            if transport.is_authenticated():
                slot.logged_in()  # no longer counts against MAX_UNAUTHENTICATED_PER_IP
            if transport.is_authenticated() and session.is_idle(now, self.limits.idle_timeout):
                log.info("sftp session %s: idle timeout", session.id)
                return
        if not negotiated.is_set():
            failure = transport.get_exception()
            log.info("sftp session %s: negotiation failed (%s)", session.id, type(failure).__name__)

    def _close_session(self, transport: HardenedTransport, session: SshSession) -> None:
        transport.close()
        transport.sock.close()  # close() does nothing for a transport that never started
        for subsystem in list(session.subsystems):
            subsystem.join(10)  # let session_ended() abort unfinished uploads first
        try:
            session.ended()
        except SealdropError as exc:
            log.warning("sftp session %s: could not record its end (%s)", session.id, exc.code)
        finally:
            with self._lock:
                self._sessions.pop(threading.current_thread(), None)


# -- the process ----------------------------------------------------------------------------

def load_host_key(path: Path | None) -> paramiko.PKey:
    """The one persistent host key shared by every SFTP host; refused if others can read it."""
    if path is None:
        raise ConfigError("SFTP_HOST_KEY_FILE is not set")
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        raise ConfigError("SFTP_HOST_KEY_FILE does not name a readable file") from None
    if mode & 0o077:
        raise ConfigError("SFTP_HOST_KEY_FILE must be readable by its owner only (chmod 600)")
    try:
        return paramiko.PKey.from_path(Path(path))
    except (SSHException, OSError, ValueError) as exc:
        raise ConfigError(f"SFTP_HOST_KEY_FILE is not a usable private key ({type(exc).__name__})") from None


def main() -> int:
    """`python -m transfer.sftp`: serve SFTP on SFTP_PORT until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_environment()
        host_key = load_host_key(settings.sftp_host_key_file)
        services = Services(settings)
        prepare_spool_host(services)
    except ConfigError as exc:
        log.error("sftp: %s", exc.message)
        return exc.exit_code
    # Development binds loopback only; a deployment listens on every interface.
    host = "0.0.0.0" if settings.app_env == "production" else "127.0.0.1"
    server = SftpServer(services, host_key, host=host, port=settings.sftp_port,
                        limits=Limits.from_settings(settings))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    log.info("sftp listening on %s:%d, host key %s %s", host, server.port, host_key.get_name(),
             host_key.fingerprint)
    while not stop.wait(1.0):
        pass
    server.stop()
    services.close()
    log.info("sftp stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
