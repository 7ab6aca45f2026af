"""Integrity alerts and fixity: mail to the account's admins (.eml and SMTP with STARTTLS)."""
from __future__ import annotations

import dataclasses
import email
import io
import ssl
from email import policy

import pytest
from rq.job import Job
from sqlalchemy import select

from common import mail
from common.errors import ConfigError
from common.jobs.alerts import send_integrity_alert
from common.jobs.fixity import verify_stored
from common.jobs.registry import MAIL_QUEUE
from common.models import AuditEvent, FileVersion
from tests.factories import make_account_with_files
from tests.smtp import TinySmtp, self_signed


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
    body = message.get_body(("plain",)).get_content()
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
