"""The FTPS door: pyftpdlib subclasses that translate FTP over TLS onto `common`.

Logins go through `common.auth`, every file operation through the `Workspace`; nothing here
decides a permission or touches storage. What stock pyftpdlib gets wrong (SECURITY.md §2.1) is
fixed in our subclasses, with options set on them and never on the library's classes:

- TLS everywhere: AUTH TLS before USER, PROT P enforced when a data connection opens, PROT C
  refused, TLS 1.2+ with AES-256-GCM only.
- A data connection must resume a TLS session of the same login: one issued to its own control
  connection, or to another connection authenticated as the same user (rclone and other Go
  clients share one session cache between their parallel connections). `TLSSessions` books
  the owner of every session the server issues; a fresh session, a session of another user or
  of a connection that never logged in is refused, and the passive port keeps listening for
  the rightful connection until its accept timeout. Only control connections are issued
  sessions: a TLS 1.3 ticket on an upload's data connection, which the client never reads,
  would make its kernel reset the connection and cut the upload.
- Bytes are stored and sent as they are in TYPE A too (as vsftpd does by default), so the
  fingerprints are those of the client's file.
- An upload is committed only when the client closed the data connection with TLS
  close-notify, before the 226 reply; a bare FIN, ABOR, timeout or error aborts it.
- One error translator (`reply_for`), applied in one place (`pre_process_command`).
- pyftpdlib's log, which prints paths and user names, is replaced by one that logs ids.

`python -m transfer.ftps` serves explicit FTPS on FTPS_PORT and, when set, implicit FTPS on
FTPS_IMPLICIT_PORT, one thread per session, until SIGTERM or SIGINT.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import signal
import stat as stat_module
import sys
import threading
import time
import traceback
from collections import OrderedDict
from datetime import datetime, timezone

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _openssl
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers.ftp.data import DTPHandler
from pyftpdlib.handlers.ftp.dispatchers import PassiveDTP
from pyftpdlib.handlers.ftp.producers import BufferedIteratorProducer, FileProducer
from pyftpdlib.handlers.ftps.control import TLS_FTPHandler
from pyftpdlib.handlers.ftps.data import TLS_DTPHandler
from pyftpdlib.ioloop import AsyncChat, IOLoop
from pyftpdlib.servers import ThreadedFTPServer

from common import auth, paths
from common.admission import Admission
from common.config import settings_from_environment
from common.errors import (
    AuthFailed, Banned, ConfigError, IsAFolder, NotAFolder, NotFound, PermissionDenied, SealdropError,
    Unsupported,
)
from common.jobs.sweep import prepare_spool_host
from common.services import Services
from common.vfs import Entry, Principal, Workspace

log = logging.getLogger(__name__)

PROTOCOL = "ftps"
# e l r: enter, list, read; d f m w: delete, rename, make folder, store; T: MFMT. No "a"
# (APPE is refused) and no "M" (SITE CHMOD does not exist here).
PERMS = "elrdfmwT"
REFUSED_COMMANDS = ("APPE", "STOU")
HASH_ALGORITHMS = ("SHA-256", "MD5")
TLS12_CIPHERS = b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
TLS13_CIPHERS = b"TLS_AES_256_GCM_SHA384"
MAX_COMMAND_LINE = 2048
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# A reply is one line: CR, LF or NUL taken from a message or a name could forge a second reply.
_REPLY_UNSAFE = str.maketrans({"\r": "?", "\n": "?", "\x00": "?"})
# Commands logged at INFO (pyftpdlib's own choice: the ones that change something).
_CHANGING = {"DELE", "RNFR", "RNTO", "MKD", "XMKD", "RMD", "XRMD", "MFMT", "STOR", "RETR"}


def reply_for(exc: SealdropError) -> str:
    """The FTP reply for a `common` failure: the one translation of errors for this door."""
    return f"{exc.ftp_code} {exc.message}"


# -- TLS ------------------------------------------------------------------------------------------

def tls_context(cert_file: str, key_file: str) -> SSL.Context:
    """A server context: TLS 1.2+, AES-256-GCM suites only, its own session cache and ticket keys."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION)
    context.set_cipher_list(TLS12_CIPHERS)
    context.set_tls13_ciphersuites(TLS13_CIPHERS)
    context.use_certificate_chain_file(cert_file)
    context.use_privatekey_file(key_file)
    context.check_privatekey()
    context.set_session_id(b"sealdrop-ftps")
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    return context


def session_reused(connection: SSL.Connection) -> bool:
    """Whether this TLS connection resumed an earlier session.

    pyOpenSSL has no public call for SSL_session_reused, so this reaches its private binding.
    """
    return bool(_openssl.SSL_session_reused(connection._ssl))


class SessionOwner:
    """Who a TLS session belongs to: a user id once its connection logged in, else None."""

    __slots__ = ("user_id",)

    def __init__(self, user_id: int | None = None):
        self.user_id = user_id


class _HandshakeNotes:
    """What one connection's handshake resumed and issued (as keys of `TLSSessions`)."""

    __slots__ = ("owner", "resumed", "issued")

    def __init__(self, owner: SessionOwner | None):
        self.owner = owner  # None on a data connection, which is issued no session
        self.resumed: bytes | None = None
        self.issued: list[bytes] = []


