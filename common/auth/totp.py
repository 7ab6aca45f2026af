"""TOTP (RFC 6238, Google Authenticator compatible) and web recovery codes.

The secret is sealed with the account's data key (context `totp`); recovery codes are stored
only as keyed hashes and are single use. Checking a code at login, with its lockout and
replay guard, lives in common.auth.gate; this module holds the arithmetic and the enrolment.
"""
from __future__ import annotations

import hmac
import secrets
import time
from datetime import datetime, timezone

import pyotp
from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from common import accounts
from common.accounts import SYSTEM, Actor
from common.auth.admin import audit_change
from common.auth.policy import is_mfa_required
from common.crypto import DataKeys, Keyring
from common.errors import PermissionDenied
from common.models import RecoveryCode, User

ISSUER = "Sealdrop"
DIGITS = 6
INTERVAL = 30
# One step either side absorbs clock drift between the phone and the server.
VALID_WINDOW = 1
SECRET_CHARS = 32  # base32: 160 bits, the RFC 4226 recommendation
RECOVERY_CODE_COUNT = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i to misread
_RECOVERY_GROUP = 5


def new_secret() -> str:
    """A fresh base32 TOTP secret."""
    return pyotp.random_base32(length=SECRET_CHARS)


def provisioning_uri(secret: str, username: str) -> str:
    """The otpauth:// URI an authenticator app reads from a QR code."""
    return _totp(secret).provisioning_uri(name=username, issuer_name=ISSUER)


