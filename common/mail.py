"""Outgoing mail: SMTP with STARTTLS from SMTP_URL, or `.eml` files in development and tests.

Sending is always a job (common.jobs), never inline in a request. Messages name things by id
and link to the portal (built from PUBLIC_URL, never from a request's host); they carry no
file or folder name, no path and no content. Each is rendered from `templates/email/<name>.txt`
and `.html` (jinja2 directly: the HTML environment autoescapes, the text one cannot, so text
templates get no user-typed value).
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

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from common.config import Settings
from common.errors import ConfigError, SealdropError

log = logging.getLogger(__name__)

SMTP_TIMEOUT = 30
TEMPLATES = Path(__file__).resolve().parents[1] / "templates" / "email"
_TEXT = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=False, undefined=StrictUndefined,
                    keep_trailing_newline=True)
_HTML = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined)


class MailNotSent(SealdropError):
    """The SMTP server refused or lost a message: says how, never to whom."""

    code = "mail_not_sent"
    default_message = "The mail could not be sent"


@dataclass(frozen=True)
class Message:
    to: tuple[str, ...]
    subject: str
    body: str
    html: str | None = None  # the same words as `body`, as the HTML alternative


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
    if message.html is not None:
        email.add_alternative(message.html, subtype="html")
    return email


def render(to: tuple[str, ...], subject: str, template: str, **context) -> Message:
    """A message whose text and HTML parts come from templates/email/<template>.txt and .html."""
    return Message(to=to, subject=subject, body=_TEXT.get_template(f"{template}.txt").render(context),
                   html=_HTML.get_template(f"{template}.html").render(context))


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
    return render(tuple(recipients), "Sealdrop: a file failed its integrity check", "integrity_alert",
                  public_url=settings.public_url, account_id=int(account_id))


SHARE_ACCESS = {"read": "download its files", "write": "download files and upload new ones",
                "request": "send files into it"}


def share_invitation(settings: Settings, recipient: str, token: str, permission: str,
                     expires: datetime, *, password: bool = False) -> Message:
    """The invitation a contact receives with the link to a folder shared with them."""
    return render((recipient,), "A folder has been shared with you", "share_invitation",
                  link=f"{settings.public_url}/s/{token}", access=SHARE_ACCESS[permission],
                  expires=f"{expires:%Y-%m-%d %H:%M}", password=password)


def arrivals(settings: Settings, recipient: str, count: int, folder_url: str) -> Message:
    """The owner's digest of files that arrived through their links: how many, and where; no names."""
    return render((recipient,), f"Sealdrop: {count} new file{'s' if count != 1 else ''} arrived", "arrivals",
                  count=int(count), folder_url=folder_url)


PASSWORD_SUBJECTS = {"invite": "Your Sealdrop account: choose your password",
                     "reset": "Sealdrop: reset your password"}


def password_link(settings: Settings, recipient: str, token: str, purpose: str, hours: int) -> Message:
    """An invitation ('invite') or a reset ('reset') with the link to the set-password page."""
    return render((recipient,), PASSWORD_SUBJECTS[purpose], f"password_{purpose}",
                  link=f"{settings.public_url}/password/{token}", hours=int(hours),
                  sign_in=f"{settings.public_url}/signin")