class TLSSessions:
    """One server's TLS context and the book of which user each session it issued belongs to.

    The context (its session cache and ticket keys) is shared by every connection of the server,
    so a data connection can resume a session first made on a sibling control connection. A
    session is known by a keyed digest of its master secret (TLS 1.2: the same on every
    resumption; TLS 1.3: the ticket's resumption secret), read by the info callback while the
    handshake runs: the resumed session right after the ClientHello, each issued one as its
    ticket is written. pyOpenSSL has no public call for the master secret, so this reaches its
    private binding, as `session_reused` does.
    """

    max_entries = 100_000

    def __init__(self, cert_file: str, key_file: str):
        self.context = tls_context(cert_file, key_file)
        self.context.set_info_callback(self._on_handshake_step)
        self.context.set_tlsext_servername_callback(self._on_client_hello)
        self._lifetime = self.context.get_timeout()
        self._digest_key = secrets.token_bytes(32)
        self._owners: OrderedDict[bytes, tuple[float, SessionOwner]] = OrderedDict()
        self._lock = threading.Lock()

    def attach(self, connection: SSL.Connection, owner: SessionOwner | None) -> None:
        """Follow this connection's handshake; `owner` (control connections) owns what it issues."""
        connection.set_app_data(_HandshakeNotes(owner))

    def owner_of_resumed(self, connection: SSL.Connection) -> SessionOwner | None:
        """The owner of the session this connection resumed, or None (fresh, unknown or expired)."""
        notes = connection.get_app_data()
        if not isinstance(notes, _HandshakeNotes) or notes.resumed is None or not session_reused(connection):
            return None
        return self._owner_of(notes.resumed)

    def resumes_own_session(self, data: SSL.Connection, control) -> bool:
        """Whether `data` resumed a session that `control` itself resumed or was issued."""
        if not isinstance(control, SSL.Connection):
            return False
        notes, own = data.get_app_data(), control.get_app_data()
        if not isinstance(notes, _HandshakeNotes) or not isinstance(own, _HandshakeNotes):
            return False
        return notes.resumed is not None and (notes.resumed == own.resumed or notes.resumed in own.issued)

    def _on_client_hello(self, connection: SSL.Connection) -> None:
        # A data connection is issued no session ticket. A TLS 1.3 ticket follows the handshake,
        # and a client that only writes (rclone uploads) leaves it unread: its kernel then resets
        # the connection at close, dropping the end of the upload and its close-notify. Set
        # here, after the ClientHello's ticket was accepted, OP_NO_TICKET cancels the ticket
        # this handshake would send and leaves the resumption as it was (OpenSSL's
        # final_server_name); pyOpenSSL has no SSL_set_num_tickets nor a per-connection
        # set_options, so this reaches its private binding, as `session_reused` does.
        notes = connection.get_app_data()
        if isinstance(notes, _HandshakeNotes) and notes.owner is None:
            _openssl.SSL_set_options(connection._ssl, SSL.OP_NO_TICKET)

    def _on_handshake_step(self, connection, where, _result) -> None:
        if not where & (SSL.SSL_CB_ACCEPT_LOOP | SSL.SSL_CB_HANDSHAKE_DONE):
            return
        notes = connection.get_app_data()
        key = self._session_key(connection) if isinstance(notes, _HandshakeNotes) else None
        if key is None or key == notes.resumed or key in notes.issued:
            return
        if notes.resumed is None and not notes.issued and session_reused(connection):
            notes.resumed = key  # the first session seen in a resumed handshake is the one resumed
            self._inherit(notes)
            return
        notes.issued.append(key)
        if notes.owner is not None:
            self._book(key, notes.owner)

    def _inherit(self, notes: _HandshakeNotes) -> None:
        # A control connection that resumed a user's session was opened by that user's client
        # (rclone opens its parallel connections so): until it logs in itself, the sessions it
        # issues are that user's too, so siblings can resume them while it is still logging in.
        if notes.owner is not None and notes.owner.user_id is None:
            resumed = self._owner_of(notes.resumed)
            if resumed is not None:
                notes.owner.user_id = resumed.user_id

    def _owner_of(self, key: bytes) -> SessionOwner | None:
        with self._lock:
            found = self._owners.get(key)
        if found is None or time.monotonic() - found[0] > self._lifetime:
            return None
        return found[1]

    def _session_key(self, connection: SSL.Connection) -> bytes | None:
        session = _openssl.SSL_get_session(connection._ssl)
        if session == _ffi.NULL:
            return None
        buffer = _ffi.new("unsigned char[]", 256)
        length = _openssl.SSL_SESSION_get_master_key(session, buffer, 256)
        if not length:
            return None  # TLS 1.3 before its first ticket: no resumable secret yet
        return hmac.new(self._digest_key, _ffi.buffer(buffer, length)[:], hashlib.sha256).digest()

    def _book(self, key: bytes, owner: SessionOwner) -> None:
        now = time.monotonic()
        with self._lock:
            self._owners[key] = (now, owner)
            self._owners.move_to_end(key)
            # Oldest first: drop what expired, and the oldest beyond the cap.
            while self._owners and (len(self._owners) > self.max_entries
                                    or now - next(iter(self._owners.values()))[0] > self._lifetime):
                self._owners.popitem(last=False)


def _received_close_notify(sock) -> bool:
    """Whether the peer ended TLS properly (close-notify), rather than with a bare TCP FIN."""
    return isinstance(sock, SSL.Connection) and bool(sock.get_shutdown() & SSL.RECEIVED_SHUTDOWN)


# -- authorizer and file system --------------------------------------------------------------------

class WorkspaceAuthorizer:
    """pyftpdlib's authorizer interface over `common.auth`; the Workspace decides every permission."""

    def validate_authentication(self, username, password, handler):
        # One call for every kind of secret: auth recognises an FTPS app password itself.
        result = auth.authenticate(handler.services, username, password, method="password",
                                   protocol=PROTOCOL, ip=handler.remote_ip)
        if result.needs_totp:
            raise AuthFailed()  # FTPS has no second step; MFA accounts log in with app passwords
        return result

    def has_perm(self, username, perm, path=None):
        return perm in PERMS

    def get_perms(self, username):
        return PERMS

    def get_home_dir(self, username):
        return "/"

    def get_msg_login(self, username):
        return "Login successful."

    def get_msg_quit(self, username):
        return "Goodbye."

    def impersonate_user(self, username, password):
        """Nothing to impersonate: no OS user ever touches a file."""

    def terminate_impersonation(self, username):
        """Nothing to undo."""


