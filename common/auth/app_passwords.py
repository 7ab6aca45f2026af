"""FTPS app passwords: random tokens a user creates for one client, revocable one by one.

A token reads `sdap_<public id>_<secret>`; only an HMAC of it (under a key derived from the
service index key) is stored, and its label is sealed with the account's data key. On a door
whose row says so (common.doors), an MFA user logs in with these instead of the account password.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from common.accounts import SYSTEM, Actor
from common.auth.admin import audit_change
from common.crypto import DataKeys, Keyring, derive
from common.errors import InvalidInput, NotFound
from common.models import AppPassword, User

APP_PASSWORD_PREFIX = "sdap_"
APP_PASSWORD_LABEL_MAX = 64


@dataclass(frozen=True)
class AppPasswordInfo:
    """One app password as the portal lists it (never its secret)."""

    public_id: str
    label: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def looks_like_app_password(secret) -> bool:
    """Whether a secret typed into a password field is shaped as an app password."""
    return isinstance(secret, str) and secret.startswith(APP_PASSWORD_PREFIX)


def app_password_hash(service: DataKeys, public_id: str, secret: str) -> bytes:
    """HMAC-SHA256 of an app password under a key derived from the service index key."""
    key = derive(service.index_key, "app-password")
    return hmac.new(key, f"{public_id}:{secret}".encode(), hashlib.sha256).digest()


def create_app_password(session: Session, keyring: Keyring, user: User, label: str | None = None, *,
                        actor: Actor = SYSTEM) -> str:
    """Create an FTPS app password and return the token, which is never shown again."""
    label = (label or "").strip() or None
    if label is not None and len(label) > APP_PASSWORD_LABEL_MAX:
        raise InvalidInput(f"A label has at most {APP_PASSWORD_LABEL_MAX} characters.")
    public_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    keys = keyring.account(session, user.account_id)
    session.add(AppPassword(
        user_id=user.id, public_id=public_id,
        secret_hash=app_password_hash(keyring.service(session), public_id, secret),
        label_sealed=keys.seal_text(label, "app-password-label") if label else None))
    session.flush()
    audit_change(session, keyring, actor, user.account_id,
                 f"app password {public_id} created for user {user.id}")
    return f"{APP_PASSWORD_PREFIX}{public_id}_{secret}"


def revoke_app_password(session: Session, keyring: Keyring, user: User, public_id: str, *,
                        actor: Actor = SYSTEM) -> None:
    """Revoke one of the user's app passwords, audited."""
    row = session.scalar(select(AppPassword).where(
        AppPassword.user_id == user.id, AppPassword.public_id == public_id,
        AppPassword.revoked_at.is_(None)))
    if row is None:
        raise NotFound("No such app password.")
    row.revoked_at = datetime.now(timezone.utc)
    audit_change(session, keyring, actor, user.account_id,
                 f"app password {public_id} of user {user.id} revoked")


def list_app_passwords(session: Session, keyring: Keyring, user: User) -> list[AppPasswordInfo]:
    """The user's app passwords, newest first, with their labels opened."""
    keys = keyring.account(session, user.account_id)
    rows = session.scalars(select(AppPassword).where(AppPassword.user_id == user.id)
                           .order_by(AppPassword.id.desc()))
    return [AppPasswordInfo(row.public_id, _open_label(keys, row.label_sealed), row.created_at,
                            row.last_used_at, row.revoked_at) for row in rows]


def find_app_password(session: Session, user_id: int, token) -> AppPassword | None:
    """The user's unrevoked app password this token names (its secret not yet checked)."""
    if not looks_like_app_password(token):
        return None
    public_id, _ = _split_token(token)
    return session.scalar(select(AppPassword).where(
        AppPassword.user_id == user_id, AppPassword.public_id == public_id[:32],
        AppPassword.revoked_at.is_(None)))


def token_matches(service: DataKeys, row: AppPassword, token: str) -> bool:
    """Whether the token's secret is the one stored for this app password (constant time)."""
    public_id, secret = _split_token(token)
    return hmac.compare_digest(app_password_hash(service, public_id, secret), row.secret_hash)


def mark_used(session: Session, app_password_id: int) -> None:
    """Stamp the app password's last use (in the login's transaction)."""
    session.execute(update(AppPassword).where(AppPassword.id == app_password_id)
                    .values(last_used_at=func.now()))


def _open_label(keys: DataKeys, sealed: bytes | None) -> str | None:
    return keys.open_text(sealed, "app-password-label") if sealed else None


def _split_token(token: str) -> tuple[str, str]:
    public_id, _, secret = token[len(APP_PASSWORD_PREFIX):].partition("_")
    return public_id, secret
