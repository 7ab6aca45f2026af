"""The login gate: one path for every door that has user logins.

For each attempt: the per-IP defender's ban, the lookup, the allow-lists and the MFA rule
(refused before any secret is checked), the lockout's reservation, the secret check, and the
outcome with its audit event. How a door's second factor works comes from its row in
common.doors, never from its name. Every refusal is the same AuthFailed reply after the same
password-hashing work, whether the name exists or not; only the audit trail says why.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from sqlalchemy import func, update
from sqlalchemy.orm import Session

from common import accounts, audit, doors, notifications, passwords
from common.auth import app_passwords, defender, lockout, ssh_keys, totp, web_sessions
from common.auth.addresses import client_ip
from common.auth.allowlist import is_address_allowed
from common.auth.lockout import Reservation
from common.auth.policy import MFA_ENROLLED, MFA_OFF, MFA_UNENROLLED, mfa_state
from common.config import Settings
from common.crypto import DataKeys, Keyring
from common.errors import AuthFailed, Banned, LockedOut
from common.models import AppPassword, PasswordPolicy, User
from common.services import Services

METHODS = ("password", "app_password", "publickey")
# How long a first factor waits for its code before the login must start again.
SECOND_FACTOR_SECONDS = 300
UNAUTHENTICATED_ENDS_AUDITED_PER_MINUTE = 3


@dataclass(frozen=True)
class AuthResult:
    """Who logged in, through which door and from where.

    `needs_totp`: the first factor was accepted and a code is still required (pass this
    object to `verify_totp`); `must_enrol`: a login of a user who must enrol in MFA
    before doing anything else (on a door that lets such users in to enrol).
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
    mfa: str = MFA_OFF
    keys: DataKeys | None = field(default=None, repr=False)
    totp_secret: str | None = field(default=None, repr=False)
    app_password: AppPassword | None = None
    ssh_key_id: int | None = None

    @property
    def door(self) -> doors.Door:
        return doors.door(self.protocol)


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

    method "password" on a door that takes app passwords also accepts one (recognised by its
    prefix); "publickey" takes the key blob and must be called only after the signature verified.
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
    """The second step (web form, SFTP keyboard-interactive): a TOTP code, or a recovery code
    on a door whose row accepts them."""
    if not pending.needs_totp:
        raise ValueError("verify_totp needs the result of a first factor that asked for a code")
    _raise_if_banned(services, pending.ip, pending.protocol)
    login = _reload(services, pending)
    if time.time() - pending.issued_at > SECOND_FACTOR_SECONDS:
        _record_refusal(services, login, "second factor too late", count_for_defender=False)
        raise AuthFailed()
    reservation = _reserve_or_refuse(services, login, None)
    return _settle(services, login, reservation, _check_code(login, code))


def record_unauthenticated_end(services: Services, username: str | None, protocol: str,
                               ip: str | None) -> None:
    """Count for the defender a connection that ended with no login and no counted failure,
    and audit it as one login_failed: past a few a minute from one address for one name,
    one summary event stands for the rest, so nobody can flood a tenant's chain."""
    ip = client_ip(ip)
    with services.db.session() as session:
        login = _lookup_in(session, services.keyring, username or "", secret=None,
                           method="password", protocol=protocol, ip=ip)
        ban = defender.count_failure(session, services.settings, login.ip, login.subject)
        recent = defender.recent_failures(session, login.ip, login.subject, seconds=60)
        detail = "connection ended before authentication"
        if recent <= UNAUTHENTICATED_ENDS_AUDITED_PER_MINUTE:
            _audit_login(session, services.keyring, login, "login_failed", "failed", detail)
        elif recent == UNAUTHENTICATED_ENDS_AUDITED_PER_MINUTE + 1:
            _audit_login(session, services.keyring, login, "login_failed", "failed",
                         f"{detail}; more from this address for this name within 60 s are counted, "
                         "not recorded")
        if ban:
            audit.record(session, services.keyring, audit.Event(
                action="lockout", protocol=login.door.audit_protocol, status="ok", ip=ip, detail=ban))


