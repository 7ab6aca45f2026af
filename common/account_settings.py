"""An account's settings as its admins see and change them: the password policy, the MFA
requirement, the account-wide IP allow-list and the link policy.

The password rules and the allow-list are for enterprise plans (common.auth.admin); the MFA
requirement and the link policy are for every plan. What the settings page shows locked, and
why, comes from here; the refusal itself stays in the functions that make each change.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from common.accounts import SYSTEM, Actor
from common.auth.admin import ENTERPRISE_MESSAGE, audit_change
from common.auth.allowlist import account_rules
from common.crypto import Keyring
from common.errors import InvalidInput
from common.jobs.notify import PREFERENCES
from common.models import Account, IpRule, PasswordPolicy
from common.passwords import MIN_LENGTH

LINK_MAX_DAYS = 365
NOTIFICATION_KINDS = tuple(PREFERENCES)  # uploads, alerts, exports: accounts.notify_*_default
PASSWORD_RULES, IP_ALLOW_LISTS = "Password rules", "IP allow-lists"


@dataclass(frozen=True)
class AccountSettings:
    """Everything the settings page shows; `locked` maps a setting to why this plan cannot change it."""

    policy: PasswordPolicy
    rules: list[IpRule]
    link_max_days: int
    link_password_required: bool
    request_links_allowed: bool
    locked: dict[str, str]
    notify_defaults: dict[str, bool]  # which mails users get unless they chose otherwise


def enterprise_locks(account: Account) -> dict[str, str]:
    """The enterprise-only settings this account cannot change, each with the reason."""
    if account.is_enterprise:
        return {}
    return {what: ENTERPRISE_MESSAGE.format(what=what) for what in (PASSWORD_RULES, IP_ALLOW_LISTS)}


def account_settings(session: Session, account: Account) -> AccountSettings:
    """The account's current settings (a missing policy row reads as the defaults)."""
    policy = session.get(PasswordPolicy, account.id) or PasswordPolicy(
        account_id=account.id, min_length=MIN_LENGTH, require_upper=False, require_lower=False,
        require_digit=False, require_symbol=False, require_mfa=False)
    return AccountSettings(policy=policy, rules=account_rules(session, account.id),
                           link_max_days=account.link_max_days,
                           link_password_required=account.link_password_required,
                           request_links_allowed=account.request_links_allowed,
                           locked=enterprise_locks(account),
                           notify_defaults={kind: getattr(account, f"notify_{kind}_default")
                                            for kind in NOTIFICATION_KINDS})


def set_link_policy(session: Session, keyring: Keyring, account: Account, *, max_days: int,
                    password_required: bool, request_links_allowed: bool, actor: Actor = SYSTEM) -> None:
    """Set the longest expiry of a share link, whether links need a password and whether
    request links may be made; audited as admin_change."""
    if not 1 <= max_days <= LINK_MAX_DAYS:
        raise InvalidInput(f"The longest expiry must be between 1 and {LINK_MAX_DAYS} days.")
    account.link_max_days = max_days
    account.link_password_required = password_required
    account.request_links_allowed = request_links_allowed
    session.flush()
    audit_change(session, keyring, actor, account.id,
                 f"link policy set: max_days={max_days}, password_required={password_required}, "
                 f"request_links_allowed={request_links_allowed}")


def set_notification_defaults(session: Session, keyring: Keyring, account: Account, defaults: dict[str, bool], *,
                              actor: Actor = SYSTEM) -> None:
    """Set which mails (uploads, alerts, exports) the account's users get unless they chose
    otherwise; audited as admin_change."""
    for kind in NOTIFICATION_KINDS:
        setattr(account, f"notify_{kind}_default", bool(defaults[kind]))
    session.flush()
    audit_change(session, keyring, actor, account.id, "notification defaults set: " + ", ".join(
        f"{kind}={bool(defaults[kind])}" for kind in NOTIFICATION_KINDS))
