"""Secrets and addresses stay out of printed settings, logs and failed-job records."""
from __future__ import annotations

import dataclasses
import logging
import secrets
import ssl
import traceback

import pytest
from rq import Queue, SimpleWorker

from common import mail
from common.config import load_settings
from tests.smtp import TinySmtp, self_signed

RECIPIENT = "dr.jones@clinic.example.test"


def test_settings_never_print_passwords_or_keys():
    settings = load_settings({
        "APP_ENV": "test",
        "DATABASE_URL": "postgres://sealdrop:db-pass-1@db.internal:5432/sealdrop?sslmode=require",
        "REDIS_URL": "rediss://:redis-pass-2@cache.internal:6380/0",
        "SMTP_URL": "smtp://alerts:smtp-pass-3@mail.internal:587",
        "S3_ACCESS_KEY": "s3-access-4", "S3_SECRET_KEY": "s3-secret-5",
        "SECRET_KEY": "flask-secret-6",
        "MASTER_KEYS": "k1:" + "QUFB" * 10 + "QUE=",
    })
    for shown in (repr(settings), str(settings), f"{settings}", repr([settings])):
        for secret in ("db-pass-1", "redis-pass-2", "smtp-pass-3", "s3-access-4", "s3-secret-5",
                       "flask-secret-6", "QUFB"):
            assert secret not in shown
        # What is not secret is still there to debug with.
        assert "db.internal:5432" in shown and "cache.internal" in shown and "mail.internal" in shown
        assert "sealdrop:***@" in shown
    # The real values are untouched.
    assert "db-pass-1" in settings.database_url and "smtp-pass-3" in settings.smtp_url


def test_a_password_in_the_query_string_is_hidden_too():
    settings = load_settings({"APP_ENV": "test",
                              "DATABASE_URL": "postgresql://db.internal/sealdrop?user=s&password=q-pass-7"})
    assert "q-pass-7" not in repr(settings) and "user=s" in repr(settings)


def send_refused_alert(smtp_url: str) -> None:
    """A mail job like ours: the recipient is found inside the job, never in its arguments."""
    settings = load_settings({"APP_ENV": "test", "SMTP_URL": smtp_url})
    mail.send(settings, mail.integrity_alert(settings, 42, [RECIPIENT]))


@pytest.fixture
def refusing_smtp(tmp_path, monkeypatch):
    cert_file, key_file = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    server = TinySmtp(context, refuse_recipients=True)
    yield f"smtp://alerts:s3cret@127.0.0.1:{server.port}"
    server.close()


def test_a_refused_recipient_is_not_named_in_the_error(refusing_smtp):
    with pytest.raises(mail.MailNotSent) as caught:
        send_refused_alert(refusing_smtp)
    printed = "".join(traceback.format_exception(caught.value))  # what RQ stores and logs
    assert "550" in printed and "recipient" in printed
    assert "clinic.example" not in printed and "dr.jones" not in printed


def test_a_failed_mail_job_records_no_address(refusing_smtp, services, caplog):
    caplog.set_level(logging.DEBUG)
    queue = Queue(f"test-mail-{secrets.token_hex(4)}", connection=services.redis)
    job = queue.enqueue(send_refused_alert, refusing_smtp)
    SimpleWorker([queue], connection=services.redis).work(burst=True)
    job.refresh()
    assert job.is_failed
    record = job.latest_result().exc_string
    assert "clinic.example" not in record
    assert "MailNotSent" in record and "550" in record
    logged = "\n".join(r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
                       for r in caplog.records)
    assert "clinic.example" not in logged and "MailNotSent" in logged
    job.delete()
    queue.delete(delete_jobs=True)


def test_the_settings_dataclass_keeps_its_secret_fields_out_of_repr():
    hidden = {f.name for f in dataclasses.fields(load_settings({"APP_ENV": "test"})) if not f.repr}
    assert {"s3_access_key", "s3_secret_key", "master_keys", "secret_key"} <= hidden
