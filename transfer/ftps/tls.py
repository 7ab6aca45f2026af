"""TLS for the FTPS door: server contexts, the session booking of `TLSSessions`, the reuse check."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi, lib as _openssl


TLS12_CIPHERS = b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
TLS13_CIPHERS = b"TLS_AES_256_GCM_SHA384"


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
