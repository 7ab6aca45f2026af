"""Server-side portal sessions: the cookie holds a random token, the `web_sessions` row the rest.

A row is created only when a request stores something (the CSRF token of the sign-in form, a
pending TOTP step, a signed-in user), so bots that fetch pages leave nothing behind. Signing in
issues a new token (no fixation); a session ends after `IDLE` without a request or `ABSOLUTE`
after it began, at sign-out, and when the user's session version moves on (a password change,
an admin reset, "sign out everywhere").
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from sqlalchemy import select, update
from werkzeug.datastructures import CallbackDict

from common.crypto import token_hash
from common.models import User, WebSession
from common.services import Services
from portal.security import client_address

IDLE = timedelta(minutes=30)
ABSOLUTE = timedelta(hours=12)
# last_seen_at is written at most this often, so a page view costs no write.
TOUCH_EVERY = timedelta(seconds=60)
# Requests that never need a session: static files and the health check.
SESSIONLESS_ENDPOINTS = frozenset({"static", "bootstrap.static", "health.healthz"})


def _now() -> datetime:
    return datetime.now(UTC)


class WebSessionData(CallbackDict, SessionMixin):
    """One request's view of its session: the row's data dict plus who it belongs to."""

    def __init__(self, row: WebSession | None = None):
        def on_update(_):
            self.modified = True

        super().__init__(dict(row.data) if row else {}, on_update)
        self.modified = False
        self.token_hash = row.token_hash if row else None
        self.user_id = row.user_id if row else None
        self.session_version = row.session_version if row else None
        self.mfa_passed = row.mfa_passed if row else False
        self.created_at = row.created_at if row else None
        self.last_seen_at = row.last_seen_at if row else None
        self.rotate = False

    @property
    def signed_in_user_id(self) -> int | None:
        """The user this session is signed in as, with every factor the account asks for."""
        return self.user_id if self.mfa_passed else None

    def sign_in(self, user_id: int, session_version: int, *, mfa_passed: bool) -> None:
        """Bind the session to a user under a new token; what the anonymous session held is dropped."""
        self.clear()
        self.user_id, self.session_version, self.mfa_passed = user_id, session_version, mfa_passed
        self.rotate = True
        self.modified = True

    def start_over(self) -> None:
        """Sign out: drop the user and continue as an anonymous session under a new token, so a
        message can follow; the old token is revoked."""
        self.clear()
        self.user_id, self.session_version, self.mfa_passed = None, None, False
        self.rotate = True
        self.modified = True


class NoSession(WebSessionData):
    """For requests that never use a session (static files, health): nothing is read or written."""


@dataclass(frozen=True)
class SessionInfo:
    """One active session as the profile lists it."""

    ip: str | None
    created_at: datetime
    last_seen_at: datetime
    current: bool


class DatabaseSessionInterface(SessionInterface):
    def __init__(self, services: Services):
        self.services = services

    def open_session(self, app: Flask, request: Request) -> WebSessionData:
        if request.endpoint in SESSIONLESS_ENDPOINTS:
            return NoSession()
        token = request.cookies.get(self.get_cookie_name(app))
        row = self._live_row(token) if token else None
        return WebSessionData(row)

    def save_session(self, app: Flask, session: WebSessionData, response: Response) -> None:
        if isinstance(session, NoSession):
            return
        name = self.get_cookie_name(app)
        if session.token_hash is None and not session.modified:
            return
        token = None
        if session.rotate or session.token_hash is None:
            token = self._new_row(session)
        elif session.modified or _now() - session.last_seen_at > TOUCH_EVERY:
            self._update_row(session)
        if token:
            response.set_cookie(name, token, path=self.get_cookie_path(app), domain=self.get_cookie_domain(app),
                                secure=self.get_cookie_secure(app), httponly=True,
                                samesite=self.get_cookie_samesite(app))
        response.vary.add("Cookie")

    def _live_row(self, token: str) -> WebSession | None:
        now = _now()
        with self.services.db.session() as db:
            row = db.execute(
                select(WebSession).where(
                    WebSession.token_hash == token_hash(token), WebSession.revoked_at.is_(None),
                    WebSession.expires_at > now, WebSession.last_seen_at > now - IDLE)
            ).scalar_one_or_none()
            if row is None or row.user_id is None:
                return row
            user = db.get(User, row.user_id)
            if user is None or user.status != "active" or user.session_version != row.session_version:
                row.revoked_at = now
                return None
            db.expunge(row)
            return row

    def _new_row(self, session: WebSessionData) -> str:
        """Store the session under a new token (revoking the old one) and return the token."""
        token = secrets.token_urlsafe(32)
        now = _now()
        with self.services.db.session() as db:
            if session.token_hash:
                db.execute(update(WebSession).where(WebSession.token_hash == session.token_hash)
                           .values(revoked_at=now))
            db.add(WebSession(
                token_hash=token_hash(token), user_id=session.user_id, session_version=session.session_version,
                mfa_passed=session.mfa_passed, data=dict(session), ip=client_address(), created_at=now,
                last_seen_at=now, expires_at=now + ABSOLUTE))
        session.token_hash = token_hash(token)
        return token

    def _update_row(self, session: WebSessionData) -> None:
        with self.services.db.session() as db:
            db.execute(update(WebSession).where(WebSession.token_hash == session.token_hash).values(
                data=dict(session), user_id=session.user_id, session_version=session.session_version,
                mfa_passed=session.mfa_passed, last_seen_at=_now(), ip=client_address()))


def active_sessions(services: Services, user_id: int, current: bytes | None) -> list[SessionInfo]:
    """The user's signed-in portal sessions that have not ended, newest first."""
    now = _now()
    with services.db.session() as db:
        rows = db.execute(
            select(WebSession).where(
                WebSession.user_id == user_id, WebSession.mfa_passed.is_(True), WebSession.revoked_at.is_(None),
                WebSession.expires_at > now, WebSession.last_seen_at > now - IDLE)
            .order_by(WebSession.created_at.desc())).scalars()
        return [SessionInfo(r.ip, r.created_at, r.last_seen_at, r.token_hash == current)
                for r in rows]


def revoke_all(services: Services, user_id: int) -> None:
    """Sign the user out of every portal session ("sign out everywhere")."""
    with services.db.session() as db:
        db.execute(update(WebSession).where(WebSession.user_id == user_id, WebSession.revoked_at.is_(None))
                   .values(revoked_at=_now()))
