"""Authentication for every door, and the access settings it enforces.

One path for web, FTPS and SFTP: the per-IP defender, the user's IP allow-lists, the MFA rules
of each door, the per-name lockout (held in Postgres, so every process and host agrees), the
secret check and the audit event. Every refusal is the same AuthFailed reply after the same
password-hashing work, whether the name exists or not; only the audit trail says why.

The lockout reserves an attempt before the secret is checked: under the throttle row's lock
the attempt is counted pessimistically (and the name frozen when that reaches the threshold),
the lock is released, the secret is checked, and the attempt is un-counted only when it
turns out not to be a failure. So concurrent guesses evaluate at most `lockout_threshold`
real secrets before the freeze holds.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from sqlalchemy import delete, distinct, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common import accounts, audit, passwords, totp
from common.accounts import SYSTEM, Actor
from common.config import Settings
from common.crypto import DataKeys, Keyring, derive
from common.errors import (
    AlreadyExists, AuthFailed, Banned, InvalidInput, LockedOut, NotFound, TierRequired,
)
from common.models import (
    Account, AppPassword, DefenderFailure, IpBan, IpRule, LoginThrottle, PasswordPolicy,
    SshKey, User,
)
from common.services import Services

log = logging.getLogger(__name__)

DOORS = ("web", "ftps", "sftp")
METHODS = ("password", "app_password", "publickey")
APP_PASSWORD_PREFIX = "sdap_"
APP_PASSWORD_LABEL_MAX = 64
# How long a first factor waits for its code before the login must start again.
SECOND_FACTOR_SECONDS = 300
MIN_RSA_BITS = 2048
# An IPv6 client is given a /64 (RFC 6177) and may use any address in it: the per-address
# defences count the /64 as one client.
IPV6_CLIENT_PREFIX = 64
MAX_KEY_LINE = 16 * 1024
ENTERPRISE_MESSAGE = ("{what} are available on enterprise plans (t2, t5, t10) only; "
                      "this account is on the basic plan.")


@dataclass(frozen=True)
class AuthResult:
    """Who logged in, through which door and from where.

    `needs_totp`: the first factor was accepted and a code is still required (pass this
    object to `verify_totp`); `must_enrol`: a web login of a user who must enrol in MFA
    before doing anything else.
    """

    user_id: int
    account_id: int
    username: str
    role: str
    protocol: str
    ip: str | None
    method: str
    needs_totp: bool = False
    must_enrol: bool = False
    issued_at: float = 0.0

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class _Login:
    """What one attempt knows after the lookup; a user name that matches no user has no user_id."""

    protocol: str
    method: str
    ip: str | None
    subject: bytes
    service: DataKeys = field(repr=False)
    user_id: int | None = None
    account_id: int | None = None
    display: str | None = None
    role: str | None = None
    password_hash: str | None = field(default=None, repr=False)
    allowed: bool = True
    mfa: str = "off"  # off | enrolled | unenrolled (MFA required but no secret yet)
    keys: DataKeys | None = field(default=None, repr=False)
    totp_secret: str | None = field(default=None, repr=False)
    app_password: AppPassword | None = None
    ssh_key_id: int | None = None


@dataclass(frozen=True)
class _Reservation:
    stamp: datetime
    started_lock: bool


@dataclass(frozen=True)
class _Verdict:
    ok: bool
    detail: str
    step: int | None = None
    recovery_code: str | None = None


# -- logging in ------------------------------------------------------------------------------

def authenticate(services: Services, username: str, secret: str | bytes, *, method: str,
                 protocol: str, ip: str | None) -> AuthResult:
    """Check a first factor; raise AuthFailed for every refusal, Banned for a banned address.

    method "password" on FTPS also accepts an app password (recognised by its prefix);
    "publickey" takes the key blob and must be called only after the signature verified.
    """
    method = _effective_method(method, protocol, secret)
    ip = client_ip(ip)
    _raise_if_banned(services, ip, protocol)
    login = _lookup(services, username, secret, method=method, protocol=protocol, ip=ip)
    if method == "publickey":
        return _finish_key_login(services, login)
    _refuse_at_gate(services, login, secret)
    reservation = _reserve_or_refuse(services, login, secret)
    return _settle(services, login, reservation, _check_secret(login, secret))


def verify_totp(services: Services, pending: AuthResult, code: str) -> AuthResult:
    """The second step (web form, SFTP keyboard-interactive): a TOTP code, or on the web a recovery code."""
    if not pending.needs_totp:
        raise ValueError("verify_totp needs the result of a first factor that asked for a code")
    _raise_if_banned(services, pending.ip, pending.protocol)
    login = _reload(services, pending)
    if time.time() - pending.issued_at > SECOND_FACTOR_SECONDS:
        _record_refusal(services, login, "second factor too late", count_for_defender=False)
        raise AuthFailed()
    reservation = _reserve_or_refuse(services, login, None)
    return _settle(services, login, reservation, _check_code(login, code))


def is_authorized_key(services: Services, username: str, key_type: str, key_blob: bytes) -> bool:
    """Whether this public key belongs to an active user of this name; records nothing (SSH probes)."""
    with services.db.session() as session:
        user = accounts.find_user(session, services.keyring, username)
        if user is None or user.status != "active":
            return False
        return _authorized_key_id(session, user.id, key_type, bytes(key_blob)) is not None


UNAUTHENTICATED_ENDS_AUDITED_PER_MINUTE = 3


def record_unauthenticated_end(services: Services, username: str | None, protocol: str,
                               ip: str | None) -> None:
    """Count for the defender a connection that ended with no login and no counted failure,
    and audit it as one login_failed: past a few a minute from one address for one name,
    one summary event stands for the rest, so nobody can flood a tenant's chain."""
    ip = client_ip(ip)
    with services.db.session() as session:
        login = _lookup_in(session, services.keyring, username or "", secret=None,
                           method="password", protocol=protocol, ip=ip)
        ban = _count_for_defender(session, services, login)
        recent = _recent_failures_of(session, login, seconds=60)
        detail = "connection ended before authentication"
        if recent <= UNAUTHENTICATED_ENDS_AUDITED_PER_MINUTE:
            _audit_login(session, services.keyring, login, "login_failed", "failed", detail)
        elif recent == UNAUTHENTICATED_ENDS_AUDITED_PER_MINUTE + 1:
            _audit_login(session, services.keyring, login, "login_failed", "failed",
                         f"{detail}; more from this address for this name within 60 s are counted, "
                         "not recorded")
        if ban:
            audit.record(session, services.keyring, audit.Event(
                action="lockout", protocol=protocol, status="ok", ip=ip, detail=ban))