def prune_login_state(session: Session, settings: Settings) -> int:
    """Delete throttle rows, defender failures, bans and ended portal sessions that can no longer
    matter (a periodic job)."""
    return lockout.prune(session, settings) + defender.prune(session, settings) + web_sessions.prune(session)


def _effective_method(method: str, protocol: str, secret: str | bytes) -> str:
    door = doors.door(protocol)
    if not door.has_user_login or method not in METHODS:
        raise ValueError(f"unknown door or method: {protocol!r}, {method!r}")
    if method not in door.methods:
        raise ValueError(f"{method} does not log in on {protocol}")
    if "app_password" in door.methods and app_passwords.looks_like_app_password(secret):
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
        login = replace(login, app_password=app_passwords.find_app_password(session, user.id, secret))
    elif method == "publickey":
        login = replace(login, ssh_key_id=ssh_keys.authorized_key_id(session, user.id, None, bytes(secret)))
    return login


def _with_user(session: Session, keyring: Keyring, login: _Login, user: User) -> _Login:
    keys = keyring.account(session, user.account_id)
    policy = session.get(PasswordPolicy, user.account_id)
    secret = totp.open_secret(keys, user.totp_secret_sealed) if user.totp_secret_sealed else None
    return replace(
        login, user_id=user.id, account_id=user.account_id, role=user.role,
        display=accounts.user_name(session, keyring, user), password_hash=user.password_hash,
        allowed=is_address_allowed(session, user.account_id, user.id, login.ip),
        mfa=mfa_state(policy, user), keys=keys, totp_secret=secret)


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


# -- refusals before any secret is checked -----------------------------------------------------

def _raise_if_banned(services: Services, ip: str | None, protocol: str) -> None:
    if ip is None:
        return
    with services.db.session() as session:
        banned = defender.banned_until(session, ip) is not None
        if banned:
            audit.record(session, services.keyring, audit.Event(
                action="login_failed", protocol=doors.door(protocol).audit_protocol, status="refused", ip=ip,
                detail="address banned"))
    if banned:
        raise Banned()


def _refuse_at_gate(services: Services, login: _Login, secret) -> None:
    """Allow-list and un-enrolled MFA refusals: audited, not counted against the name."""
    if not login.allowed:
        reason, for_defender = "address not in allow-list", True
    elif login.mfa == MFA_UNENROLLED and not login.door.lets_in_to_enrol:
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
                    count_for_defender: bool = True, lockout_detail: str | None = None) -> None:
    """Audit one failed attempt (and the freeze or ban it starts), feeding the defender."""
    # The defender's per-address lock is taken before any audit chain head, in every path.
    ban = (defender.count_failure(session, services.settings, login.ip, login.subject)
           if count_for_defender else None)
    _audit_login(session, services.keyring, login, "login_failed", status, reason)
    if lockout_detail:
        _audit_login(session, services.keyring, login, "lockout", "ok", lockout_detail)
    if ban:
        audit.record(session, services.keyring, audit.Event(
            action="lockout", protocol=login.door.audit_protocol, status="ok", ip=login.ip, detail=ban))


def _reserve_or_refuse(services: Services, login: _Login, secret) -> Reservation:
    with services.db.session() as session:
        reservation = lockout.reserve(session, services.settings, login.subject)
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
    if login.door.app_passwords_replace_password and login.mfa == MFA_ENROLLED:
        # With MFA on, this door takes app passwords only; the account password is a wrong one.
        passwords.burn_password_work(secret)
        return _Verdict(False, f"account password refused on {login.protocol} (mfa required)")
    if passwords.verify_password(login.password_hash, secret):
        return _Verdict(True, "password")
    return _Verdict(False, "wrong password")


def _check_app_password(login: _Login, token: str) -> _Verdict:
    passwords.burn_password_work(token)
    found = login.app_password
    if found is None or login.user_id is None or not app_passwords.token_matches(login.service, found, token):
        return _Verdict(False, "wrong app password")
    return _Verdict(True, f"app password {found.public_id}")


