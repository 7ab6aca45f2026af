"""The data channel: TLS DTP handler that commits or aborts transfers, and the passive listener."""

from __future__ import annotations

import sys
import threading

from OpenSSL import SSL
from pyftpdlib.handlers.ftp.data import DTPHandler
from pyftpdlib.handlers.ftp.dispatchers import PassiveDTP
from pyftpdlib.handlers.ftps.data import TLS_DTPHandler
from pyftpdlib.ioloop import AsyncChat

from common.errors import SealdropError
from transfer.ftps.filesystem import UploadFile
from transfer.ftps.replies import reply_for
from transfer.ftps.tls import _received_close_notify, session_reused


class _TransferEnd(DTPHandler):
    """Where every end of a data transfer lands: commit or abort the upload, then the one reply.

    It sits *below* pyftpdlib's TLS mixin in the MRO (see WorkspaceDTPHandler), so the mixin's
    own shutdown and error paths, which call `super().close()` and `super().handle_close()`,
    end here too. The 226 of an upload is sent only after `commit()` (the commit protocol of every door).
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


_PASSIVE_PORT_CHOICE = threading.Lock()


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
        # Sessions run on threads of their own, and pyftpdlib binds a passive port (with
        # SO_REUSEADDR) before it listens: two PASV at once could bind the same free port, and
        # the second listen() would fail. Choosing a port and listening on it are one step.
        with _PASSIVE_PORT_CHOICE:
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
