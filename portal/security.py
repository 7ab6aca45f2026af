"""What every portal response carries: security headers, the client's address, friendly errors.

The client address is the socket's peer, or the nearest untrusted address of
`X-Forwarded-For` when the peer is one of `TRUSTED_PROXIES` (walked from the right, so a
client cannot choose its own address by sending the header itself).
"""
from __future__ import annotations

import ipaddress
import logging
import traceback

from flask import Flask, current_app, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError

from common.auth import client_ip
from common.errors import SealdropError

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
    "font-src 'self'", "connect-src 'self'", "object-src 'none'", "base-uri 'none'",
    "form-action 'self'", "frame-ancestors 'none'",
))
HSTS = "max-age=31536000; includeSubDomains"

# What each error page says, and what to do next.
ERROR_MESSAGES = {
    400: ("That request could not be understood", "Go back, reload the page and try again."),
    403: ("You cannot do that here", "If you think you should, ask an administrator of your account."),
    404: ("Not found", "It may have been moved or deleted, or the link is wrong."),
    405: ("Not allowed", "Use the buttons on the page rather than typing the address."),
    413: ("Too large", "That upload or form is larger than this page accepts."),
    429: ("Too many attempts", "Please wait a few minutes before you try again."),
    500: ("Something went wrong on our side", "Nothing you did caused it. Please try again in a moment."),
}
CSRF_MESSAGE = ("This form has expired", "Reload the page and send it again; forms are valid for one hour.")


def client_address() -> str | None:
    """The caller's address in canonical form (see the module docstring)."""
    peer = client_ip(request.remote_addr)
    proxies = current_app.extensions["sealdrop"].settings.trusted_proxies
    if not proxies or not _is_trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("X-Forwarded-For")).split(",") if h.strip()]
    for hop in reversed(hops):
        address = client_ip(hop)
        if address is None:
            return peer  # a malformed hop: do not guess past it
        if not _is_trusted(address, proxies):
            return address
    return peer


def _is_trusted(address: str | None, proxies) -> bool:
    if address is None:
        return False
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in proxies)


def add_security_headers(response):
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "same-origin"
    headers.setdefault("Cache-Control", "no-store")
    if request.is_secure:
        headers["Strict-Transport-Security"] = HSTS
    return response


def render_error(code: int, title: str | None = None, advice: str | None = None):
    default_title, default_advice = ERROR_MESSAGES.get(code, ERROR_MESSAGES[500])
    return render_template("errors/error.html", code=code, title=title or default_title,
                           advice=advice or default_advice), code


def _http_error(exc: HTTPException):
    if exc.code is None or exc.code < 400:
        return exc
    return render_error(exc.code)


def _csrf_error(exc: CSRFError):
    return render_error(400, *CSRF_MESSAGE)


def _sealdrop_error(exc: SealdropError):
    # The message is written for the client (common.errors); the page says what to do next.
    if exc.http_status >= 500:
        return _unexpected_error(exc)
    return render_error(exc.http_status, exc.message)


def _unexpected_error(exc: Exception):
    # The frames without the message: a message could carry a file or user name.
    log.error("unexpected %s in %s\n%s", type(exc).__name__, request.endpoint,
              "".join(traceback.format_tb(exc.__traceback__)))
    return render_error(500)


class TrustedProxyScheme:
    """WSGI middleware: a request that reached us through one of `TRUSTED_PROXIES` carries the
    scheme the client used in `X-Forwarded-Proto`; honour it, so that behind a TLS-terminating
    router the request counts as secure (HSTS is sent, the strict Referer check runs). From any
    other peer the header is ignored."""

    def __init__(self, app, proxies):
        self.app, self.proxies = app, proxies

    def __call__(self, environ, start_response):
        proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[-1].strip().lower()
        if proto in ("http", "https") and _is_trusted(client_ip(environ.get("REMOTE_ADDR")), self.proxies):
            environ["wsgi.url_scheme"] = proto
        return self.app(environ, start_response)


def install(app: Flask) -> None:
    proxies = app.extensions["sealdrop"].settings.trusted_proxies
    if proxies:
        app.wsgi_app = TrustedProxyScheme(app.wsgi_app, proxies)
    app.after_request(add_security_headers)
    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(SealdropError, _sealdrop_error)
    app.register_error_handler(InternalServerError, _unexpected_error)
    app.register_error_handler(Exception, _unexpected_error)
