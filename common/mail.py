"""Outgoing mail: SMTP with STARTTLS from SMTP_URL, or `.eml` files in development and tests.

Sending is always a job (common.jobs), never inline in a request. Messages name things by id
and link to the portal (built from PUBLIC_URL, never from a request's host); they carry no
file or folder name, no path and no content.
"""
from __future__ import annotations

import logging
import os
import secrets
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from urllib.parse import unquote, urlsplit

from common.config import Settings
from common.errors import ConfigError, SealdropError

log = logging.getLogger(__name__)

SMTP_TIMEOUT = 30


class MailNotSent(SealdropError):
    """The SMTP server refused or lost a message: says how, never to whom."""

    code = "mail_not_sent"
    default_message = "The mail could not be sent"


@dataclass(frozen=True)
class Message:
    to: tuple[str, ...]
    subject: str
    body: str


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool


def parse_smtp_url(url: str) -> SmtpServer:
    """Read `smtp://user:pass@host:port` (STARTTLS) or `smtps://...` (TLS from the start)."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError("SMTP_URL must look like smtp://user:password@host:port")
    implicit = parts.scheme == "smtps"
    return SmtpServer(host=parts.hostname, port=parts.port or (465 if implicit else 587),
                      username=unquote(parts.username) if parts.username else None,
                      password=unquote(parts.password) if parts.password else None,
                      implicit_tls=implicit)


def send(settings: Settings, message: Message) -> None:
    """Deliver a message by SMTP, or write it under settings.mail_dir outside production."""
    email = build(settings, message)
    if settings.smtp_url:
        _send_smtp(parse_smtp_url(settings.smtp_url), email)
    elif settings.app_env in ("development", "test"):
        path = write_eml(settings.mail_dir, email)
        log.info("mail written to %s", path.name)
    else:
        raise ConfigError("SMTP_URL is not set: production cannot send mail")


def build(settings: Settings, message: Message) -> EmailMessage:
    """An RFC 5322 message from our sender, dated now."""
    email = EmailMessage()
    email["From"] = settings.mail_from
    email["To"] = ", ".join(message.to)
    email["Subject"] = message.subject
    email["Date"] = format_datetime(datetime.now(timezone.utc))
    email["Message-ID"] = make_msgid(domain=settings.mail_from.rpartition("@")[2] or None)
    email.set_content(message.body)
    return email


def _send_smtp(server: SmtpServer, email: EmailMessage) -> None:
    try:
        _deliver(server, email)
    except smtplib.SMTPException as exc:
        # smtplib's errors carry the recipients, and servers' replies repeat them; this error
        # reaches logs and RQ's failed-job records, so only the SMTP code goes on (no chain).
        raise MailNotSent(_smtp_failure(exc)) from None


def _smtp_failure(exc: smtplib.SMTPException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = sorted({code for code, _ in exc.recipients.values()})
        return f"SMTP refused all {len(exc.recipients)} recipient(s) (codes {codes})"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"SMTP {type(exc).__name__}: code {exc.smtp_code}"
    text = str(exc)  # smtplib's own wording (no STARTTLS, disconnected) names nobody
    return f"SMTP {type(exc).__name__}" + (f": {text}" if "@" not in text else "")


def _deliver(server: SmtpServer, email: EmailMessage) -> None:
    context = ssl.create_default_context()
    if server.implicit_tls:
        client = smtplib.SMTP_SSL(server.host, server.port, timeout=SMTP_TIMEOUT, context=context)
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=SMTP_TIMEOUT)
    with client:
        if not server.implicit_tls:
            # starttls raises SMTPNotSupportedError when the server does not offer it: we
            # never send credentials or mail in clear.
            client.ehlo()
            client.starttls(context=context)
            client.ehlo()
        if server.username:
            client.login(server.username, server.password or "")
        client.send_message(email)
    log.info("mail sent by SMTP to %d recipient(s)", len(email["To"].split(",")))


def write_eml(folder: Path, email: EmailMessage) -> Path:
    """Write a message as an owner-only .eml file (development and tests)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = folder / f"{stamp}-{secrets.token_hex(6)}.eml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(email.as_bytes())
    return path


def integrity_alert(settings: Settings, account_id: int, recipients: list[str]) -> Message:
    """The admins' alert after a failed integrity check: what happened and what to do."""
    body = (
        f"Sealdrop detected a failed integrity check on a file in your account "
        f"(account id {account_id}).\n\n"
        "What happened: a stored file did not match the fingerprints (SHA-256 and MD5) or the\n"
        "encryption tags recorded when it was uploaded. Any transfer of it was stopped before\n"
        "unverified data was delivered, and the event was recorded in your audit log as\n"
        "'integrity_failure'.\n\n"
        "What to do:\n"
        f"1. Sign in to the portal at {settings.public_url}/ and open the audit log;\n"
        "   filter on the action 'integrity_failure' to see which file and when.\n"
        "2. Upload the file again from your own copy, or ask its sender to upload it again.\n"
        "3. Do not rely on earlier downloads of that file that did not complete.\n"
        f"4. If this repeats, contact Sealdrop support and quote account id {account_id}.\n\n"
        "This message names no file on purpose: file names stay encrypted and never leave\n"
        "the service by mail.\n"
    )
    return Message(to=tuple(recipients), subject="Sealdrop: a file failed its integrity check",
                   body=body)


def share_invitation(settings: Settings, recipient: str, token: str, permission: str,
                     expires: datetime) -> Message:
    """The invitation a contact receives with the link to a folder shared with them."""
    access = "download its files" if permission == "read" else "download files and upload new ones"
    body = (
        "A folder has been shared with you on Sealdrop, a secure file-transfer service.\n\n"
        f"Open it here (you can {access}):\n\n    {settings.public_url}/s/{token}\n\n"
        f"The link works until {expires:%Y-%m-%d %H:%M} UTC. Anyone holding it can use it, so\n"
        "do not forward this message. If you did not expect it, you can ignore it.\n"
    )
    return Message(to=(recipient,), subject="A folder has been shared with you", body=body)
