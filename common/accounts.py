"""Accounts (tenants) and their users: creation, deletion, lookup and the names they carry, sealed.

Account and user names are unique service-wide (case-insensitively) through blind indexes
under the service key; emails are indexed per account. Nothing here stores a name in clear.
"""
from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from common import audit, passwords, paths
from common.crypto import DataKeys, Keyring
from common.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied, TransientError
from common.jobs.purge import enqueue_purge, purge_pending
from common.models import ROLES, TIERS, Account, Contact, FileVersion, Node, PasswordPolicy, User
from common.purging import lock_subtree, lock_tree, purge_record
from common.services import Services

log = logging.getLogger(__name__)

ACCOUNT_NAME_MAX = 64
AUDIT_FOLDER_NAME = "Audit Logs"


@dataclass(frozen=True)
class Actor:
    """Who asks for an administrative change, for the audit trail."""

    protocol: str = "system"
    ip: str | None = None
    user_id: int | None = None
    username: str | None = None


SYSTEM = Actor()


def validate_account_name(name: str) -> str:
    """Printable text of 1 to 64 characters, NFC; the display form is kept as typed."""
    name = unicodedata.normalize("NFC", name.strip())
    if not 1 <= len(name) <= ACCOUNT_NAME_MAX:
        raise InvalidInput(f"An account name has 1 to {ACCOUNT_NAME_MAX} characters.")
    if any(unicodedata.category(c)[0] in "CZ" and c != " " for c in name):
        raise InvalidInput("An account name may not contain control or invisible characters.")
    return name


def account_name_index(service: DataKeys, name: str) -> bytes:
    return service.index("account-name", validate_account_name(name).casefold())


def username_index(service: DataKeys, username: str) -> bytes:
    """The service-wide blind index of a user name (ASCII case-insensitive)."""
    return service.index("username", paths.username_key(username))


def email_index(keys: DataKeys, email: str) -> bytes:
    return keys.index("email", paths.normalise_email(email))


def create_account(session: Session, keyring: Keyring, *, name: str, tier: str, admin_username: str,
                   admin_email: str, admin_password: str, actor: Actor = SYSTEM) -> tuple[Account, User]:
    """Create an account with its keys, policy, Audit Logs folder and first admin."""
    if tier not in TIERS:
        raise InvalidInput(f"Tier must be one of {', '.join(TIERS)}.")
    service = keyring.service(session)
    name = validate_account_name(name)
    index = account_name_index(service, name)
    if session.scalar(select(Account.id).where(Account.name_index == index)) is not None:
        raise AlreadyExists("An account with this name already exists.")
    account = Account(name_sealed=service.seal_text(name, "account-name"), name_index=index,
                      tier=tier, audit_head=audit.GENESIS, audit_count=0)
    session.add(account)
    session.flush()
    keyring.create_account_keys(session, account.id)
    session.add(PasswordPolicy(account_id=account.id))
    account.audit_folder_id = _make_root(session, keyring, account.id, None, "audit", AUDIT_FOLDER_NAME).id
    audit.record(session, keyring, _admin_event(actor, account.id, "account created"))
    admin = create_user(session, keyring, account, username=admin_username, email=admin_email,
                        password=admin_password, role="admin", actor=actor)
    return account, admin


def create_user(session: Session, keyring: Keyring, account: Account, *, username: str, email: str,
                password: str | None, role: str = "user", actor: Actor = SYSTEM) -> User:
    """Create a user with a home folder, after the name, email and password checks.

    With no password (an invited user) nobody can sign in with one until the user sets theirs.
    """
    service = keyring.service(session)
    keys = keyring.account(session, account.id)
    paths.validate_username(username)
    email = email.strip()
    index = username_index(service, username)
    if session.scalar(select(User.id).where(User.username_index == index)) is not None:
        raise AlreadyExists("That user name is taken; choose another.")
    if role not in ROLES:
        raise InvalidInput(f"Role must be one of {', '.join(ROLES)}.")
    if password is not None:
        check_new_password(session, account, password, user_inputs=(username, email))
    user = User(account_id=account.id, role=role, status="active",
                username_sealed=service.seal_text(username, "username"), username_index=index,
                email_sealed=keys.seal_text(email, "email"), email_index=email_index(keys, email),
                password_hash=passwords.hash_password(password) if password is not None else None,
                password_changed_at=datetime.now(timezone.utc) if password is not None else None)
    session.add(user)
    session.flush()
    user.home_folder_id = _make_root(session, keyring, account.id, user.id, "home", "home").id
    audit.record(session, keyring, _admin_event(actor, account.id, f"user {user.id} created as {role}"))
    return user


