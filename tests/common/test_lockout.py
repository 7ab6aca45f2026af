"""The per-name lockout on a real Postgres: across processes and doors, under concurrency, for
unknown names, with a sliding window; and what does not count."""
from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from common import accounts, auth, passwords
from common.errors import AuthFailed, LockedOut
from common.models import Account, AuditEvent, LoginThrottle, User
from common.services import Services
from tests.factories import (
    add_key, allow, enrol, login, new_ed25519_line, random_ip, refused, require_mfa,
)
from tests.fixtures import STRONG_PASSWORD

REPO_ROOT = Path(__file__).resolve().parents[2]
SHORT_LOCK = 3  # seconds: long enough to observe the freeze, short enough to wait out

# One wrong login in a process of its own, started at an agreed moment so the three overlap.
CHILD = """
import sys, time
from common import auth
from common.config import settings_from_environment
from common.errors import AuthFailed
from common.services import Services
services = Services(settings_from_environment())
start, username, protocol, ip = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
time.sleep(max(0.0, start - time.time()))
try:
    auth.authenticate(services, username, "wrong-password", method="password", protocol=protocol, ip=ip)
    print("in")
except AuthFailed as exc:
    print(type(exc).__name__)
finally:
    services.close()
"""


@pytest.fixture
def short_lock(settings, migrated):
    svc = Services(dataclasses.replace(settings, lockout_seconds=SHORT_LOCK))
    yield svc
    svc.close()


def details(services, account_id, after=0) -> list[str]:
    with services.db.session() as session:
        return list(session.scalars(select(AuditEvent.detail).where(
            AuditEvent.account_id == account_id, AuditEvent.seq > after,
            AuditEvent.action.in_(("login_failed", "lockout", "login"))).order_by(AuditEvent.seq)))


def failures_of(services, username) -> int:
    with services.db.session() as session:
        subject = accounts.username_index(services.keyring.service(session), username)
        row = session.get(LoginThrottle, subject)
        return len(row.failures) if row else 0


def unlock(services, user_id):
    with services.db.session() as session:
        auth.unlock_user(session, services.keyring, session.get(User, user_id))


def wrong(services, username, **kwargs):
    return refused(lambda: login(services, username, "wrong-password", **kwargs))


# -- across processes and doors ----------------------------------------------------------------

def test_three_processes_on_three_doors_lock_the_name(short_lock, test_env, account, make_user):
    user_id, username = make_user(account)
    env = {**{k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")}, **test_env,
           "LOCKOUT_SECONDS": str(SHORT_LOCK), "PYTHONPATH": str(REPO_ROOT)}
    start = time.time() + 2.5  # after every child has imported and connected
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(start), username, door, random_ip()],
                                 cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
                for door in ("web", "ftps", "sftp")]
    outputs = sorted(child.communicate(timeout=60)[0].strip() for child in children)
    assert outputs == ["AuthFailed"] * 3
    with pytest.raises(LockedOut) as caught:
        login(short_lock, username, STRONG_PASSWORD)
    assert (caught.value.message, caught.value.code) == (AuthFailed.default_message, "auth_failed")
    found = details(short_lock, account.id)
    assert found.count("wrong password") == 3 and found[-1] == "locked out"
    assert sum(d.startswith("user name frozen") for d in found) == 1
    time.sleep(SHORT_LOCK + 0.2)
    assert login(short_lock, username, STRONG_PASSWORD).user_id == user_id


def test_unlock_lifts_the_freeze_and_clears_the_count(services, account, make_user):
    user_id, username = make_user(account)
    for _ in range(services.settings.lockout_threshold):
        wrong(services, username)
    with pytest.raises(LockedOut):
        login(services, username, STRONG_PASSWORD)
    unlock(services, user_id)
    assert failures_of(services, username) == 0
    assert login(services, username, STRONG_PASSWORD).user_id == user_id


def test_attempts_during_a_lock_do_not_extend_it(short_lock, account, make_user):
    user_id, username = make_user(account)
    for _ in range(3):
        wrong(short_lock, username)
    locked_at = time.time()
    time.sleep(SHORT_LOCK - 1.5)
    for _ in range(3):
        with pytest.raises(LockedOut):
            login(short_lock, username, "wrong-password")
    time.sleep(max(0.0, locked_at + SHORT_LOCK + 0.2 - time.time()))
    assert login(short_lock, username, STRONG_PASSWORD).user_id == user_id


# -- concurrency ------------------------------------------------------------------------------