def _recent_failures_of(session: Session, login: _Login, *, seconds: int) -> int:
    """Failures the defender holds from this address for this name over the last seconds."""
    if login.ip is None:
        return 0
    since = _db_now(session) - timedelta(seconds=seconds)
    return session.scalar(select(func.count()).where(
        DefenderFailure.ip == login.ip, DefenderFailure.subject == login.subject, DefenderFailure.at > since))


def is_banned(services: Services, ip: str | None) -> bool:
    """Whether the per-IP defender bans this address now (adapters check at connect time)."""
    address = client_ip(ip)
    if address is None:
        return False
    with services.db.session() as session:
        return _banned_until(session, address) is not None


def is_locked_out(services: Services, username: str) -> bool:
    """Whether this user name (known or not) is frozen by the lockout now."""
    with services.db.session() as session:
        subject = accounts.username_index(services.keyring.service(session), username)
        row = session.get(LoginThrottle, subject)
        return row is not None and row.locked_until is not None and row.locked_until > _db_now(session)


def client_ip(ip: str | None) -> str | None:
    """The address in canonical form (IPv4-mapped IPv6 as IPv4, no zone), or None if unparsable."""
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(str(ip).strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def address_group(ip: str | None) -> str | None:
    """What per-address defences count as one client: an IPv4 address, or an IPv6 /64."""
    address = client_ip(ip)
    if address is None or ":" not in address:
        return address
    return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))


def _effective_method(method: str, protocol: str, secret: str | bytes) -> str:
    if protocol not in DOORS or method not in METHODS:
        raise ValueError(f"unknown door or method: {protocol!r}, {method!r}")
    if method == "publickey" and protocol != "sftp":
        raise ValueError("public keys log in over SFTP only")
    if method == "app_password" and protocol != "ftps":
        raise ValueError("app passwords log in over FTPS only")
    if protocol == "ftps" and isinstance(secret, str) and secret.startswith(APP_PASSWORD_PREFIX):
        return "app_password"
    return method


