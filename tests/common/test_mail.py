"""Integrity alerts and fixity: mail to the account's admins (.eml and SMTP with STARTTLS)."""
from __future__ import annotations

import dataclasses
import email
import io
import ssl
from datetime import datetime
from email import policy
from types import SimpleNamespace

import pytest
from rq.job import Job
from sqlalchemy import select

from common import mail
from common.errors import ConfigError
from common.jobs.alerts import send_integrity_alert
from common.jobs.fixity import verify_stored
from common.jobs.invitations import send_password_link, send_share_invitation
from common.jobs.registry import MAIL_QUEUE
from common.models import Account, AuditEvent, FileVersion
from tests.factories import make_account_with_files, share, workspace
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


# -- templates -----------------------------------------------------------------------------

FORMER_SHARE_INVITATION = (
    "A folder has been shared with you on Sealdrop, a secure file-transfer service.\n\n"
    "Open it here (you can download files and upload new ones):\n\n    https://drop.example.test/s/TOKEN\n\n"
    "The link works until 2030-01-02 03:04 UTC. Anyone holding it can use it, so\n"
    "do not forward this message. If you did not expect it, you can ignore it.\n")


def test_moving_the_mails_onto_templates_kept_their_words(settings):
    site = dataclasses.replace(settings, public_url="https://drop.example.test")
    shared = mail.share_invitation(site, "c@example.test", "TOKEN", "write", datetime(2030, 1, 2, 3, 4))
    assert (shared.subject, shared.body) == ("A folder has been shared with you", FORMER_SHARE_INVITATION)
    alert = mail.integrity_alert(site, 42, ["a@example.test"])
    assert alert.body.startswith("Sealdrop detected a failed integrity check on a file in your account "
                                 "(account id 42).\n\nWhat happened: a stored file did not match")
    assert "1. Sign in to the portal at https://drop.example.test/ and open the audit log;\n" in alert.body
    assert alert.body.endswith("the service by mail.\n")
    for message in (shared, alert):
        assert message.html.startswith("<!DOCTYPE html>")


def test_the_html_part_escapes_and_the_text_part_is_plain(settings):
    hostile = '"><script>alert(1)</script>'
    message = mail.render(("a@example.test",), "s", "share_invitation", link=hostile, access="x",
                          expires="y")
    assert "<script>" not in message.html and "&lt;script&gt;" in message.html
    assert hostile in message.body  # text/plain is never HTML: a mail client shows it as typed


def test_an_invitation_is_written_as_eml_without_smtp(services, account, make_user):
    user_id, username = make_user(account)
    folder = services.settings.mail_dir
    before = set(folder.glob("*.eml")) if folder.exists() else set()
    assert send_password_link(services, user_id, "invite")
    [path] = set(folder.glob("*.eml")) - before
    message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert message["To"] == f"{username}@example.test"
    assert f"{services.settings.public_url}/password/" in message.get_body(("plain",)).get_content()


def test_no_mail_names_a_file_folder_path_or_hostile_name(services, mailer, smtp_server):
    hostile = '<b onmouseover="x">Q3 payroll &amp; bonuses'
    account_id, owner_id, owner, _ = make_account_with_files(services, {"/Board minutes.txt": b"y"})
    workspace(services, account_id, owner_id, owner).make_dir(f"/{hostile}")
    with services.db.session() as session:
        session.get(Account, account_id).name_sealed = services.keyring.service(session).seal_text(
            hostile, "account-name")
    share_id = share(services, SimpleNamespace(id=account_id), owner, f"/{hostile}", "partner@example.test", "read")
    assert send_share_invitation(mailer, share_id) and send_integrity_alert(mailer, account_id) == 1
    assert send_password_link(mailer, owner_id, "invite") and send_password_link(mailer, owner_id, "reset")
    assert len(smtp_server.messages) == 4
    for _, message in smtp_server.messages:
        parts = [message["Subject"], message.get_body(("plain",)).get_content(),
                 message.get_body(("html",)).get_content()]
        for part in parts:
            for secret in ("payroll", "Board", "minutes", "onmouseover", owner):
                assert secret not in part