def current_step(at: float | None = None) -> int:
    """The TOTP time step (30-second counter) at a Unix time, now by default."""
    return int((time.time() if at is None else at) // INTERVAL)


def looks_like_code(code: str) -> bool:
    """True for six ASCII digits, the only shape a TOTP code has."""
    return len(code) == DIGITS and code.isascii() and code.isdigit()


def matching_step(secret: str, code: str, at: float | None = None) -> int | None:
    """The time step within the valid window whose code equals `code`, or None."""
    code = code.strip()
    if not looks_like_code(code):
        return None
    totp, now = _totp(secret), current_step(at)
    for step in range(now - VALID_WINDOW, now + VALID_WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def seal_secret(keys: DataKeys, secret: str) -> bytes:
    """The TOTP secret sealed under the account's data key."""
    return keys.seal_bytes(secret.encode("ascii"), "totp")


def open_secret(keys: DataKeys, sealed: bytes) -> str:
    """The TOTP secret back from its sealed form."""
    return keys.open_bytes(sealed, "totp").decode("ascii")


def enrol_totp(session: Session, keyring: Keyring, user: User, *, actor: Actor = SYSTEM) -> str:
    """Give the user a new TOTP secret, enrolled at once, and return its otpauth URI (show it once)."""
    uri = _store_new_secret(session, keyring, user)
    user.totp_enrolled_at = datetime.now(timezone.utc)
    audit_change(session, keyring, actor, user.account_id, f"user {user.id} enrolled in mfa")
    return uri


def start_totp_enrolment(session: Session, keyring: Keyring, user: User) -> str:
    """Store a new, not yet confirmed secret (the user is un-enrolled until confirmed); return its URI."""
    uri = _store_new_secret(session, keyring, user)
    user.totp_enrolled_at = None
    return uri


def confirm_totp_enrolment(session: Session, keyring: Keyring, user: User, code: str, *,
                           actor: Actor = SYSTEM) -> bool:
    """Complete a started enrolment when `code` matches the pending secret; False otherwise."""
    if user.totp_secret_sealed is None or user.totp_enrolled_at is not None:
        return False
    secret = open_secret(keyring.account(session, user.account_id), user.totp_secret_sealed)
    step = matching_step(secret, code)
    if step is None:
        return False
    user.totp_last_step = step  # the confirming code may not be replayed at the next login
    user.totp_enrolled_at = datetime.now(timezone.utc)
    audit_change(session, keyring, actor, user.account_id, f"user {user.id} enrolled in mfa")
    return True


def pending_totp_uri(session: Session, keyring: Keyring, user: User) -> str | None:
    """The otpauth URI of a started, not yet confirmed enrolment (to show its QR code again), or None."""
    if user.totp_secret_sealed is None or user.totp_enrolled_at is not None:
        return None
    secret = open_secret(keyring.account(session, user.account_id), user.totp_secret_sealed)
    return provisioning_uri(secret, accounts.user_name(session, keyring, user))


def disable_totp(session: Session, keyring: Keyring, user: User, code: str, *, actor: Actor = SYSTEM) -> bool:
    """Turn the user's MFA off when `code` is their current one (False otherwise), with their
    recovery codes; refused while the account requires MFA of them. Audited."""
    if is_mfa_required(session, user):
        raise PermissionDenied("Your account requires two-step sign-in, so it cannot be turned off.")
    if user.totp_enrolled_at is None or user.totp_secret_sealed is None:
        return False
    step = matching_step(open_secret(keyring.account(session, user.account_id), user.totp_secret_sealed), code)
    if step is None or not claim_step(session, user.id, step):
        return False
    user.totp_secret_sealed = user.totp_enrolled_at = user.totp_last_step = None
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    audit_change(session, keyring, actor, user.account_id, f"user {user.id} turned mfa off")
    return True


def reset_mfa(session: Session, keyring: Keyring, user: User, *, actor: Actor = SYSTEM) -> None:
    """An admin's reset: the user's TOTP secret and recovery codes are removed (a lost phone);
    where MFA is required they enrol again at their next web sign-in. Audited."""
    user.totp_secret_sealed = user.totp_enrolled_at = user.totp_last_step = None
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    audit_change(session, keyring, actor, user.account_id, f"user {user.id} mfa reset")


def generate_recovery_codes(session: Session, keyring: Keyring, user: User, *,
                            count: int = RECOVERY_CODE_COUNT, actor: Actor = SYSTEM) -> list[str]:
    """Replace the user's recovery codes with fresh single-use ones and return them (show once)."""
    keys = keyring.account(session, user.account_id)
    codes = [_new_recovery_code() for _ in range(count)]
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    session.add_all(RecoveryCode(user_id=user.id, code_hash=recovery_code_hash(keys, user.id, code))
                    for code in codes)
    audit_change(session, keyring, actor, user.account_id, f"user {user.id} got {count} new recovery codes")
    return codes


def recovery_code_hash(keys: DataKeys, user_id: int, code: str) -> bytes:
    """The keyed hash stored for a recovery code, bound to its user."""
    return keys.index(f"recovery-code/{user_id}", normalise_recovery_code(code))


def normalise_recovery_code(code: str) -> str:
    """Lower case without spaces or dashes, so `ABCDE-FGHJK` and `abcdefghjk` match."""
    return "".join(c for c in code.lower() if c not in " -")


def use_recovery_code(session: Session, keys: DataKeys, user_id: int, code: str) -> bool:
    """Spend one unused recovery code atomically; False when it is wrong or already used."""
    spent = session.execute(
        update(RecoveryCode)
        .where(RecoveryCode.user_id == user_id,
               RecoveryCode.code_hash == recovery_code_hash(keys, user_id, code),
               RecoveryCode.used_at.is_(None))
        .values(used_at=datetime.now(timezone.utc))
        .returning(RecoveryCode.id))
    return spent.first() is not None


def claim_step(session: Session, user_id: int, step: int) -> bool:
    """Record `step` as the last used one unless it (or a later one) was used already."""
    claimed = session.execute(
        update(User)
        .where(User.id == user_id,
               (User.totp_last_step.is_(None)) | (User.totp_last_step < step))
        .values(totp_last_step=step)
        .returning(User.id))
    return claimed.first() is not None


def _store_new_secret(session: Session, keyring: Keyring, user: User) -> str:
    secret = new_secret()
    user.totp_secret_sealed = seal_secret(keyring.account(session, user.account_id), secret)
    user.totp_last_step = None
    return provisioning_uri(secret, accounts.user_name(session, keyring, user))


def _new_recovery_code() -> str:
    chars = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(2 * _RECOVERY_GROUP))
    return f"{chars[:_RECOVERY_GROUP]}-{chars[_RECOVERY_GROUP:]}"


def _totp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL)