# -- the lookup ------------------------------------------------------------------------------

def _lookup(services: Services, username: str, secret, *, method: str, protocol: str,
            ip: str | None) -> _Login:
    with services.db.session() as session:
        return _lookup_in(session, services.keyring, username, secret=secret, method=method,
                          protocol=protocol, ip=ip)


def _lookup_in(session: Session, keyring: Keyring, username: str, *, secret, method: str,
               protocol: str, ip: str | None) -> _Login:
    service = keyring.service(session)
    login = _Login(protocol=protocol, method=method, ip=ip, service=service,
                   subject=accounts.username_index(service, username))
    user = accounts.find_user(session, keyring, username)
    if user is None or user.status != "active":
        return login
    login = _with_user(session, keyring, login, user)
    if method == "app_password":
        login = replace(login, app_password=_find_app_password(session, user.id, secret))
    elif method == "publickey":
        login = replace(login, ssh_key_id=_authorized_key_id(session, user.id, None, bytes(secret)))
    return login


def _with_user(session: Session, keyring: Keyring, login: _Login, user: User) -> _Login:
    keys = keyring.account(session, user.account_id)
    policy = session.get(PasswordPolicy, user.account_id)
    secret = totp.open_secret(keys, user.totp_secret_sealed) if user.totp_secret_sealed else None
    return replace(
        login, user_id=user.id, account_id=user.account_id, role=user.role,
        display=accounts.user_name(session, keyring, user), password_hash=user.password_hash,
        allowed=is_address_allowed(session, user.account_id, user.id, login.ip),
        mfa=_mfa_state(policy, user), keys=keys, totp_secret=secret)


def _reload(services: Services, pending: AuthResult) -> _Login:
    with services.db.session() as session:
        service = services.keyring.service(session)
        login = _Login(protocol=pending.protocol, method=pending.method, ip=pending.ip,
                       service=service, subject=accounts.username_index(service, pending.username))
        user = session.get(User, pending.user_id)
        if user is not None and user.status == "active" and user.account_id == pending.account_id:
            return _with_user(session, services.keyring, login, user)
        _audit_login(session, services.keyring, login, "login_failed", "refused", "user gone")
    raise AuthFailed()


def _mfa_state(policy: PasswordPolicy | None, user: User) -> str:
    """A user who enrolled is asked for codes whether or not the account requires MFA."""
    if user.mfa_exempt:
        return "off"
    if user.totp_enrolled_at is not None and user.totp_secret_sealed:
        return "enrolled"
    return "unenrolled" if policy is not None and policy.require_mfa else "off"


# -- refusals before any secret is checked -----------------------------------------------------

def _raise_if_banned(services: Services, ip: str | None, protocol: str) -> None:
    if ip is None:
        return
    with services.db.session() as session:
        banned = _banned_until(session, ip) is not None
        if banned:
            audit.record(session, services.keyring, audit.Event(
                action="login_failed", protocol=protocol, status="refused", ip=ip,
                detail="address banned"))
    if banned:
        raise Banned()


def _refuse_at_gate(services: Services, login: _Login, secret) -> None:
    """Allow-list and un-enrolled MFA refusals: audited, not counted against the name."""
    if not login.allowed:
        reason, for_defender = "address not in allow-list", True
    elif login.mfa == "unenrolled" and login.protocol != "web":
        reason, for_defender = "mfa required but not enrolled", False
    else:
        return
    if secret is not None:
        passwords.burn_password_work(_as_text(secret))
    _record_refusal(services, login, reason, count_for_defender=for_defender)
    raise AuthFailed()


def _record_refusal(services: Services, login: _Login, reason: str, *, count_for_defender: bool) -> None:
    with services.db.session() as session:
        _record_failure(session, services, login, "refused", reason, count_for_defender=count_for_defender)


def _record_failure(session: Session, services: Services, login: _Login, status: str, reason: str, *,
                    count_for_defender: bool = True, lockout: str | None = None) -> None:
    """Audit one failed attempt (and the freeze or ban it starts), feeding the defender."""
    # The defender's per-address lock is taken before any audit chain head, in every path.
    ban = _count_for_defender(session, services, login) if count_for_defender else None
    _audit_login(session, services.keyring, login, "login_failed", status, reason)
    if lockout:
        _audit_login(session, services.keyring, login, "lockout", "ok", lockout)
    if ban:
        audit.record(session, services.keyring, audit.Event(
            action="lockout", protocol=login.protocol, status="ok", ip=login.ip, detail=ban))