class WorkspaceFS(AbstractedFS):
    """pyftpdlib's file system over the Workspace: virtual paths only, nothing on the real disk.

    Every public method of AbstractedFS is overridden (a test checks it), so no upstream method
    can fall through to `os`. "Real" and virtual paths are the same canonical virtual path.
    """

    def __init__(self, root, cmd_channel):
        super().__init__("/", cmd_channel)
        self.workspace = Workspace(cmd_channel.services, cmd_channel.principal)

    @property
    def root(self):
        return "/"

    @root.setter
    def root(self, path):
        self._root = "/"

    @property
    def cwd(self):
        return self._cwd

    @cwd.setter
    def cwd(self, path):
        self._cwd = path

    # -- paths: normalised once, lexically, by common.paths
    def ftpnorm(self, ftppath):
        return paths.normalise(ftppath, self.cwd)

    def ftp2fs(self, ftppath):
        return paths.normalise(ftppath, self.cwd)

    def fs2ftp(self, fspath):
        return fspath

    def validpath(self, path):
        return True  # a normalised virtual path cannot leave the workspace

    def realpath(self, path):
        return paths.normalise(path)

    # -- reading
    def stat(self, path):
        return _stat_result(self.workspace.stat(path))

    def lstat(self, path):
        return self.stat(path)

    def isfile(self, path):
        return self._kind(path) == "file"

    def isdir(self, path):
        return self._kind(path) == "folder"

    def islink(self, path):
        return False

    def lexists(self, path):
        return self._kind(path) is not None

    def readlink(self, path):
        raise Unsupported("There are no symbolic links here")

    def getsize(self, path):
        return self.workspace.stat(path).size

    def getmtime(self, path):
        return self.workspace.stat(path).mtime.timestamp()

    def listdir(self, path):
        return [entry.name for entry in self.workspace.list_dir(path)]

    def listdirinfo(self, path):
        return self.listdir(path)

    def entries(self, path) -> list[Entry]:
        """A folder's entries, or the one entry of a file (LIST and STAT accept both)."""
        try:
            return self.workspace.list_dir(path)
        except NotAFolder:
            return [self.workspace.stat(path)]

    # -- changing
    def open(self, filename, mode):
        if mode == "rb":
            return DownloadFile(self.workspace.open_read(filename))
        if mode == "wb":
            return UploadFile(self.workspace.open_write(filename))
        raise Unsupported("Uploads are written from the start; appending or resuming is not supported")

    def mkstemp(self, suffix="", prefix="", dir=None, mode="wb"):
        raise Unsupported("STOU is not supported; choose a file name")

    def chdir(self, path):
        if not self.workspace.stat(path).is_folder:
            raise NotAFolder()
        self.cwd = path

    def mkdir(self, path):
        self.workspace.make_dir(path)

    def rmdir(self, path):
        if not self.workspace.stat(path).is_folder:
            raise NotAFolder()
        self.workspace.remove(path, recursive=False)

    def remove(self, path):
        if self.workspace.stat(path).is_folder:
            raise IsAFolder()
        self.workspace.remove(path, recursive=False)

    def rename(self, src, dst):
        self.workspace.rename(src, dst)

    def chmod(self, path, mode):
        raise Unsupported("File modes are not kept")

    def utime(self, path, timeval):
        self.workspace.set_mtime(path, datetime.fromtimestamp(timeval, tz=timezone.utc))

    def get_user_by_uid(self, uid):
        return "owner"

    def get_group_by_gid(self, gid):
        return "group"

    # -- listings: `listing` holds names (pyftpdlib) or Entry objects (ours: one query per folder)
    def format_list(self, basedir, listing, ignore_err=True):
        for entry in self._entries_of(basedir, listing, ignore_err):
            kind = "d" if entry.is_folder else "-"
            mode = "rwxr-xr-x" if entry.writable else "r-xr-xr-x"
            line = f"{kind}{mode}   1 owner    group    {entry.size:>8} {_ls_time(entry.mtime)} {entry.name}\r\n"
            yield line.encode("utf-8")

    def format_mlsx(self, basedir, listing, perms, facts, ignore_err=True):
        for entry in self._entries_of(basedir, listing, ignore_err):
            found = {"type": "dir" if entry.is_folder else "file", "size": entry.size,
                     "modify": entry.mtime.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S"),
                     "perm": _mlsx_perm(entry)}
            shown = "".join(f"{name}={found[name]};" for name in sorted(found) if name in facts)
            yield f"{shown} {entry.name}\r\n".encode("utf-8")

    def _entries_of(self, basedir, listing, ignore_err):
        for item in listing:
            if isinstance(item, Entry):
                yield item
                continue
            try:
                yield self.workspace.stat(paths.join(basedir, item))
            except NotFound:
                if not ignore_err:
                    raise

    def _kind(self, path) -> str | None:
        try:
            return self.workspace.stat(path).kind
        except (NotFound, NotAFolder):
            return None


def _stat_result(entry: Entry) -> os.stat_result:
    kind = stat_module.S_IFDIR if entry.is_folder else stat_module.S_IFREG
    mode = kind | (0o755 if entry.writable else 0o555)
    seconds = entry.mtime.timestamp()
    return os.stat_result((mode, 0, 0, 1, 0, 0, entry.size, seconds, seconds, seconds))


def _ls_time(mtime: datetime) -> str:
    when = mtime.astimezone(timezone.utc)
    recent = (datetime.now(timezone.utc) - when).days < 180
    return f"{MONTHS[when.month - 1]} {when.day:02d} " + (f"{when:%H:%M}" if recent else f" {when.year}")


def _mlsx_perm(entry: Entry) -> str:
    if entry.is_folder:
        return "elcmfdp" if entry.writable else "el"
    return "rwfd" if entry.writable else "r"


# -- the file objects pyftpdlib's data channel reads and writes -------------------------------------

class UploadFile:
    """What the data channel writes into: an Upload that only an explicit `commit()` makes visible."""

    name = "<upload>"  # pyftpdlib may show a file's name; a path must not reach a log

    def __init__(self, upload):
        self.upload = upload

    @property
    def closed(self) -> bool:
        return self.upload.state != "open"

    def write(self, data) -> int:
        return self.upload.write(bytes(data))

    def commit(self) -> None:
        self.upload.commit()

    def abort(self, reason: str) -> None:
        self.upload.abort(reason)

    def close(self) -> None:
        # Closing is never completion (pyftpdlib closes files before it knows): abort if still open.
        self.abort("connection closed")


