"""The hardened SSH transport: algorithms offered, key-proving auth handler, log lines without client text."""

from __future__ import annotations

import logging
import re

import paramiko
from paramiko.auth_handler import AuthHandler
from paramiko.common import AUTH_FAILED, MSG_CHANNEL_DATA, MSG_CHANNEL_EXTENDED_DATA
from paramiko.message import Message
from paramiko.ssh_exception import SSHException

# One logger for the whole door, named after the package.
log = logging.getLogger(__package__)


# Only these are offered (AES-256 and SHA-2, strict kex); everything else paramiko knows,
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


# paramiko's log lines that carry client text, cut to their fixed part; every line is capped.
CLIENT_TEXT = (
    (re.compile(r"Connected \(version .*", re.S), "Connected"),
    (re.compile(r"(Disconnect \(code \d+\)).*", re.S), r"\1"),
    (re.compile(r"(Incompatible version|Indecipherable protocol version|Auth rejected: pubkey algorithm"
                r"|Auth rejected: unsupported or mangled public key|Auth rejected: public key).*", re.S), r"\1"),
)
MAX_LOG_LINE = 200


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
    """A server transport that negotiates only the algorithms listed above."""

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