def _reserve_or_refuse(services: Services, login: _Login, secret) -> _Reservation:
    with services.db.session() as session:
        reservation = _reserve(session, services.settings, login.subject)
        if reservation is None:
            _record_failure(session, services, login, "refused", "locked out")
    if reservation is None:
        if secret is not None:
            passwords.burn_password_work(_as_text(secret))
        raise LockedOut()
    return reservation


# -- checking the secret (outside any transaction: no row lock is held while hashing) ---------

def _check_secret(login: _Login, secret: str) -> _Verdict:
    if login.method == "app_password":
        return _check_app_password(login, secret)
    if login.protocol == "ftps" and login.mfa == "enrolled":
        # With MFA on, FTPS takes app passwords only; the account password is a wrong one.
        passwords.burn_password_work(secret)
        return _Verdict(False, "account password refused on ftps (mfa required)")
    if passwords.verify_password(login.password_hash, secret):
        return _Verdict(True, "password")
    return _Verdict(False, "wrong password")


def _check_app_password(login: _Login, token: str) -> _Verdict:
    passwords.burn_password_work(token)
    found = login.app_password
    if found is None or login.user_id is None:
        return _Verdict(False, "wrong app password")
    public_id, secret = _split_token(token)
    expected = app_password_hash(login.service, public_id, secret)
    if not hmac.compare_digest(expected, found.secret_hash):
        return _Verdict(False, "wrong app password")
    return _Verdict(True, f"app password {found.public_id}")


def _check_code(login: _Login, code: str) -> _Verdict:
    code = (code or "").strip()
    if totp.looks_like_code(code):
        step = totp.matching_step(login.totp_secret, code) if login.totp_secret else None
        return _Verdict(step is not None, "totp" if step is not None else "wrong code", step=step)
    if login.protocol == "web" and login.user_id is not None:
        return _Verdict(True, "recovery code", recovery_code=code)
    return _Verdict(False, "wrong code")


# -- settling the outcome ------------------------------------------------------------------

def _settle(services: Services, login: _Login, reservation: _Reservation, verdict: _Verdict) -> AuthResult:
    first_factor = verdict.step is None and verdict.recovery_code is None
    needs_totp = first_factor and login.mfa == "enrolled" and login.protocol != "ftps"
    with services.db.session() as session:
        if verdict.ok:
            verdict = _claim_code(session, login, verdict)
        if not verdict.ok:
            _confirm_failure(session, services, login, reservation, verdict.detail)
        elif needs_totp:
            _uncount(session, services.settings, login.subject, reservation)
        else:
            _record_success(session, services.keyring, login, _success_detail(login, verdict))
    if not verdict.ok:
        raise AuthFailed()
    return _result(login, needs_totp=needs_totp)


def _claim_code(session: Session, login: _Login, verdict: _Verdict) -> _Verdict:
    """Spend the code in the outcome's transaction, so a replay in a race loses."""
    if verdict.step is not None and not totp.claim_step(session, login.user_id, verdict.step):
        return _Verdict(False, "code replayed")
    if verdict.recovery_code is not None and not totp.use_recovery_code(
            session, login.keys, login.user_id, verdict.recovery_code):
        return _Verdict(False, "wrong recovery code")
    if login.app_password is not None:
        session.execute(update(AppPassword).where(AppPassword.id == login.app_password.id)
                        .values(last_used_at=func.now()))
    return verdict


def _finish_key_login(services: Services, login: _Login) -> AuthResult:
    if login.ssh_key_id is None:
        raise AuthFailed()  # a refused key offer: not counted, not audited (one event at the end)
    _refuse_at_gate(services, login, None)
    with services.db.session() as session:
        locked = _is_locked(session, login.subject)
        if locked:
            # A valid key is no guess: the refusal is audited but feeds no counter.
            _audit_login(session, services.keyring, login, "login_failed", "refused", "locked out")
        else:
            session.execute(update(SshKey).where(SshKey.id == login.ssh_key_id)
                            .values(last_used_at=func.now()))
        if not locked and login.mfa != "enrolled":
            _record_success(session, services.keyring, login, "publickey")
    if locked:
        raise LockedOut()
    return _result(login, needs_totp=login.mfa == "enrolled")