class DownloadFile:
    """What the data channel reads from: a Download's plaintext blocks, as `read(n)`."""

    name = "<download>"

    def __init__(self, download):
        self.download = download
        self._blocks = iter(download)
        self._block = memoryview(b"")  # the rest of the current plaintext block
        self._exhausted = False
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        pieces, wanted = [], size
        while (size < 0 or wanted > 0) and not self._exhausted:
            if not self._block:
                try:
                    self._block = memoryview(next(self._blocks))
                except StopIteration:
                    self._exhausted = True
                    break
            take = len(self._block) if size < 0 else min(wanted, len(self._block))
            pieces.append(self._block[:take])
            self._block = self._block[take:]
            wanted -= take
        return b"".join(pieces)

    def close(self) -> None:
        # A download read to its end audited itself; anything else is audited as interrupted.
        if not self.closed:
            self.closed = True
            if not self._exhausted:
                self.download.close("failed", "interrupted")


# -- data channel -----------------------------------------------------------------------------------

class _TransferEnd(DTPHandler):
    """Where every end of a data transfer lands: commit or abort the upload, then the one reply.

    It sits *below* pyftpdlib's TLS mixin in the MRO (see WorkspaceDTPHandler), so the mixin's
    own shutdown and error paths, which call `super().close()` and `super().handle_close()`,
    end here too. The 226 of an upload is sent only after `commit()` (DESIGN.md step 3).
    """

    _failure = None

    def handle_close(self):
        if self._closed:
            return
        if self.receive:
            # A bare FIN may be an attacker's or a crash's: only close-notify ends an upload.
            self.transfer_finished = _received_close_notify(self.socket)
            if not self.transfer_finished:
                self._resp = ("426 The upload ended without TLS close-notify; nothing was stored.", None)
        else:
            self.transfer_finished = len(self.producer_fifo) == 0
            self._resp = ("226 Transfer complete.", None) if self.transfer_finished else (
                "426 Transfer aborted; the connection closed early.", None)
        self.close()

    def close(self):
        if self._closed:
            return
        AsyncChat.close(self)
        if self._idler is not None and not self._idler.cancelled:
            self._idler.cancel()
        reply = self._finish_transfer()
        if reply:
            self.cmd_channel.respond(reply)
        self.cmd_channel.log_transfer(self.cmd, None, self.receive, self.transfer_finished,
                                      round(self.get_elapsed_time(), 3), self.get_transmitted_bytes())
        self.cmd_channel._on_dtp_close()

    def _finish_transfer(self) -> str | None:
        """Commit a finished upload, abort any other, end a download; return the reply, if any."""
        reply = self._resp[0] if self._resp else None
        if isinstance(self._failure, SealdropError):
            reply = reply_for(self._failure)
        file = self.file_obj
        if not isinstance(file, UploadFile):
            if file is not None:
                file.close()
            return reply
        if not self.transfer_finished or self._failure is not None:
            file.abort("incomplete" if self._resp else "aborted")
            return reply
        try:
            file.commit()
        except SealdropError as exc:
            return reply_for(exc)
        except Exception:  # the upload aborted itself; the client must still get its reply
            self.cmd_channel.log_exception(self)
            return "451 The upload could not be stored; please try again."
        return "226 Transfer complete; the file is stored."


_NOT_LOGGED_IN = "data connection resuming a TLS session of a connection not logged in"


class WorkspaceDTPHandler(TLS_DTPHandler, _TransferEnd):
    """The data channel: TLS required and checked before a byte of a transfer moves.

    Transfers handed to it before its TLS handshake finished are held, and released only once
    the session-reuse check passed; a channel that fails a check is closed with a 522 reply.
    """

    session_recheck_seconds = 0.1
    # Larger than pyftpdlib's 64 KiB: fewer trips through the IO loop and TLS layer per MiB.
    ac_in_buffer_size = 256 * 1024
    ac_out_buffer_size = 256 * 1024

    def __init__(self, sock, cmd_channel, acceptor=None):
        self._held = []
        self._cleared = False
        # Set while this is a candidate on a passive port that is still listening: not yet the
        # data channel, so a refusal ends this connection alone.
        self._acceptor = acceptor
        super().__init__(sock, cmd_channel)
        if self.connected and not self._ssl_requested:
            # Checked here, when the connection opens, not at PASV: PROT C afterwards gains nothing.
            self._refuse("522 Data connections must be protected with TLS (PROT P).", "clear data connection")

    def secure_connection(self, ssl_context):
        super().secure_connection(ssl_context)
        if isinstance(self.socket, SSL.Connection):
            self.cmd_channel.tls_sessions.attach(self.socket, None)

    def handle_ssl_established(self):
        self._judge_session()

    def _judge_session(self):
        refusal = self._session_refusal()
        if refusal == _NOT_LOGGED_IN and self._acceptor is not None and not self._acceptor._closed:
            # A sibling connection of a client that opens several at once may still be logging
            # in: ask again shortly, until the rightful connection comes or the port times out.
            self._initialized = True  # or DTPHandler.readable() would close the waiting channel
            self.call_later(self.session_recheck_seconds, self._judge_session)
            return
        if refusal:
            self._refuse("522 The data connection must resume a TLS session of this login.", refusal)
            return
        self._cleared = True
        if self._acceptor is not None:
            acceptor, self._acceptor = self._acceptor, None
            acceptor.admit(self)
        held, self._held = self._held, []
        for method, args in held:
            if self._closed:
                return
            method(*args)

    def _session_refusal(self) -> str | None:
        """Why this data connection's TLS session is not acceptable, or None when it is."""
        channel = self.cmd_channel
        if channel.principal is None:
            return "data connection before login"
        if not channel.require_session_reuse:
            return None
        if not session_reused(self.socket):
            return "data connection without TLS session reuse"
        if channel.tls_sessions.resumes_own_session(self.socket, channel.socket):
            return None
        owner = channel.tls_sessions.owner_of_resumed(self.socket)
        if owner is not None and owner.user_id is None:
            return _NOT_LOGGED_IN
        if owner is None or owner.user_id != channel.principal.user_id:
            return "data connection resuming another login's TLS session"
        return None

    def handle_failed_ssl_handshake(self):
        if self._acceptor is None:
            return super().handle_failed_ssl_handshake()
        self._refuse("522 SSL handshake failed.", "data connection with a failed TLS handshake")

    def handle_error(self):
        self._failure = sys.exc_info()[1]
        if not isinstance(self._failure, SealdropError):
            self._resp = ("426 Transfer aborted by a server error.", None)
        super().handle_error()

    def push(self, data):
        self._hold(super().push, data)

    def push_with_producer(self, producer):
        self._hold(super().push_with_producer, producer)

    def enable_receiving(self, type, cmd):
        # TYPE A would rewrite line endings: store the bytes as sent, whatever the TYPE.
        self._hold(super().enable_receiving, "i", cmd)

    def close_when_done(self):
        self._hold(super().close_when_done)

    def use_sendfile(self):
        return False

    def _hold(self, method, *args):
        if self._cleared:
            method(*args)
            return
        # Marked busy, or DTPHandler.readable() would close the idle channel meanwhile.
        self._initialized = True
        self._held.append((method, args))

    def _refuse(self, reply: str, reason: str) -> None:
        self._error = True  # no TLS goodbye on a connection we refuse
        self.cmd_channel.audit_refusal(reason)
        if self._acceptor is not None:
            # The port stays the rightful client's until its accept timeout: a same-address
            # thief that connected first must not end the transfer waiting for it.
            self._acceptor.reject(self, reply)
            return
        self._resp = (reply, None)
        self.cmd_channel.drop_queued_transfers()
        self.close()

    def close(self):
        if self._acceptor is None:
            return super().close()
        # A refused or abandoned candidate: never the data channel, so nothing to finish or reply.
        acceptor, self._acceptor = self._acceptor, None
        acceptor.forget(self)
        self._error = True
        if not self._closed:
            AsyncChat.close(self)
        if self._idler is not None and not self._idler.cancelled:
            self._idler.cancel()


