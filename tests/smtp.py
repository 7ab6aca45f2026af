"""Real SMTP servers for mail tests: a small hand-written one (STARTTLS with a throwaway
certificate, AUTH PLAIN, one connection) and aiosmtpd's (any number of messages)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import email
import ipaddress
import re
import socket
import ssl
import threading
from email import policy

import pytest
from aiosmtpd.controller import Controller
from rq.job import Job
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common.jobs.invitations import send_password_link
from common.jobs.registry import MAIL_QUEUE
from common.services import Services

LINK = re.compile(r"(https?://\S+/password/([A-Za-z0-9_-]+))")  # a set-password link: (link, token)


class TinySmtp:
    """A one-connection-at-a-time SMTP server on 127.0.0.1 that speaks STARTTLS and AUTH PLAIN."""

    def __init__(self, context: ssl.SSLContext | None, *, refuse_recipients: bool = False):
        self.context, self.refuse_recipients = context, refuse_recipients
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[dict] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            self._session(conn)

    def _session(self, conn) -> None:
        state = {"tls": False, "auth": None, "rcpt": [], "data": b""}
        reader = conn.makefile("rb")
        conn.sendall(b"220 tiny ESMTP\r\n")
        while line := reader.readline():
            verb = line.strip().split(b" ")[0].upper()
            if verb == b"EHLO":
                offers = [b"250-tiny", b"250-AUTH PLAIN"] + ([b"250-STARTTLS"] if self.context else [])
                conn.sendall(b"\r\n".join(offers + [b"250 SIZE 1000000"]) + b"\r\n")
            elif verb == b"STARTTLS":
                conn.sendall(b"220 go ahead\r\n")
                conn = self.context.wrap_socket(conn, server_side=True)
                reader, state["tls"] = conn.makefile("rb"), True
            elif verb == b"AUTH":
                state["auth"] = line.strip().split(b" ")[2]
                conn.sendall(b"235 ok\r\n")
            elif verb in (b"MAIL", b"RSET", b"NOOP"):
                conn.sendall(b"250 ok\r\n")
            elif verb == b"RCPT":
                state["rcpt"].append(line.strip().split(b":", 1)[1])
                if self.refuse_recipients:  # as real servers do, the reply repeats the address
                    conn.sendall(b"550 5.1.1 " + state["rcpt"][-1] + b": Recipient address rejected\r\n")
                else:
                    conn.sendall(b"250 ok\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 end with .\r\n")
                while (chunk := reader.readline()) != b".\r\n":
                    state["data"] += chunk
                self.received.append(state)
                conn.sendall(b"250 queued\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


def self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class AioSmtp(Controller):
    """aiosmtpd on a free port of 127.0.0.1, requiring STARTTLS; keeps every message it accepts."""

    def __init__(self, context: ssl.SSLContext):
        # Bound here and handed to asyncio, so no other process can take the port meanwhile.
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        super().__init__(self, hostname="127.0.0.1", port=self.listener.getsockname()[1],
                         tls_context=context, require_starttls=True)

    def _create_server(self):
        return self.loop.create_server(self._factory_invoker, sock=self.listener)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler hook
        self.messages.append((list(envelope.rcpt_tos),
                              email.message_from_bytes(envelope.original_content, policy=policy.default)))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server(tmp_path, monkeypatch):
    """A real SMTP server (aiosmtpd, STARTTLS) whose certificate our client trusts."""
    cert_file, key_file = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # trust our test CA, verification stays on
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    server = AioSmtp(context)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mailer(services, smtp_server):
    """The shared services, but sending mail by SMTP to `smtp_server` (as a worker would)."""
    svc = Services(dataclasses.replace(services.settings, smtp_url=f"smtp://127.0.0.1:{smtp_server.port}"))
    yield svc
    svc.close()


def run_link_job(mailer, user_id, purpose):
    """Run the waiting set-password job of this user and purpose as the worker would; its result."""
    job = Job.fetch(f"password-{purpose}-{user_id}", connection=mailer.redis)
    assert job.origin == MAIL_QUEUE and job.args == (user_id, purpose)
    job.delete()
    return send_password_link(mailer, *job.args)