def _record_success(session: Session, keyring: Keyring, login: _Login, detail: str) -> None:
    _clear_throttle(session, login.subject)
    _audit_login(session, keyring, login, "login", "ok", detail)


def _success_detail(login: _Login, verdict: _Verdict) -> str:
    if verdict.step is not None or verdict.recovery_code is not None:
        return f"{login.method} + {verdict.detail}"
    if login.mfa == "unenrolled":
        return f"{verdict.detail}; mfa enrolment required"
    return verdict.detail


def _result(login: _Login, *, needs_totp: bool) -> AuthResult:
    return AuthResult(
        user_id=login.user_id, account_id=login.account_id, username=login.display,
        role=login.role, protocol=login.protocol, ip=login.ip, method=login.method,
        needs_totp=needs_totp, must_enrol=login.mfa == "unenrolled" and login.protocol == "web",
        issued_at=time.time())


def _audit_login(session: Session, keyring: Keyring, login: _Login, action: str, status: str,
                 detail: str) -> None:
    # A name that matches no user is never recorded: people type passwords into name fields.
    audit.record(session, keyring, audit.Event(
        action=action, protocol=login.protocol, status=status, account_id=login.account_id,
        user_id=login.user_id, username=login.display, ip=login.ip, detail=detail))


def _as_text(secret) -> str:
    return secret if isinstance(secret, str) else ""


# -- the lockout (login_throttles) -----------------------------------------------------------

def _db_now(session: Session) -> datetime:
    # The database's clock, so every host measures windows against the same time.
    return session.scalar(select(func.clock_timestamp()))


def _throttle_for_update(session: Session, subject: bytes) -> LoginThrottle:
    # A periodic prune may delete the row between the insert and the lock: then insert again.
    for _ in range(3):
        session.execute(insert(LoginThrottle).values(subject=subject).on_conflict_do_nothing())
        row = session.get(LoginThrottle, subject, with_for_update=True, populate_existing=True)
        if row is not None:
            return row
    raise RuntimeError("login throttle row vanished three times in a row")


def _reserve(session: Session, settings: Settings, subject: bytes) -> _Reservation | None:
    """Count an attempt before its secret is checked; None when the name is frozen."""
    row = _throttle_for_update(session, subject)
    now = _db_now(session)
    if row.locked_until is not None and row.locked_until > now:
        return None
    # After a lock has run out the name starts afresh.
    failures = [] if row.locked_until is not None else _recent(row.failures, now, settings)
    row.failures = failures + [now]
    started = len(row.failures) >= settings.lockout_threshold
    row.locked_until = now + timedelta(seconds=settings.lockout_seconds) if started else None
    row.updated_at = now
    return _Reservation(now, started)


def _uncount(session: Session, settings: Settings, subject: bytes, reservation: _Reservation) -> None:
    """Take back a reservation that did not end in a failure, and its freeze if it caused one."""
    row = _throttle_for_update(session, subject)
    now = _db_now(session)
    row.failures = [f for f in row.failures if f != reservation.stamp]
    still_counted = len(_recent(row.failures, now, settings))
    if row.locked_until is not None and still_counted < settings.lockout_threshold:
        row.locked_until = None
    row.updated_at = now


def _confirm_failure(session: Session, services: Services, login: _Login,
                     reservation: _Reservation, detail: str) -> None:
    row = _throttle_for_update(session, login.subject)
    lockout = None
    # A success or an unlock in between clears the count; then this attempt started nothing.
    if reservation.started_lock and row.locked_until is not None and reservation.stamp in row.failures:
        lockout = (f"user name frozen for {services.settings.lockout_seconds} s after "
                   f"{len(row.failures)} failed logins")
    _record_failure(session, services, login, "failed", detail, lockout=lockout)


def _recent(failures: list[datetime], now: datetime, settings: Settings) -> list[datetime]:
    start = now - timedelta(seconds=settings.lockout_seconds)
    return [f for f in failures if f > start]


def _is_locked(session: Session, subject: bytes) -> bool:
    row = session.get(LoginThrottle, subject)
    return row is not None and row.locked_until is not None and row.locked_until > _db_now(session)


def _clear_throttle(session: Session, subject: bytes) -> None:
    session.execute(update(LoginThrottle).where(LoginThrottle.subject == subject)
                    .values(failures=[], locked_until=None, updated_at=func.now()))