class WorkspacePassiveDTP(PassiveDTP):
    """A passive listener that waits only briefly for the client's data connection.

    A connection from the client's address becomes a candidate: it becomes the data channel
    only once its TLS session passed the checks, and the port listens on meanwhile, so a
    same-address thief that connects first is refused alone.
    """

    timeout = 20
    max_candidates = 4

    def __init__(self, cmd_channel, extmode=False):
        self._candidates: set[WorkspaceDTPHandler] = set()
        self._refusal: str | None = None
        super().__init__(cmd_channel, extmode)

    def handle_accepted(self, sock, addr):
        channel = self.cmd_channel
        if not channel.connected or addr[0] != channel.remote_ip or not channel._prot:
            # Stock handling: a foreign address is refused; a clear-text channel gets its 522.
            return super().handle_accepted(sock, addr)
        if len(self._candidates) >= self.max_candidates:
            sock.close()
            return
        candidate = channel.dtp_handler(sock, channel, acceptor=self)
        if candidate._acceptor is self and not candidate._closed:
            self._candidates.add(candidate)

    def admit(self, candidate: WorkspaceDTPHandler) -> None:
        """The candidate passed every check: it becomes the data channel; the port closes."""
        self._candidates.discard(candidate)
        self.cmd_channel.data_channel = candidate
        self.cmd_channel._on_dtp_connection()  # closes this listener and starts the queued transfer

    def reject(self, candidate: WorkspaceDTPHandler, reply: str) -> None:
        self._refusal = reply  # the reply if the rightful connection never comes
        candidate.close()

    def forget(self, candidate: WorkspaceDTPHandler) -> None:
        self._candidates.discard(candidate)

    def handle_timeout(self):
        # A transfer that never got its connection must not hold an open upload until logout.
        if self.cmd_channel.connected:
            self.cmd_channel.drop_queued_transfers()
            if self._refusal:
                self.cmd_channel.respond(self._refusal)
                return self.close()
        super().handle_timeout()

    def close(self):
        for candidate in list(self._candidates):
            candidate.close()
        self._candidates.clear()
        super().close()


# -- control channel --------------------------------------------------------------------------------

def _commands() -> dict:
    """pyftpdlib's command table, copied and trimmed: no SITE CHMOD, no REIN; logins first."""
    table = {name: dict(spec) for name, spec in TLS_FTPHandler.proto_cmds.items()}
    for name in ("SITE CHMOD", "REIN"):
        table.pop(name, None)
    for name, spec in table.items():
        # Only the login handshake and harmless queries work before login (stock STAT and SITE
        # HELP answer anyone).
        spec["auth"] = name not in ("USER", "PASS", "AUTH", "PBSZ", "PROT", "FEAT", "HELP",
                                    "NOOP", "QUIT", "SYST")
    for name in REFUSED_COMMANDS:
        table[name]["perm"] = None  # reach our handler, which refuses them with a reason
    for name, text in (("HASH", "HASH <SP> path (file hash; see OPTS HASH)."),
                       ("XMD5", "XMD5 <SP> path (MD5 of a file)."),
                       ("XSHA256", "XSHA256 <SP> path (SHA-256 of a file).")):
        table[name] = dict(perm="r", auth=True, arg=True, help=f"Syntax: {text}")
    return table


