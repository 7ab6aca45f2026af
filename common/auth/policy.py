"""An account's password policy and MFA requirement, and who the MFA rule applies to.

Composition rules (length, character classes) are for enterprise plans; requiring MFA is
for every plan. A named service user may be exempted from the requirement. `mfa_state` is
the one place that says whether a login must give a code, enrol first, or neither.
"""
from __future__ import annotations

from sqlalchemy import func
from sqlalchemy.orm import Session

from common import passwords
from common.accounts import SYSTEM, Actor
from common.auth.admin import audit_change, require_enterprise
from common.crypto import Keyring
from common.errors import InvalidInput
from common.models import Account, PasswordPolicy, User

MFA_OFF, MFA_ENROLLED, MFA_UNENROLLED = "off", "enrolled", "unenrolled"


def mfa_state(policy: PasswordPolicy | None, user: User) -> str:
    """off, enrolled, or unenrolled (MFA required but no secret yet).

    A user who enrolled is asked for codes whether or not the account requires MFA.
    """
    if user.mfa_exempt:
        return MFA_OFF
    if user.totp_enrolled_at is not None and user.totp_secret_sealed:
        return MFA_ENROLLED
    return MFA_UNENROLLED if policy is not None and policy.require_mfa else MFA_OFF


def is_mfa_required(session: Session, user: User) -> bool:
    """Whether the account requires MFA of this user (a named exemption lifts it)."""
    policy = session.get(PasswordPolicy, user.account_id)
    return policy is not None and policy.require_mfa and not user.mfa_exempt


def set_policy(session: Session, keyring: Keyring, account: Account, *, min_length: int | None = None,
               upper: bool | None = None, lower: bool | None = None, digit: bool | None = None,
               symbol: bool | None = None, require_mfa: bool | None = None,
               actor: Actor = SYSTEM) -> PasswordPolicy:
    """Change the given settings (None leaves one as it is); composition rules are enterprise-only."""
    rules = {"min_length": min_length, "require_upper": upper, "require_lower": lower,
             "require_digit": digit, "require_symbol": symbol}
    changes = {name: value for name, value in rules.items() if value is not None}
    if changes:
        require_enterprise(account, "Password rules")
    if min_length is not None and not passwords.MIN_LENGTH <= min_length <= passwords.MAX_LENGTH:
        raise InvalidInput(f"The minimum length must be between {passwords.MIN_LENGTH} "
                           f"and {passwords.MAX_LENGTH}.")
    if require_mfa is not None:
        changes["require_mfa"] = require_mfa
    policy = session.get(PasswordPolicy, account.id, with_for_update=True)
    if policy is None:
        policy = PasswordPolicy(account_id=account.id)
        session.add(policy)
    for name, value in changes.items():
        setattr(policy, name, value)
    policy.updated_at = func.now()
    session.flush()
    summary = ", ".join(f"{name}={value}" for name, value in changes.items()) or "nothing"
    audit_change(session, keyring, actor, account.id, f"password policy set: {summary}")
    return policy


def set_mfa_exempt(session: Session, keyring: Keyring, user: User, exempt: bool, *,
                   actor: Actor = SYSTEM) -> None:
    """Exempt a named service user from the account's MFA requirement (or end that), audited."""
    user.mfa_exempt = exempt
    state = "exempt from" if exempt else "no longer exempt from"
    audit_change(session, keyring, actor, user.account_id, f"user {user.id} {state} mfa")