def unlock_user(session: Session, keyring: Keyring, user: User, *, actor: Actor = SYSTEM) -> None:
    """Lift a lockout and clear the failure count of a user's name, audited."""
    name = accounts.user_name(session, keyring, user)
    _clear_throttle(session, accounts.username_index(keyring.service(session), name))
    _audit_admin(session, keyring, actor, user.account_id, f"user {user.id} unlocked")


def prune_login_state(session: Session, settings: Settings) -> int:
    """Delete throttle rows, defender failures and bans that can no longer matter (a periodic job)."""
    now = _db_now(session)
    idle_since = now - timedelta(seconds=settings.lockout_seconds)
    removed = session.execute(delete(LoginThrottle).where(
        LoginThrottle.updated_at < idle_since,
        or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until < now))).rowcount
    window_start = now - timedelta(seconds=settings.defender_window_seconds)
    removed += session.execute(delete(DefenderFailure).where(DefenderFailure.at < window_start)).rowcount
    removed += session.execute(delete(IpBan).where(IpBan.banned_until < now)).rowcount
    return removed


# -- the per-IP defender -----------------------------------------------------------------------

def _count_for_defender(session: Session, services: Services, login: _Login) -> str | None:
    """Record a failure from an address; ban it once it crosses both thresholds (returns why)."""
    client = address_group(login.ip)
    if client is None:
        return None
    settings = services.settings
    # Serialise per address, so concurrent failures all see each other's rows.
    session.execute(select(func.pg_advisory_xact_lock(_address_lock_key(client))))
    now = _db_now(session)
    start = now - timedelta(seconds=settings.defender_window_seconds)
    session.execute(delete(DefenderFailure)
                    .where(DefenderFailure.ip == client, DefenderFailure.at <= start))
    session.add(DefenderFailure(ip=client, subject=login.subject, at=now))
    session.flush()
    total, names = session.execute(
        select(func.count(), func.count(distinct(DefenderFailure.subject)))
        .where(DefenderFailure.ip == client, DefenderFailure.at > start)).one()
    if total < settings.defender_max_failures or names < settings.defender_min_users:
        return None
    _ban(session, client, now + timedelta(seconds=settings.defender_ban_seconds))
    log.warning("defender banned an address for %s s", settings.defender_ban_seconds)
    return (f"address banned for {settings.defender_ban_seconds} s after {total} failed logins "
            f"for {names} user names")


def _ban(session: Session, ip: str, until: datetime) -> None:
    session.execute(insert(IpBan).values(ip=ip, banned_until=until)
                    .on_conflict_do_update(index_elements=[IpBan.ip], set_={"banned_until": until}))
    # The failures that led to the ban are spent; after it the address starts afresh.
    session.execute(delete(DefenderFailure).where(DefenderFailure.ip == ip))


def _banned_until(session: Session, ip: str) -> datetime | None:
    return session.scalar(select(IpBan.banned_until)
                          .where(IpBan.ip == address_group(ip), IpBan.banned_until > func.clock_timestamp()))


def _address_lock_key(ip: str) -> int:
    return int.from_bytes(hashlib.sha256(b"defender:" + ip.encode()).digest()[:8], "big", signed=True)


# -- IP allow-lists -------------------------------------------------------------------------------

def is_address_allowed(session: Session, account_id: int, user_id: int, ip: str | None) -> bool:
    """Whether the address satisfies both the account's and the user's list (an empty list allows all)."""
    rules = session.execute(select(IpRule.user_id, IpRule.cidr).where(
        IpRule.account_id == account_id,
        or_(IpRule.user_id.is_(None), IpRule.user_id == user_id))).all()
    account_nets = [cidr for owner, cidr in rules if owner is None]
    user_nets = [cidr for owner, cidr in rules if owner is not None]
    return all(_within(ip, nets) for nets in (account_nets, user_nets) if nets)


def _within(ip: str | None, networks) -> bool:
    address = client_ip(ip)
    if address is None:
        return False
    parsed = ipaddress.ip_address(address)
    return any(parsed in ipaddress.ip_network(str(net)) for net in networks)