class FTPSHandler(TLS_FTPHandler):
    """One control connection: explicit FTPS (AUTH TLS first)."""

    services: Services | None = None  # set on the configured subclass (handler_class)
    require_session_reuse = True
    authorizer = WorkspaceAuthorizer()
    abstracted_fs = WorkspaceFS
    dtp_handler = WorkspaceDTPHandler
    passive_dtp = WorkspacePassiveDTP
    proto_cmds = _commands()
    tls_control_required = True
    tls_data_required = True
    permit_foreign_addresses = False
    permit_privileged_ports = False
    unicode_errors = "strict"
    use_sendfile = False
    banner = "Sealdrop FTPS ready; AUTH TLS required."
    timeout = 300
    login_timeout = 30  # LOGIN_TIMEOUT_SECONDS, from the TCP accept

    def __init__(self, conn, server, ioloop=None):
        self.session_id = secrets.token_hex(4)
        self._accepted_at = time.monotonic()
        self._slot = self._login_deadline = None
        self.principal: Principal | None = None
        self.tls_owner = SessionOwner()  # owns the TLS sessions issued to this connection
        self._logged_in_at: float | None = None
        self._hash_algorithm = "SHA-256"
        self._ban_checked = False
        self._discarding = False
        self._command_path = None
        super().__init__(conn, server, ioloop)
        self._current_facts = ["type", "perm", "size", "modify"]
        self._available_facts = list(self._current_facts)
        self._advertise()

    tls_sessions: TLSSessions | None = None  # set on the configured subclass (handler_class)

    @classmethod
    def get_ssl_context(cls):
        # One context per server: sessions are bound to users by `tls_sessions`, not by context.
        return cls.tls_sessions.context

    def secure_connection(self, ssl_context):
        super().secure_connection(ssl_context)
        if isinstance(self.socket, SSL.Connection):
            self.tls_sessions.attach(self.socket, self.tls_owner)

    @property
    def workspace(self) -> Workspace | None:
        return self.fs.workspace if self.authenticated and self.fs is not None else None

    # -- connection slots and the login deadline (common.admission)
    def handle(self):
        if self._admitted():
            super().handle()

    def _admitted(self) -> bool:
        self._slot = self.server.admission.admit(self.remote_ip)
        if self._slot is None:
            log.warning("ftps session %s: refused, too many connections from its client", self.session_id)
            self.handle_max_cons_per_ip()  # 421 and close
        return self._slot is not None

    def add_channel(self, map=None, events=None):
        if self._closed:
            return  # refused and already closed: ThreadedFTPServer still hands it to a thread
        super().add_channel(map, events)
        # ThreadedFTPServer moves each session to its own thread's IO loop: the deadline is
        # set there, so that it fires on the session's thread and never on the acceptor's.
        if (self._login_deadline is None and self._slot is not None and not self.authenticated
                and self.ioloop is not self.server.ioloop):
            remaining = max(0.0, self._accepted_at + self.login_timeout - time.monotonic())
            self._login_deadline = self.call_later(remaining, self._login_timed_out)

    def _login_timed_out(self):
        if self.authenticated:
            return
        log.info("ftps session %s: login timed out", self.session_id)
        if self._ssl_accepting:
            self.close()  # no reply can be sent in the middle of a TLS handshake
        else:
            self.respond("421 Login timed out.")
            self.close_when_done()

    # -- reading commands: one error translator, one place
    def collect_incoming_data(self, data):
        if self._discarding:
            return
        self._in_buffer.append(data)
        self._in_buffer_len += len(data)
        if self._in_buffer_len > MAX_COMMAND_LINE:
            # Drop the rest of the line too, so its tail is never run as a command of its own.
            self.respond("500 Command line too long.")
            self._in_buffer, self._in_buffer_len, self._discarding = [], 0, True

    def found_terminator(self):
        raw = b"".join(self._in_buffer)
        self._in_buffer, self._in_buffer_len = [], 0
        if self._discarding:
            self._discarding = False
            return
        if self._idler is not None and not self._idler.cancelled:
            self._idler.reset()
        try:
            line = raw.decode("utf-8", "strict")
        except UnicodeDecodeError:
            self.respond("501 Commands must be valid UTF-8.")
            return
        cmd = line.split(" ")[0].upper()
        self.pre_process_command(line, cmd, line[len(cmd) + 1:])

    def pre_process_command(self, line, cmd, arg):
        self._command_path = None
        try:
            if not self._ban_checked:
                self._check_ban()
            if cmd == "SITE" and self.workspace is not None:
                self._audit_unknown_site(arg)
            super().pre_process_command(line, cmd, arg)
        except SealdropError as exc:
            self.respond(reply_for(exc))
            if isinstance(exc, (PermissionDenied, Unsupported)):
                self.audit_refusal(cmd, self._command_path)
            if exc.ftp_code == 421:
                self.close_when_done()
        except Exception:  # a bug must cost one command, not the session
            self.log_exception(self)
            self.respond("451 The command failed on the server.")

    def process_command(self, cmd, *args, **kwargs):
        if args and self.proto_cmds.get(cmd, {}).get("perm"):
            self._command_path = args[0]  # already normalised by ftp2fs: safe for the audit
        super().process_command(cmd, *args, **kwargs)

    def _check_ban(self) -> None:
        # At the first command rather than at accept: that runs on this session's own thread,
        # so a slow database never stalls the accept loop.
        self._ban_checked = True
        if auth.is_banned(self.services, self.remote_ip):
            raise Banned()

    def _audit_unknown_site(self, arg: str) -> None:
        word = arg.split(" ")[0].upper()
        if f"SITE {word}" not in self.proto_cmds:
            self.audit_refusal(f"SITE {word[:12]}" if word.isalnum() else "SITE")

    # -- login
    def ftp_PASS(self, line):
        if self.authenticated:
            return self.respond("503 User already authenticated.")
        if not self.username:
            return self.respond("503 Login with USER first.")
        try:
            result = self.authorizer.validate_authentication(self.username, line, self)
        except AuthFailed as exc:  # one reply for every refusal; Banned goes to the translator
            self.username = ""
            self.attempted_logins += 1
            self.respond(reply_for(exc))
            if self.attempted_logins >= self.max_login_attempts:
                self.close_when_done()
            return
        self.principal = Principal.from_login(result)
        self.handle_auth_success("/", "", self.authorizer.get_msg_login(self.username))

    def on_login(self, username):
        self._logged_in_at = time.monotonic()
        self._slot.logged_in()
        if self._login_deadline is not None:
            self._login_deadline.cancel()
        self.tls_owner.user_id = self.principal.user_id
        log.info("ftps session %s: user %s logged in", self.session_id, self.principal.user_id)

    def on_logout(self, username):
        self._record_logout()

    def close(self):
        self._record_logout()  # a session that drops without QUIT ends here
        if self._slot is not None:
            self._slot.release()
        super().close()

    def _record_logout(self):
        if self._logged_in_at is not None and self.principal is not None:
            started, self._logged_in_at = self._logged_in_at, None
            Workspace(self.services, self.principal).record_logout(started)

    def flush_account(self):
        self.drop_queued_transfers()
        super().flush_account()
        self.tls_owner.user_id = None
        self.principal = None
        self.fs = None

    # -- TLS policy
    def ftp_PROT(self, line):
        if line.strip().upper() == "C":
            self.audit_refusal("PROT C")
            return self.respond("534 Clear-text data connections are not allowed; use PROT P.")
        super().ftp_PROT(line)

    # -- listings
    def ftp_LIST(self, path):
        lines = self.fs.format_list(path, self.fs.entries(path))
        self.push_dtp_data(BufferedIteratorProducer(lines), isproducer=True, cmd="LIST")
        return path

    def ftp_NLST(self, path):
        names = "".join(f"{entry.name}\r\n" for entry in self.fs.entries(path))
        self.push_dtp_data(names.encode("utf-8"), cmd="NLST")
        return path

    def ftp_MLSD(self, path):
        lines = self.fs.format_mlsx(path, self.workspace.list_dir(path), PERMS, self._current_facts)
        self.push_dtp_data(BufferedIteratorProducer(lines), isproducer=True, cmd="MLSD")
        return path

    def ftp_MLST(self, path):
        entry = self.workspace.stat(path)
        facts = b"".join(self.fs.format_mlsx("/", [entry], PERMS, self._current_facts)).decode()
        self.push(f'250-Listing "{path}":\r\n {facts.split(" ")[0]} {path}\r\n')
        self.respond("250 End MLST.")
        return path

    def ftp_STAT(self, path):
        if not path:
            return super().ftp_STAT(path)
        lines = b"".join(self.fs.format_list(path, self.fs.entries(path))).decode()
        self.push(f'213-Status of "{path}":\r\n{lines}')
        self.respond("213 End of status.")
        return path

    # -- transfers
    def ftp_RETR(self, file):
        offset, self._restart_position = self._restart_position, 0
        if offset and offset > self.fs.getsize(file):
            return self.respond("554 The restart position is beyond the end of the file.")
        download = DownloadFile(self.workspace.open_read(file, offset))
        producer = FileProducer(download, "i")  # the stored bytes, whatever the TYPE
        self.push_dtp_data(producer, isproducer=True, file=download, cmd="RETR")
        return file

    def ftp_STOR(self, file, mode="w"):
        if self._restart_position:
            self._restart_position = 0
            raise Unsupported("Resuming an upload (REST before STOR) is not supported: files are "
                              "encrypted as they arrive; upload the whole file again")
        self._receive_into(self.fs.open(file, "wb"), "STOR")
        return file

    def ftp_APPE(self, file):
        self._restart_position = 0
        raise Unsupported("APPE is not supported: files are encrypted as they arrive; "
                          "upload the whole file with STOR")

    def ftp_STOU(self, line):
        raise Unsupported("STOU is not supported; upload with STOR and a name of your choice")

    def _receive_into(self, upload: UploadFile, cmd: str) -> None:
        self.drop_queued_transfers()
        if self.data_channel is not None:
            self.respond("125 Data connection already open. Transfer starting.")
            self.data_channel.file_obj = upload
            self.data_channel.enable_receiving(self._current_type, cmd)
        else:
            self.respond("150 File status okay. About to open data connection.")
            self._in_dtp_queue = (upload, cmd)

    def drop_queued_transfers(self) -> None:
        """Abandon transfers waiting for a data connection (the upload is aborted, the download ended)."""
        for queued, position in ((self._in_dtp_queue, 0), (self._out_dtp_queue, 2)):
            if queued is not None and queued[position] is not None:
                queued[position].close()
        self._in_dtp_queue = self._out_dtp_queue = None

    # -- fingerprints
    def ftp_HASH(self, path):
        entry = self.workspace.fingerprint(path)
        digest = entry.sha256 if self._hash_algorithm == "SHA-256" else entry.md5
        self.respond(f"213 {self._hash_algorithm} 0-{entry.size} {digest.hex()} {path}")

    def ftp_XMD5(self, path):
        self.respond(f"250 {self.workspace.fingerprint(path).md5.hex()}")

    def ftp_XSHA256(self, path):
        self.respond(f"250 {self.workspace.fingerprint(path).sha256.hex()}")

    def ftp_OPTS(self, line):
        name, _, value = line.partition(" ")
        if name.upper() != "HASH":
            return super().ftp_OPTS(line)
        if value and value.upper() not in HASH_ALGORITHMS:
            return self.respond("501 Unknown hash algorithm; use SHA-256 or MD5.")
        self._hash_algorithm = value.upper() or self._hash_algorithm
        self._advertise()
        self.respond(f"200 {self._hash_algorithm}")

    def _advertise(self) -> None:
        hashes = ";".join(f"{name}*" if name == self._hash_algorithm else name for name in HASH_ALGORITHMS)
        self._extra_feats = ["AUTH TLS", "PBSZ", "PROT", f"HASH {hashes}", "XMD5", "XSHA256"]

    def ftp_HELP(self, line):
        offered = sorted(c for c in self.proto_cmds if " " not in c and c not in REFUSED_COMMANDS)
        if line:
            spec = self.proto_cmds.get(line.upper()) if line.upper() in offered else None
            return self.respond(f"214 {spec['help']}" if spec else "501 Unrecognized command.")
        rows = ["".join(f" {name:<8}" for name in offered[i:i + 8]) for i in range(0, len(offered), 8)]
        self.push("214-The following commands are recognized:\r\n" + "".join(f"{r}\r\n" for r in rows))
        self.respond("214 Help command successful.")

    # -- audit and logs: ids only
    def audit_refusal(self, operation: str, path: str | None = None) -> None:
        """Record a refused command or data connection in the audit trail (after login only)."""
        if self.workspace is None:
            return
        try:
            self.workspace.record_refusal(operation, path)
        except Exception:
            log.exception("ftps session %s: could not audit a refusal", self.session_id)

    def respond(self, resp, logfun=None):
        resp = resp.translate(_REPLY_UNSAFE)
        self._last_response = resp
        self.push(resp + "\r\n")

    def log(self, msg, logfun=None):
        """pyftpdlib's free-text session log carries user names and paths: dropped; see log_cmd."""

    def logline(self, msg, logfun=None):
        """pyftpdlib's raw command log (every line, with paths): dropped."""

    def logerror(self, msg):
        log.error("ftps session %s: library error", self.session_id)

    def log_exception(self, instance):
        # The type and the frames, never the message, which may hold a name or a path.
        kind, _, tb = sys.exc_info()
        log.error("ftps session %s: unexpected %s\n%s", self.session_id,
                  getattr(kind, "__name__", kind), "".join(traceback.format_tb(tb)))

    def log_cmd(self, cmd, arg, respcode, respstr):
        level = logging.INFO if cmd in _CHANGING or str(respcode)[0] in "45" else logging.DEBUG
        log.log(level, "ftps session %s user %s: %s -> %s", self.session_id, self._user_id(), cmd, respcode)

    def log_transfer(self, cmd, filename, receive, completed, elapsed, bytes):
        log.info("ftps session %s user %s: %s %s bytes in %ss, %s", self.session_id, self._user_id(),
                 cmd, bytes, elapsed, "completed" if completed else "incomplete")

    def get_repr_info(self, as_str=False, extra_info=None):
        info = {"session": self.session_id, "user_id": self._user_id()}
        return ", ".join(f"{k}={v!r}" for k, v in info.items()) if as_str else info

    def _user_id(self) -> int | None:
        return self.principal.user_id if self.principal else None