def delete_user(session: Session, keyring: Keyring, account: Account, user: User,
                actor: Actor = SYSTEM) -> None:
    """Delete a user: their workspace and files (keys now, ciphertext by the purge job), the
    shares they granted, and their login; they stay on as a Contact. Audit events remain."""
    if user.account_id != account.id:
        raise NotFound("No such user in this account.")
    keep_an_admin(session, account.id, user, "deleted")
    keys = keyring.account(session, account.id)
    email = keys.open_text(user.email_sealed, "email")
    # A folder deletion's locks: an upload committing into their files waits for us and then
    # finds its folder gone, rather than adding a version the cascade takes without a purge.
    lock_tree(session, account.id)
    for root in session.scalars(select(Node).where(Node.owner_id == user.id, Node.parent_id.is_(None))
                                .order_by(Node.id)):
        lock_subtree(session, root)
    for version in session.scalars(
            select(FileVersion).join(Node, Node.id == FileVersion.node_id).where(Node.owner_id == user.id)):
        session.add(purge_record(version))
    if session.scalar(select(Contact.id).where(Contact.account_id == account.id,
                                               Contact.email_index == user.email_index)) is None:
        session.add(Contact(account_id=account.id, email_sealed=keys.seal_text(email, "email"),
                            email_index=user.email_index))
    user_id = user.id
    session.delete(user)  # cascades: owned nodes and versions (wrapped keys), granted shares
    session.flush()
    audit.record(session, keyring, _admin_event(actor, account.id, f"user {user_id} deleted; kept as contact"))


def keep_an_admin(session: Session, account_id: int, user: User, change: str) -> None:
    """Refuse a change that would leave the account with no active admin but `user`.

    The account row is locked first, so two admins changed at once cannot both pass the count.
    """
    session.execute(select(Account.id).where(Account.id == account_id).with_for_update())
    session.flush()
    session.refresh(user)  # as committed by whoever held the lock before us
    if not user.is_admin or user.status != "active":
        return
    others = session.scalar(select(func.count()).where(
        User.account_id == account_id, User.role == "admin", User.status == "active", User.id != user.id))
    if others == 0:
        raise PermissionDenied(f"The last admin of an account cannot be {change}; "
                               "make another user admin first.")


def set_role(session: Session, keyring: Keyring, account: Account, user: User, role: str, *,
             actor: Actor = SYSTEM) -> None:
    """Make a user an admin or a plain user; the account's last admin stays one. Audited."""
    _check_member(account, user)
    if role not in ROLES:
        raise InvalidInput(f"Role must be one of {', '.join(ROLES)}.")
    if role == user.role:
        return
    if role != "admin":
        keep_an_admin(session, account.id, user, "demoted")
    user.role = role
    session.flush()
    audit.record(session, keyring, _admin_event(actor, account.id, f"user {user.id} role set to {role}"))


def set_email(session: Session, keyring: Keyring, account: Account, user: User, email: str, *,
              actor: Actor = SYSTEM) -> None:
    """Change a user's email address (sealed, with its index). Audited."""
    _check_member(account, user)
    keys = keyring.account(session, account.id)
    index = email_index(keys, email)
    if index == user.email_index:
        return
    user.email_sealed, user.email_index = keys.seal_text(email.strip(), "email"), index
    session.flush()
    audit.record(session, keyring, _admin_event(actor, account.id, f"user {user.id} email changed"))


def set_enabled(session: Session, keyring: Keyring, account: Account, user: User, enabled: bool, *,
                actor: Actor = SYSTEM) -> None:
    """Enable or disable a user. A disabled user cannot sign in on any door; their web sessions
    end (a new session version) and their open FTPS and SFTP sessions are refused at the next
    operation (the Workspace checks the status). The last admin cannot be disabled. Audited."""
    _check_member(account, user)
    status = "active" if enabled else "disabled"
    if status == user.status:
        return
    if not enabled:
        keep_an_admin(session, account.id, user, "disabled")
        user.session_version += 1
    user.status = status
    session.flush()
    detail = f"user {user.id} {'enabled' if enabled else 'disabled'}"
    audit.record(session, keyring, _admin_event(actor, account.id, detail))


def _check_member(account: Account, user: User) -> None:
    if user.account_id != account.id:
        raise NotFound("No such user in this account.")


@dataclass(frozen=True)
class DeletionReport:
    account_id: int
    versions: int  # stored or spooled versions whose ciphertext is queued for erasure
    purged: int  # erased at once (this host's spool and the store); the rest by their hosts


