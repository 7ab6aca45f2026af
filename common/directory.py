"""The account's people as its admins see them: users with their sign-in state, searched and paged.

Names and emails are sealed, so a search opens the account's users here and filters in the
process (DESIGN: sorting and searching names happen after decryption).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from common import accounts
from common.auth.lockout import frozen_now
from common.auth.policy import MFA_ENROLLED, MFA_UNENROLLED, mfa_state
from common.crypto import Keyring
from common.errors import NotFound
from common.models import Account, IpRule, LoginThrottle, Node, PasswordPolicy, Share, User

PAGE_SIZE = 50
# How each user's MFA stands: enrolled, required but not enrolled yet, off, or exempted by an admin.
MFA_REQUIRED_NOT_ENROLLED, MFA_NOT_USED, MFA_EXEMPT = "required", "off", "exempt"


@dataclass(frozen=True)
class UserSummary:
    """One user as the Users tab lists them, opened."""

    id: int
    username: str
    email: str
    role: str
    enabled: bool
    mfa: str
    locked: bool
    invited: bool  # no password set yet
    last_login_at: datetime | None


@dataclass(frozen=True)
class UserPage:
    users: list[UserSummary]
    total: int
    page: int
    pages: int


@dataclass(frozen=True)
class DeletionImpact:
    """What deleting a user destroys: their files, folders and the shares they granted."""

    files: int
    folders: int
    shares: int


def find_user(session: Session, account: Account, user_id: int) -> User:
    """The account's user with this id; another account's is NotFound."""
    user = session.get(User, user_id)
    if user is None or user.account_id != account.id:
        raise NotFound("No such user in this account.")
    return user


ENROLLED = and_(User.totp_enrolled_at.is_not(None), User.totp_secret_sealed.is_not(None))
# Groups of active users, as the compliance page counts them and the users list filters them
# (`?filter=`); a query using them joins LoginThrottle on the user name's index.
USER_GROUPS = {
    "unenrolled": and_(~ENROLLED, User.mfa_exempt.is_(False)),
    "exempt": User.mfa_exempt.is_(True),
    "never": User.last_login_at.is_(None),
    "locked": frozen_now(),
}


def search_users(session: Session, keyring: Keyring, account: Account, search: str = "", *,
                 group: str | None = None, page: int = 1, page_size: int = PAGE_SIZE) -> UserPage:
    """The account's users whose name or email contains `search` (any case), by name, one page;
    with a `group` of USER_GROUPS, only its active users."""
    query = select(User).where(User.account_id == account.id)
    if group in USER_GROUPS:
        query = (query.outerjoin(LoginThrottle, LoginThrottle.subject == User.username_index)
                 .where(User.status == "active", USER_GROUPS[group]))
    rows = session.scalars(query).all()
    keys = keyring.account(session, account.id)
    opened = [(user, accounts.user_name(session, keyring, user), keys.open_text(user.email_sealed, "email"))
              for user in rows]
    needle = search.strip().casefold()
    matching = sorted(((u, name, email) for u, name, email in opened
                       if needle in name.casefold() or needle in email.casefold()),
                      key=lambda found: (found[1].casefold(), found[0].id))
    pages = max(1, -(-len(matching) // page_size))
    page = min(max(page, 1), pages)
    shown = matching[(page - 1) * page_size:page * page_size]
    locked = _locked_subjects(session, [user.username_index for user, _, _ in shown])
    policy = session.get(PasswordPolicy, account.id)
    summaries = [summarise(policy, user, name, email, user.username_index in locked) for user, name, email in shown]
    return UserPage(summaries, len(matching), page, pages)


def user_summary(session: Session, keyring: Keyring, user: User) -> UserSummary:
    """One user's summary, opened."""
    email = keyring.account(session, user.account_id).open_text(user.email_sealed, "email")
    locked = bool(_locked_subjects(session, [user.username_index]))
    return summarise(session.get(PasswordPolicy, user.account_id), user,
                     accounts.user_name(session, keyring, user), email, locked)


def summarise(policy: PasswordPolicy | None, user: User, name: str, email: str, locked: bool) -> UserSummary:
    return UserSummary(user.id, name, email, user.role, user.status == "active", mfa_standing(policy, user),
                       locked, user.password_hash is None, user.last_login_at)


def mfa_standing(policy: PasswordPolicy | None, user: User) -> str:
    """enrolled, required (but not enrolled), off, or exempt."""
    if user.mfa_exempt:
        return MFA_EXEMPT
    state = mfa_state(policy, user)
    if state == MFA_ENROLLED:
        return MFA_ENROLLED
    return MFA_REQUIRED_NOT_ENROLLED if state == MFA_UNENROLLED else MFA_NOT_USED


def deletion_impact(session: Session, user: User) -> DeletionImpact:
    """Counts of what deleting the user destroys (their roots, such as home, are not counted as folders)."""
    kinds = dict(session.execute(select(Node.kind, func.count()).where(
        Node.owner_id == user.id, Node.parent_id.is_not(None)).group_by(Node.kind)).all())
    shares = session.scalar(select(func.count()).where(Share.owner_id == user.id))
    return DeletionImpact(kinds.get("file", 0), kinds.get("folder", 0), shares)


def user_ip_rules(session: Session, user: User) -> list[IpRule]:
    """The user's own allow-list entries, oldest first."""
    return list(session.scalars(select(IpRule).where(
        IpRule.account_id == user.account_id, IpRule.user_id == user.id).order_by(IpRule.id)))


def find_user_ip_rule(session: Session, user: User, rule_id: int) -> IpRule:
    """One of the user's allow-list entries; any other id is NotFound."""
    rule = session.get(IpRule, rule_id)
    if rule is None or rule.user_id != user.id or rule.account_id != user.account_id:
        raise NotFound("No such rule on this user's allow-list.")
    return rule


def _locked_subjects(session: Session, subjects: list[bytes]) -> set[bytes]:
    if not subjects:
        return set()
    return set(session.scalars(select(LoginThrottle.subject).where(
        LoginThrottle.subject.in_(subjects), frozen_now())))