class ImplicitFTPSHandler(FTPSHandler):
    """Implicit FTPS: TLS from the first byte; the greeting follows the handshake."""

    banner = "Sealdrop FTPS ready."
    _greeted = False

    def handle(self):
        if not self._admitted():
            return
        self.on_connect()
        self.secure_connection(self.ssl_context)

    def handle_ssl_established(self):
        if not self._greeted:
            self._greeted = True
            self._pbsz = self._prot = True  # implicit FTPS protects data channels from the start
            self.respond(f"220 {self.banner}")


# -- servers ----------------------------------------------------------------------------------------

class FTPSServer(ThreadedFTPServer):
    """A thread per session, so blocking database and store calls stall only their own session."""

    def __init__(self, address, handler, ioloop=None, backlog=100):
        # pyftpdlib keeps the stop flag and its lock on ThreadedFTPServer itself, shared by every
        # server in the process; each of ours gets its own.
        self._exit = threading.Event()
        self._lock = threading.Lock()
        super().__init__(address, handler, ioloop=ioloop, backlog=backlog)
        self.max_cons_per_ip = handler.services.settings.max_sessions_per_ip
        self.admission = ftps_admission(handler.services.settings, self.max_cons)


def ftps_admission(settings, max_total: int) -> Admission:
    """The connection slots of an FTPS process: per client, and for connections not logged in."""
    return Admission(max_total=max_total, max_per_client=settings.max_sessions_per_ip,
                     max_unauthenticated_per_client=settings.max_unauthenticated_per_ip)


