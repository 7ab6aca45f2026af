"""Integrity alerts and fixity: mail to the account's admins (.eml and SMTP with STARTTLS)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import email
import io
import ipaddress
import socket
import ssl
import threading
from email import policy

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rq.job import Job
from sqlalchemy import select

from common import mail
from common.errors import ConfigError
from common.jobs.alerts import send_integrity_alert
from common.jobs.fixity import verify_stored
from common.jobs.registry import MAIL_QUEUE
from common.models import AuditEvent, FileVersion
from tests.common.test_rotation import make_account_with_files


def read_mails(folder) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(p.read_bytes(), policy=policy.default)
            for p in sorted(folder.glob("*.eml"))]


def test_integrity_alert_mails_every_admin_without_file_names(fresh_settings, open_services, tmp_path):
    svc = open_services(fresh_settings)
    account_id, _, admin, _ = make_account_with_files(svc, {"/Secret plans.txt": b"x"})
    folder = svc.settings.mail_dir
    assert send_integrity_alert(svc, account_id) == 1
    [message] = read_mails(folder)
    assert message["To"] == f"{admin}@example.test"
    body = message.get_content()
    assert f"account id {account_id}" in body and svc.settings.public_url in body
    assert "integrity_failure" in body and "Upload the file again" in body
    assert "Secret" not in body and "plans" not in body and "Secret" not in message["Subject"]
    assert oct(folder.stat().st_mode & 0o777) == "0o700"


def test_fixity_finds_a_damaged_object_audits_and_alerts(fresh_settings, open_services):
    svc = open_services(fresh_settings)
    files = {"/good.bin": b"good " * 40_000, "/bad.bin": b"bad " * 40_000}
    account_id, *_ = make_account_with_files(svc, files, ingest=tuple(files))
    with svc.db.session() as session:
        versions = {v.size: v for v in session.scalars(select(FileVersion).where(
            FileVersion.account_id == account_id))}
    bad = versions[len(files["/bad.bin"])]
    damaged = bytearray(b"".join(svc.store.read(bad.storage_key)))
    damaged[5000] ^= 1  # one flipped bit in the stored ciphertext
    svc.store.put(bad.storage_key, io.BytesIO(bytes(damaged)), len(damaged))

    first = verify_stored(svc, max_files=10)
    assert (first.checked, first.failed) == (2, 1)
    with svc.db.session() as session:
        assert all(session.get(FileVersion, v.id).verified_at for v in versions.values())
        events = session.scalars(select(AuditEvent).where(
            AuditEvent.account_id == account_id, AuditEvent.action == "integrity_failure")).all()
    assert [(e.protocol, e.status) for e in events] == [("system", "failed")]
    assert str(bad.id) in events[0].detail
    alert = Job.fetch(f"integrity-alert-{account_id}", connection=svc.redis)
    assert alert.origin == MAIL_QUEUE and alert.args == (account_id,)
    alert.delete()

    limited = verify_stored(svc, max_files=10, max_bytes=1)  # bounded: at least one per run
    assert limited.checked == 1


def test_production_without_smtp_refuses_to_send(settings):
    prod = dataclasses.replace(settings, app_env="production", smtp_url=None)
    with pytest.raises(ConfigError):
        mail.send(prod, mail.Message(("a@example.test",), "s", "b"))


def test_parse_smtp_url():
    server = mail.parse_smtp_url("smtp://us%40er:p%3Ass@mail.example.test:2525")
    assert (server.host, server.port, server.username, server.password, server.implicit_tls) == \
        ("mail.example.test", 2525, "us@er", "p:ss", False)
    assert mail.parse_smtp_url("smtps://mail.example.test").port == 465
    with pytest.raises(ConfigError):
        mail.parse_smtp_url("http://mail.example.test")


# -- SMTP with STARTTLS --------------------------------------------------------------------

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


def test_smtp_sends_only_after_starttls(settings, tmp_path, monkeypatch):
    cert_file, key_file = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # trust our test CA, verification stays on
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    server = TinySmtp(context)
    try:
        smtp = dataclasses.replace(settings, smtp_url=f"smtp://alerts:s3cret@127.0.0.1:{server.port}",
                                   spool_dir=tmp_path / "spool")
        mail.send(smtp, mail.integrity_alert(smtp, 42, ["admin@example.test"]))
    finally:
        server.close()
    [got] = server.received
    assert got["tls"] and got["auth"] and got["rcpt"] == [b"<admin@example.test>"]
    assert b"account id 42" in got["data"]
    assert not (tmp_path / "mail").exists()  # SMTP set: nothing written to disk


def test_smtp_without_starttls_is_refused(settings, tmp_path):
    server = TinySmtp(None)
    try:
        smtp = dataclasses.replace(settings, smtp_url=f"smtp://alerts:s3cret@127.0.0.1:{server.port}")
        with pytest.raises(Exception, match="STARTTLS"):
            mail.send(smtp, mail.integrity_alert(smtp, 42, ["admin@example.test"]))
    finally:
        server.close()
    assert server.received == []