def test_fifty_concurrent_guesses_evaluate_at_most_the_threshold(services, account, make_user):
    _, username = make_user(account)
    start = threading.Barrier(50)
    outcomes: list[str] = []

    def guess():
        start.wait()
        try:
            login(services, username, "wrong-password")
        except AuthFailed as exc:
            outcomes.append(type(exc).__name__)

    work = passwords.hashing_work_done()
    threads = [threading.Thread(target=guess) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    threshold = services.settings.lockout_threshold
    assert sorted(outcomes) == sorted(["AuthFailed"] * threshold + ["LockedOut"] * (50 - threshold))
    found = details(services, account.id)
    assert found.count("wrong password") == threshold  # real hashes evaluated
    assert found.count("locked out") == 50 - threshold
    # Every reply cost one hash all the same: the locked ones burnt a dummy.
    assert passwords.hashing_work_done() - work == 50


# -- unknown names ---------------------------------------------------------------------------

def test_unknown_name_is_frozen_the_same_way_with_the_same_work(services, account, make_user):
    _, known = make_user(account)
    unknown = "ghost-" + secrets.token_hex(4)
    replies = {}
    for name in (known, unknown):
        work = passwords.hashing_work_done()
        seen = []
        for _ in range(services.settings.lockout_threshold + 2):
            with pytest.raises(AuthFailed) as caught:
                login(services, name, "wrong-password")
            seen.append((type(caught.value).__name__, caught.value.message))
        replies[name] = (seen, passwords.hashing_work_done() - work)
    assert replies[known] == replies[unknown]
    assert replies[unknown][1] == services.settings.lockout_threshold + 2
    assert auth.is_locked_out(services, unknown) and auth.is_locked_out(services, unknown.upper())


def test_unknown_name_lock_is_audited_in_the_service_chain(services):
    ip, name = random_ip(), "ghost-" + secrets.token_hex(4)
    for _ in range(services.settings.lockout_threshold + 1):
        with pytest.raises(AuthFailed):
            login(services, name, "x", ip=ip)
    with services.db.session() as session:
        events = session.execute(select(AuditEvent.action, AuditEvent.detail).where(
            AuditEvent.account_id.is_(None), AuditEvent.ip == ip).order_by(AuditEvent.seq)).all()
    assert [a for a, _ in events] == ["login_failed"] * 3 + ["lockout", "login_failed"]
    assert events[-1].detail == "locked out"


# -- the sliding window ------------------------------------------------------------------------

def test_old_failures_leave_the_window(short_lock, account, make_user):
    _, username = make_user(account)
    for _ in range(2):
        wrong(short_lock, username)
    time.sleep(SHORT_LOCK + 0.2)
    for _ in range(2):
        wrong(short_lock, username)
    assert not auth.is_locked_out(short_lock, username)
    wrong(short_lock, username)
    assert auth.is_locked_out(short_lock, username)


def test_success_clears_the_count(services, account, make_user):
    _, username = make_user(account)
    for _ in range(2):
        wrong(services, username)
    login(services, username, STRONG_PASSWORD)
    for _ in range(2):
        wrong(services, username)
    assert not auth.is_locked_out(services, username)
    assert failures_of(services, username) == 2


# -- what counts and what does not ------------------------------------------------------------

def test_wrong_codes_count_and_a_correct_password_does_not_reset_them(services, make_account, make_user):
    account = make_account("basic")
    user_id, username = make_user(account)
    require_mfa(services, account.id)
    otp = enrol(services, user_id)
    for _ in range(services.settings.lockout_threshold):
        pending = login(services, username, STRONG_PASSWORD, protocol="sftp")
        assert pending.needs_totp
        refused(lambda: auth.verify_totp(services, pending, "12345x"))
    with pytest.raises(LockedOut):
        login(services, username, STRONG_PASSWORD, protocol="sftp")
    unlock(services, user_id)
    pending = login(services, username, STRONG_PASSWORD, protocol="web")
    assert auth.verify_totp(services, pending, otp.now()).user_id == user_id


def test_a_pending_second_step_is_refused_once_locked(services, make_account, make_user):
    account = make_account("basic")
    user_id, username = make_user(account)
    require_mfa(services, account.id)
    otp = enrol(services, user_id)
    pending = login(services, username, STRONG_PASSWORD, protocol="web")
    for _ in range(services.settings.lockout_threshold):
        wrong(services, username)
    with pytest.raises(LockedOut):
        auth.verify_totp(services, pending, otp.now())


def test_key_probes_allow_list_and_unenrolled_refusals_do_not_count(services, make_account, make_user):
    account = make_account("t2")
    user_id, username = make_user(account)
    add_key(services, user_id, new_ed25519_line())
    stranger = auth.parse_public_key(new_ed25519_line()).blob
    allow(services, account.id, "192.0.2.0/24")
    for _ in range(services.settings.lockout_threshold + 1):
        assert not auth.is_authorized_key(services, username, "ssh-ed25519", stranger)
        refused(lambda: login(services, username, stranger, protocol="sftp", method="publickey", ip="192.0.2.1"))
        refused(lambda: login(services, username, STRONG_PASSWORD, ip="198.51.100.1"))
    require_mfa(services, account.id)
    for _ in range(services.settings.lockout_threshold + 1):
        refused(lambda: login(services, username, STRONG_PASSWORD, protocol="ftps", ip="192.0.2.1"))
    assert failures_of(services, username) == 0
    assert not auth.is_locked_out(services, username)


def test_a_valid_key_is_refused_while_locked(services, account, make_user):
    user_id, username = make_user(account)
    blob = add_key(services, user_id, new_ed25519_line())
    for _ in range(services.settings.lockout_threshold):
        wrong(services, username, protocol="ftps")
    with pytest.raises(LockedOut):
        login(services, username, blob, protocol="sftp", method="publickey")


def test_lock_state_is_shared_by_case_insensitive_names(services, account, make_user):
    _, username = make_user(account)
    for variant in (username.upper(), username.lower(), username.title()):
        wrong(services, variant)
    assert auth.is_locked_out(services, username)
    with services.db.session() as session:
        assert session.get(Account, account.id).audit_count > 0


def test_prune_drops_idle_state_but_keeps_live_locks(short_lock, account, make_user):
    _, idle = make_user(account)
    _, frozen = make_user(account)
    wrong(short_lock, idle)
    for _ in range(3):
        wrong(short_lock, frozen)
    time.sleep(2.2)
    with short_lock.db.session() as session:
        # Rows idle for two seconds count as stale here; live locks must survive regardless.
        auth.prune_login_state(session, dataclasses.replace(short_lock.settings, lockout_seconds=2))
    assert failures_of(short_lock, idle) == 0
    assert auth.is_locked_out(short_lock, frozen)
