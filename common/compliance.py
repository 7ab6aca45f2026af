"""An account's security posture at a glance, for its admins: the compliance page's figures.

Every figure comes from a few aggregate queries over the whole account (never one per user),
so the page costs the same for ten users as for ten thousand.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from common import accounts, sharing
from common.directory import ENROLLED, USER_GROUPS
from common.models import Account, AuditExport, ChainCheck, IpRule, LoginThrottle, PasswordPolicy, Share, ShareLink, User
from common.passwords import MIN_LENGTH

STRONG, MODERATE, MINIMUM = "strong", "moderate", "minimum"
# A live link that lasts longer than this from now is counted as long-lived (the default expiry).
LONG_LINK = sharing.LINK_LIFETIME
CLASS_RULES = (("upper", "an upper-case letter"), ("lower", "a lower-case letter"), ("digit", "a digit"),
               ("symbol", "a character that is not a letter or digit"))


@dataclass(frozen=True)
class PolicyStrength:
    """A short rating of the password policy and what it requires, in words."""

    rating: str
    requires: list[str]


@dataclass(frozen=True)
class OpenLinks:
    """The account's share links that work now: how many, the soonest expiry, and the weak ones."""

    live: int
    soonest_expiry: datetime | None
    long_lived: int  # expiring more than LONG_LINK from now
    without_password: int


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
    links: OpenLinks
    last_export: LastExport | None = None
    last_check: LastCheck | None = None


def compliance_report(session: Session, account: Account) -> ComplianceReport:
    """The compliance figures of one account, in four queries whatever its size."""
    counts = session.execute(
        select(func.count(),
               func.count().filter(ENROLLED),
               *(func.count().filter(USER_GROUPS[group]) for group in ("unenrolled", "exempt", "never", "locked")))
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
        links=open_links(session, account), **audit_trail(session, account.id))


def open_links(session: Session, account: Account) -> OpenLinks:
    """The account's live share links in one query: as common.sharing.is_live decides for one
    link (not revoked, expired or spent; its share unchanged and its owner active), over all."""
    now = func.now()
    live, soonest, long_lived, bare = session.execute(
        select(func.count(), func.min(ShareLink.expires_at),
               func.count().filter(ShareLink.expires_at > now + LONG_LINK),
               func.count().filter(ShareLink.password_hash.is_(None)))
        .select_from(ShareLink)
        .join(Share, and_(Share.id == ShareLink.share_id, Share.account_id == ShareLink.account_id,
                          Share.folder_id == ShareLink.folder_id, Share.permission == ShareLink.permission))
        .join(User, and_(User.id == Share.owner_id, User.status == "active"))
        .where(ShareLink.account_id == account.id, ShareLink.revoked_at.is_(None), ShareLink.expires_at > now,
               or_(ShareLink.max_uses.is_(None), ShareLink.use_count < ShareLink.max_uses))).one()
    return OpenLinks(live, soonest, long_lived, bare)


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