def _check_code(login: _Login, code: str) -> _Verdict:
    code = (code or "").strip()
    if totp.looks_like_code(code):
        step = totp.matching_step(login.totp_secret, code) if login.totp_secret else None
        return _Verdict(step is not None, "totp" if step is not None else "wrong code", step=step)
    if login.door.accepts_recovery_codes and login.user_id is not None:
        return _Verdict(True, "recovery code", recovery_code=code)
    return _Verdict(False, "wrong code")


# -- settling the outcome ------------------------------------------------------------------

def _settle(services: Services, login: _Login, reservation: Reservation, verdict: _Verdict) -> AuthResult:
    first_factor = verdict.step is None and verdict.recovery_code is None
    needs_totp = first_factor and login.mfa == MFA_ENROLLED and login.door.asks_for_code
    froze = False
    with services.db.session() as session:
        if verdict.ok:
            verdict = _claim_code(session, login, verdict)
        if not verdict.ok:
            froze = _confirm_failure(session, services, login, reservation, verdict.detail)
        elif needs_totp:
            lockout.uncount(session, services.settings, login.subject, reservation)
        else:
            _record_success(session, services.keyring, login, _success_detail(login, verdict))
    if froze and login.user_id is not None:
        notifications.lockout(services, login.account_id, login.user_id)  # once: only this attempt froze it
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
        app_passwords.mark_used(session, login.app_password.id)
    return verdict


def _confirm_failure(session: Session, services: Services, login: _Login,
                     reservation: Reservation, detail: str) -> bool:
    """Record a failed attempt; True if it froze the name."""
    frozen = lockout.confirm_failure(session, services.settings, login.subject, reservation)
    _record_failure(session, services, login, "failed", detail, lockout_detail=frozen)
    return frozen is not None


def _finish_key_login(services: Services, login: _Login) -> AuthResult:
    if login.ssh_key_id is None:
        raise AuthFailed()  # a refused key offer: not counted, not audited (one event at the end)
    _refuse_at_gate(services, login, None)
    with services.db.session() as session:
        locked = lockout.is_locked(session, login.subject)
        if locked:
            # A valid key is no guess: the refusal is audited but feeds no counter.
            _audit_login(session, services.keyring, login, "login_failed", "refused", "locked out")
        else:
            ssh_keys.mark_used(session, login.ssh_key_id)
        if not locked and login.mfa != MFA_ENROLLED:
            _record_success(session, services.keyring, login, "publickey")
    if locked:
        raise LockedOut()
    return _result(login, needs_totp=login.mfa == MFA_ENROLLED)


def _record_success(session: Session, keyring: Keyring, login: _Login, detail: str) -> None:
    lockout.clear(session, login.subject)
    session.execute(update(User).where(User.id == login.user_id).values(last_login_at=func.now()))
    _audit_login(session, keyring, login, "login", "ok", detail)


def _success_detail(login: _Login, verdict: _Verdict) -> str:
    if verdict.step is not None or verdict.recovery_code is not None:
        return f"{login.method} + {verdict.detail}"
    if login.mfa == MFA_UNENROLLED:
        return f"{verdict.detail}; mfa enrolment required"
    return verdict.detail


def _result(login: _Login, *, needs_totp: bool) -> AuthResult:
    return AuthResult(
        user_id=login.user_id, account_id=login.account_id, username=login.display,
        role=login.role, protocol=login.protocol, ip=login.ip, method=login.method,
        needs_totp=needs_totp, must_enrol=login.mfa == MFA_UNENROLLED and login.door.lets_in_to_enrol,
        issued_at=time.time())


def _audit_login(session: Session, keyring: Keyring, login: _Login, action: str, status: str,
                 detail: str) -> None:
    # A name that matches no user is never recorded: people type passwords into name fields.
    audit.record(session, keyring, audit.Event(
        action=action, protocol=login.door.audit_protocol, status=status, account_id=login.account_id,
        user_id=login.user_id, username=login.display, ip=login.ip, detail=detail))


def _as_text(secret) -> str:
    return secret if isinstance(secret, str) else ""
