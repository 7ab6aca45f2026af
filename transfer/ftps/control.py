"""The control channel: the FTPS handler, its command table and its TLS/login rules."""

from __future__ import annotations

import logging
import secrets
import sys
import time
import traceback

from OpenSSL import SSL
from pyftpdlib.handlers.ftp.producers import BufferedIteratorProducer, FileProducer
from pyftpdlib.handlers.ftps.control import TLS_FTPHandler

from common.errors import AuthFailed, Banned, PermissionDenied, SealdropError, Unsupported
from common.services import Services
from common.vfs import Principal, Workspace
from transfer.ftps.authorizer import PERMS, WorkspaceAuthorizer
from transfer.ftps.data import WorkspaceDTPHandler, WorkspacePassiveDTP
from transfer.ftps.filesystem import DownloadFile, UploadFile, WorkspaceFS
from transfer.ftps.replies import reply_for
from transfer.ftps.tls import SessionOwner, TLSSessions
from transfer.sessions import LogoutAudit, address_banned

# One logger for the whole door, named after the package.
log = logging.getLogger(__package__)


class DownloadProducer(FileProducer):
    """Hands the data channel one decrypted chunk (256 KiB) at a time, not pyftpdlib's
    64 KiB: a quarter of the trips through the IO loop and the TLS layer per MiB."""

    buffer_size = 256 * 1024


REFUSED_COMMANDS = ("APPE", "STOU")
HASH_ALGORITHMS = ("SHA-256", "MD5")


MAX_COMMAND_LINE = 2048


# A reply is one line: CR, LF or NUL taken from a message or a name could forge a second reply.
_REPLY_UNSAFE = str.maketrans({"\r": "?", "\n": "?", "\x00": "?"})
# Commands logged at INFO (pyftpdlib's own choice: the ones that change something).
_CHANGING = {"DELE", "RNFR", "RNTO", "MKD", "XMKD", "RMD", "XRMD", "MFMT", "STOR", "RETR"}


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
        self.logout_audit = LogoutAudit("ftps", self.session_id)
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
        if address_banned(self.services, "ftps", self.session_id, self.remote_ip):
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
        self.logout_audit.logged_in(self.workspace)
        self._slot.logged_in()
        if self._login_deadline is not None:
            self._login_deadline.cancel()
        self.tls_owner.user_id = self.principal.user_id
        log.info("ftps session %s: user %s logged in", self.session_id, self.principal.user_id)

    def on_logout(self, username):
        self.logout_audit.record()

    def close(self):
        self.logout_audit.record()  # a session that drops without QUIT ends here
        if self._slot is not None:
            self._slot.release()
        super().close()

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
        producer = DownloadProducer(download, "i")  # the stored bytes, whatever the TYPE
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