def parse_cidr(value: str) -> str:
    """A single address or CIDR range in canonical form (IPv4-mapped ranges as IPv4), or InvalidInput."""
    try:
        network = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise InvalidInput("Give an IP address or a CIDR range such as 203.0.113.0/24.") from None
        raise InvalidInput(f"That range has host bits set; did you mean {loose}?") from None
    mapped = ipaddress.ip_network("::ffff:0:0/96")
    if network.version == 6 and network.subnet_of(mapped):
        network = ipaddress.ip_network(f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}")
    return str(network)


def add_ip_rule(session: Session, keyring: Keyring, account: Account, cidr: str, *,
                user: User | None = None, actor: Actor = SYSTEM) -> IpRule:
    """Add an allow-list entry for the account or one of its users (enterprise tiers only)."""
    if not account.is_enterprise:
        raise TierRequired(ENTERPRISE_MESSAGE.format(what="IP allow-lists"))
    if user is not None and user.account_id != account.id:
        raise NotFound("No such user in this account.")
    network = parse_cidr(cidr)
    user_id = user.id if user is not None else None
    if _find_ip_rule(session, account, network, user_id) is not None:
        raise AlreadyExists("That address or range is already on this allow-list.")
    rule = IpRule(account_id=account.id, user_id=user_id, cidr=network)
    session.add(rule)
    session.flush()
    scope = f"user {user_id}" if user_id else "the account"
    _audit_admin(session, keyring, actor, account.id, f"allow-list of {scope}: added {network}")
    return rule


def remove_ip_rule(session: Session, keyring: Keyring, account: Account, cidr: str, *,
                   user: User | None = None, actor: Actor = SYSTEM) -> None:
    """Remove an allow-list entry of the account or one of its users, audited."""
    if user is not None and user.account_id != account.id:
        raise NotFound("No such user in this account.")
    user_id = user.id if user is not None else None
    rule = _find_ip_rule(session, account, parse_cidr(cidr), user_id)
    if rule is None:
        raise NotFound("That address or range is not on this allow-list.")
    session.delete(rule)
    scope = f"user {user_id}" if user_id else "the account"
    _audit_admin(session, keyring, actor, account.id, f"allow-list of {scope}: removed {rule.cidr}")


def _find_ip_rule(session: Session, account: Account, network: str, user_id: int | None) -> IpRule | None:
    return session.scalar(select(IpRule).where(
        IpRule.account_id == account.id, IpRule.cidr == network,
        IpRule.user_id.is_(None) if user_id is None else IpRule.user_id == user_id))


# -- password policy and MFA settings --------------------------------------------------------

def set_policy(session: Session, keyring: Keyring, account: Account, *, min_length: int | None = None,
               upper: bool | None = None, lower: bool | None = None, digit: bool | None = None,
               symbol: bool | None = None, require_mfa: bool | None = None,
               actor: Actor = SYSTEM) -> PasswordPolicy:
    """Change the given settings (None leaves one as it is); composition rules are enterprise-only."""
    rules = {"min_length": min_length, "require_upper": upper, "require_lower": lower,
             "require_digit": digit, "require_symbol": symbol}
    changes = {name: value for name, value in rules.items() if value is not None}
    if changes and not account.is_enterprise:
        raise TierRequired(ENTERPRISE_MESSAGE.format(what="Password rules"))
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
    _audit_admin(session, keyring, actor, account.id, f"password policy set: {summary}")
    return policy


def set_mfa_exempt(session: Session, keyring: Keyring, user: User, exempt: bool, *,
                   actor: Actor = SYSTEM) -> None:
    """Exempt a named service user from the account's MFA requirement (or end that), audited."""
    user.mfa_exempt = exempt
    state = "exempt from" if exempt else "no longer exempt from"
    _audit_admin(session, keyring, actor, user.account_id, f"user {user.id} {state} mfa")


# -- FTPS app passwords ----------------------------------------------------------------------