def delete_account(services: Services, account_id: int) -> DeletionReport:
    """Delete an account and everything it holds: rows and keys now (the crypto-shredding),
    ciphertext by the purge."""
    with services.db.session() as session:
        if session.get(Account, account_id, with_for_update=True) is None:
            raise LookupError(f"account {account_id} does not exist")
        # Record the ciphertext to erase before the rows that name it disappear.
        queued = session.execute(text("""
            INSERT INTO pending_purges (storage_key, spool_id)
            SELECT storage_key, CASE WHEN state = 'stored' THEN NULL ELSE spool_id END
            FROM file_versions WHERE account_id = :account
        """), {"account": account_id}).rowcount
        spools = set(session.scalars(select(FileVersion.spool_id).where(
            FileVersion.account_id == account_id, FileVersion.state == "spooled").distinct()))
        # The FKs cascade: users, nodes, versions, keys (the shredding), shares, audit events.
        session.execute(delete(Account).where(Account.id == account_id))
        audit.record(session, services.keyring, audit.Event(
            action="admin_change", protocol="system", detail=f"account {account_id} deleted"))
    services.keyring.forget(account_id)
    try:
        purged = purge_pending(services)
    except TransientError:
        # The rows and keys are gone already; the store's outage only delays the erasure,
        # which each spool host's sweeper retries.
        log.warning("account %s deleted; its ciphertext waits for the store", account_id)
        purged = 0
    for spool_id in sorted(spools - {services.settings.spool_id}):
        enqueue_purge(services, spool_id)  # their spool files are on their hosts
    log.info("account %s deleted: %d version(s) queued for erasure", account_id, queued)
    return DeletionReport(account_id, queued, purged)


def check_new_password(session: Session, account: Account, password: str,
                       user_inputs: tuple[str, ...] = ()) -> None:
    """Apply the account's policy (enterprise tiers) and the always-on guessability check."""
    passwords.check_password(password, user_inputs=user_inputs, **password_rules(session, account))


def password_rules(session: Session, account: Account) -> dict:
    """The composition rules the account's policy adds (enterprise tiers), as policy_failures takes them."""
    policy = session.get(PasswordPolicy, account.id)
    if policy is None or not account.is_enterprise:
        return {}
    return dict(min_length=policy.min_length, upper=policy.require_upper, lower=policy.require_lower,
                digit=policy.require_digit, symbol=policy.require_symbol)


def change_password(session: Session, keyring: Keyring, user: User, current_password: str,
                    new_password: str, *, actor: Actor = SYSTEM) -> int:
    """Set a user's own new password after checking the current one, ending their other web
    sessions (a new session version, which it returns); audited."""
    if not passwords.verify_password(user.password_hash, current_password):
        raise PermissionDenied("The current password you typed is not right; nothing was changed.")
    keys = keyring.account(session, user.account_id)
    user_inputs = (user_name(session, keyring, user), keys.open_text(user.email_sealed, "email"))
    check_new_password(session, session.get(Account, user.account_id), new_password, user_inputs=user_inputs)
    user.password_hash = passwords.hash_password(new_password)
    user.password_changed_at = datetime.now(timezone.utc)
    user.must_change_password = False
    user.session_version += 1
    audit.record(session, keyring, _admin_event(actor, user.account_id, f"user {user.id} changed their password"))
    return user.session_version


def require_change_if_weak(session: Session, user: User, password: str) -> bool:
    """After a login with this password: if it breaks the account's current rules (tightened
    since it was set), the user must change it before anything else. Whether it does."""
    if passwords.policy_failures(password, **password_rules(session, session.get(Account, user.account_id))):
        user.must_change_password = True
    return user.must_change_password


def find_account(session: Session, keyring: Keyring, name: str) -> Account:
    """The account with this name (case-insensitive), or NotFound."""
    try:
        index = account_name_index(keyring.service(session), name)
    except InvalidInput:
        raise NotFound("No such account.") from None
    account = session.scalar(select(Account).where(Account.name_index == index))
    if account is None:
        raise NotFound("No such account.")
    return account


def find_user(session: Session, keyring: Keyring, username: str) -> User | None:
    """The user with this login name anywhere in the service, or None."""
    try:
        paths.validate_username(username)
    except InvalidInput:
        return None
    index = username_index(keyring.service(session), username)
    return session.scalar(select(User).where(User.username_index == index))


def find_account_user(session: Session, keyring: Keyring, account: Account, username: str) -> User:
    """A user who must belong to the named account; anything else is NotFound."""
    user = find_user(session, keyring, username)
    if user is None or user.account_id != account.id:
        raise NotFound("No such user in this account.")
    return user


def account_name(session: Session, keyring: Keyring, account: Account) -> str:
    return keyring.service(session).open_text(account.name_sealed, "account-name")


def user_name(session: Session, keyring: Keyring, user: User) -> str:
    return keyring.service(session).open_text(user.username_sealed, "username")


def _make_root(session: Session, keyring: Keyring, account_id: int, owner_id: int | None,
               root_kind: str, name: str) -> Node:
    keys = keyring.account(session, account_id)
    node = Node(account_id=account_id, owner_id=owner_id, parent_id=None, kind="folder",
                root_kind=root_kind, name_sealed=keys.seal_text(name, "node-name"),
                name_index=keys.index(f"root:{root_kind}:{owner_id}", name))
    session.add(node)
    session.flush()
    return node


def _admin_event(actor: Actor, account_id: int, detail: str) -> audit.Event:
    return audit.Event(action="admin_change", protocol=actor.protocol, account_id=account_id,
                       user_id=actor.user_id, username=actor.username, ip=actor.ip, detail=detail)
