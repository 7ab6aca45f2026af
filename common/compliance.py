"""An account's security posture at a glance, for its admins: the compliance page's figures.

Every figure comes from a few aggregate queries over the whole account (never one per user),
so the page costs the same for ten users as for ten thousand.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from common import accounts
from common.auth.lockout import frozen_now
from common.models import Account, AuditExport, ChainCheck, IpRule, LoginThrottle, PasswordPolicy, User
from common.passwords import MIN_LENGTH

STRONG, MODERATE, MINIMUM = "strong", "moderate", "minimum"
CLASS_RULES = (("upper", "an upper-case letter"), ("lower", "a lower-case letter"), ("digit", "a digit"),
               ("symbol", "a character that is not a letter or digit"))


@dataclass(frozen=True)
class PolicyStrength:
    """A short rating of the password policy and what it requires, in words."""

    rating: str
    requires: list[str]


@dataclass(frozen=True)
class LastExport:
    """The latest daily audit export: its UTC day and how many events it holds."""

    day: date
    events: int


@dataclass(frozen=True)
class LastCheck:
    """The latest verification of the audit chain."""

    checked_at: datetime
    ok: bool
    events: int


@dataclass(frozen=True)
class ComplianceReport:
    """The account's figures; user counts are of active users."""

    enterprise: bool
    mfa_required: bool
    users: int
    mfa_enrolled: int
    mfa_unenrolled: int  # neither enrolled nor exempt
    mfa_exempt: int
    allow_list_rules: int  # the account-wide list; none means every address may sign in
    policy: PolicyStrength
    never_signed_in: int
    locked: int
    last_export: LastExport | None = None
    last_check: LastCheck | None = None


def compliance_report(session: Session, account: Account) -> ComplianceReport:
    """The compliance figures of one account, in three queries whatever its size."""
    enrolled = and_(User.totp_enrolled_at.is_not(None), User.totp_secret_sealed.is_not(None))
    counts = session.execute(
        select(func.count(),
               func.count().filter(enrolled),
               func.count().filter(~enrolled, User.mfa_exempt.is_(False)),
               func.count().filter(User.mfa_exempt.is_(True)),
               func.count().filter(User.last_login_at.is_(None)),
               func.count().filter(frozen_now()))
        .select_from(User)
        .outerjoin(LoginThrottle, LoginThrottle.subject == User.username_index)
        .where(User.account_id == account.id, User.status == "active")).one()
    rules = session.scalar(select(func.count()).select_from(IpRule).where(
        IpRule.account_id == account.id, IpRule.user_id.is_(None)))
    policy = session.get(PasswordPolicy, account.id)
    users, mfa_enrolled, unenrolled, exempt, never, locked = counts
    return ComplianceReport(
        enterprise=account.is_enterprise, mfa_required=bool(policy and policy.require_mfa), users=users,
        mfa_enrolled=mfa_enrolled, mfa_unenrolled=unenrolled, mfa_exempt=exempt, allow_list_rules=rules,
        policy=policy_strength(accounts.password_rules(session, account)), never_signed_in=never, locked=locked,
        **audit_trail(session, account.id))


def audit_trail(session: Session, account_id: int) -> dict:
    """The latest daily audit export and chain verification of the account, in one query."""
    export = (select(AuditExport.day).where(AuditExport.account_id == account_id)
              .order_by(AuditExport.day.desc()).limit(1))
    check = (select(ChainCheck.checked_at).where(ChainCheck.account_id == account_id)
             .order_by(ChainCheck.checked_at.desc(), ChainCheck.id.desc()).limit(1))
    day, events, checked_at, ok, checked = session.execute(select(*(
        query.with_only_columns(column).scalar_subquery() for query, column in (
            (export, AuditExport.day), (export, AuditExport.events), (check, ChainCheck.checked_at),
            (check, ChainCheck.ok), (check, ChainCheck.events))))).one()
    return dict(last_export=LastExport(day, events) if day else None,
                last_check=LastCheck(checked_at, ok, checked) if checked_at else None)


def policy_strength(rules: dict) -> PolicyStrength:
    """Rate the rules `accounts.password_rules` returns (empty on basic plans)."""
    length = max(rules.get("min_length", MIN_LENGTH), MIN_LENGTH)
    classes = [words for key, words in CLASS_RULES if rules.get(key)]
    if length >= 14 or (length >= 12 and len(classes) >= 3):
        rating = STRONG
    elif length >= 10 or len(classes) >= 2:
        rating = MODERATE
    else:
        rating = MINIMUM
    return PolicyStrength(rating, [f"at least {length} characters", *classes, "not common or easy to guess"])