@dataclass(frozen=True)
class AppPasswordInfo:
    """One app password as the portal lists it (never its secret)."""

    public_id: str
    label: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


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
    _audit_admin(session, keyring, actor, user.account_id,
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
    _audit_admin(session, keyring, actor, user.account_id,
                 f"app password {public_id} of user {user.id} revoked")


def list_app_passwords(session: Session, keyring: Keyring, user: User) -> list[AppPasswordInfo]:
    """The user's app passwords, newest first, with their labels opened."""
    keys = keyring.account(session, user.account_id)
    rows = session.scalars(select(AppPassword).where(AppPassword.user_id == user.id)
                           .order_by(AppPassword.id.desc()))
    return [AppPasswordInfo(row.public_id, _open_label(keys, row.label_sealed), row.created_at,
                            row.last_used_at, row.revoked_at) for row in rows]


def _open_label(keys: DataKeys, sealed: bytes | None) -> str | None:
    return keys.open_text(sealed, "app-password-label") if sealed else None


def _split_token(token: str) -> tuple[str, str]:
    public_id, _, secret = token[len(APP_PASSWORD_PREFIX):].partition("_")
    return public_id, secret


def _find_app_password(session: Session, user_id: int, token) -> AppPassword | None:
    if not isinstance(token, str) or not token.startswith(APP_PASSWORD_PREFIX):
        return None
    public_id, _ = _split_token(token)
    return session.scalar(select(AppPassword).where(
        AppPassword.user_id == user_id, AppPassword.public_id == public_id[:32],
        AppPassword.revoked_at.is_(None)))


# -- SSH public keys -------------------------------------------------------------------------

@dataclass(frozen=True)
class PublicKey:
    """A parsed OpenSSH public key: type, wire-format blob, comment and SHA256 fingerprint."""

    key_type: str
    blob: bytes
    comment: str | None
    fingerprint: str


def parse_public_key(text: str) -> PublicKey:
    """Parse one OpenSSH public key line (`type base64 [comment]`), refusing weak or malformed keys."""
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) != 1:
        raise InvalidInput("Give exactly one OpenSSH public key line (type, key, optional comment).")
    fields = lines[0].split(None, 2)
    if len(fields) < 2:
        raise InvalidInput("That is not an OpenSSH public key line (type, key, optional comment).")
    key_type, encoded = fields[0], fields[1]
    blob = _decode_key_blob(key_type, encoded)
    digest = hashlib.sha256(blob).digest()
    fingerprint = "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    return PublicKey(key_type, blob, fields[2].strip() if len(fields) > 2 else None, fingerprint)


def _decode_key_blob(key_type: str, encoded: str) -> bytes:
    try:
        blob = base64.b64decode(encoded, validate=True)
        key = load_ssh_public_key(f"{key_type} {encoded}".encode("ascii"))
    except (binascii.Error, ValueError, UnsupportedAlgorithm):
        raise InvalidInput("That public key could not be read; "
                           "paste the whole line of the .pub file.") from None
    embedded_type = blob[4:4 + int.from_bytes(blob[:4], "big")].decode("ascii", "replace")
    if embedded_type != key_type:
        raise InvalidInput("The key type does not match the key.")
    if isinstance(key, dsa.DSAPublicKey):
        raise InvalidInput("DSA keys are not accepted; use an Ed25519, ECDSA or RSA (2048+) key.")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise InvalidInput(f"RSA keys need at least {MIN_RSA_BITS} bits.")
    return blob


def add_ssh_key(session: Session, keyring: Keyring, user: User, line: str, *,
                actor: Actor = SYSTEM) -> SshKey:
    """Authorise an OpenSSH public key for the user's SFTP logins, audited."""
    key = parse_public_key(line)
    if session.scalar(select(SshKey.id).where(SshKey.user_id == user.id,
                                             SshKey.fingerprint == key.fingerprint)) is not None:
        raise AlreadyExists("This key is already authorised for this user.")
    keys = keyring.account(session, user.account_id)
    row = SshKey(user_id=user.id, key_type=key.key_type, key_blob=key.blob, fingerprint=key.fingerprint,
                 comment_sealed=keys.seal_text(key.comment, "ssh-key-comment") if key.comment else None)
    session.add(row)
    session.flush()
    _audit_admin(session, keyring, actor, user.account_id,
                 f"ssh key {key.fingerprint} added for user {user.id}")
    return row


def _authorized_key_id(session: Session, user_id: int, key_type: str | None, blob: bytes) -> int | None:
    query = select(SshKey.id).where(SshKey.user_id == user_id, SshKey.key_blob == blob)
    if key_type is not None:
        query = query.where(SshKey.key_type == key_type)
    return session.scalar(query)


def _audit_admin(session: Session, keyring: Keyring, actor: Actor, account_id: int, detail: str) -> None:
    audit.record(session, keyring, audit.Event(
        action="admin_change", protocol=actor.protocol, account_id=account_id,
        user_id=actor.user_id, username=actor.username, ip=actor.ip, detail=detail))