def handler_class(services: Services, *, implicit: bool = False) -> type[FTPSHandler]:
    """A handler subclass carrying this process's settings as class options."""
    settings = services.settings
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise ConfigError("TLS_CERT_FILE and TLS_KEY_FILE must be set for FTPS")
    base = ImplicitFTPSHandler if implicit else FTPSHandler
    return type(f"Configured{base.__name__}", (base,), {
        "services": services,
        "certfile": str(settings.tls_cert_file),
        "keyfile": str(settings.tls_key_file),
        "tls_sessions": TLSSessions(str(settings.tls_cert_file), str(settings.tls_key_file)),
        "passive_ports": list(settings.ftps_passive_ports),
        "masquerade_address": settings.ftps_masquerade_address,
        "require_session_reuse": settings.ftps_require_session_reuse,
        # pyftpdlib's per-connection limit agrees with the shared lockout threshold.
        "max_login_attempts": settings.lockout_threshold,
        "login_timeout": settings.login_timeout_seconds,
    })


def build_servers(services: Services, host: str) -> list[FTPSServer]:
    """The explicit server and, when FTPS_IMPLICIT_PORT is set, the implicit one, on one IO loop."""
    settings, ioloop = services.settings, IOLoop()
    servers = [FTPSServer((host, settings.ftps_port), handler_class(services), ioloop=ioloop)]
    if settings.ftps_implicit_port is not None:
        servers.append(FTPSServer((host, settings.ftps_implicit_port),
                                  handler_class(services, implicit=True), ioloop=ioloop))
        servers[1].admission = servers[0].admission  # one process, one count for both ports
    return servers


def serve(servers: list[FTPSServer], stop: threading.Event, poll_seconds: float = 0.25) -> None:
    """Accept connections until `stop` is set, then close every session and listener."""
    try:
        while not stop.is_set():
            # The servers share one IO loop: polling through the first serves them all.
            servers[0].serve_forever(timeout=poll_seconds, blocking=False, handle_exit=False)
    finally:
        for server in servers:
            server.close_all()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    try:
        settings = settings_from_environment()
        services = Services(settings)
        prepare_spool_host(services)
        host = "127.0.0.1" if settings.app_env != "production" else "0.0.0.0"
        servers = build_servers(services, host)
    except ConfigError as exc:
        log.error("ftps cannot start: %s", exc.message)
        return exc.exit_code
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    ports = ", ".join(f"{s.address[1]}" for s in servers)
    log.info("ftps serving on %s port(s) %s (passive %s-%s)", host, ports,
             settings.ftps_passive_ports.start, settings.ftps_passive_ports.stop - 1)
    serve(servers, stop)
    services.close()
    log.info("ftps stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
