"""common.auth on a real Postgres: doors, MFA, app passwords, keys, allow-lists, defender, audit."""
from __future__ import annotations

import dataclasses
import secrets
import time

import pyotp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import delete, select

from common import accounts, audit, auth, passwords
from common.auth import totp
from common.errors import (
    AlreadyExists, AuthFailed, Banned, InvalidInput, LockedOut, PolicyViolation, TierRequired,
)
from common.models import Account, AuditEvent, DefenderFailure, IpBan, LoginThrottle, User
from common.services import Services
from tests.fixtures import STRONG_PASSWORD
from tests.factories import add_key, allow, enrol, login, new_ed25519_line, random_ip, refused, require_mfa
from tests.factories import with_account, with_user

# Keys made with ssh-keygen, and the fingerprints `ssh-keygen -lf` printed for them.
OPENSSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICQxXx8SN+oxbVz/BvvWBGy6D8N0u2Svl5SeJZPbx2ha me@host"
ECDSA_KEY = ("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBCAKtyJyZm6x+ZwU"
             "bYEDf15O3PpPUdzPx7ouUbAVrqM+BigXXpF9XVmsiNfeazLXD6smhKE30u8MdT7U8d/iqV0= me@host")
ECDSA_FINGERPRINT = "SHA256:68wIhDfEyoYLpPoLgkDQ+BBbUezBgR3SAR9McL0sBRo"
OPENSSH_FINGERPRINT = "SHA256:TPtxXN3ynvGZZw+cpythNpyk2yMeEiYxCRQJM/swCWw"


# -- helpers ---------------------------------------------------------------------------------


def chain_count(services, account_id) -> int:
    with services.db.session() as session:
        return session.get(Account, account_id).audit_count


def events_after(services, account_id, seq) -> list[AuditEvent]:
    with services.db.session() as session:
        return list(session.scalars(select(AuditEvent).where(
            AuditEvent.account_id == account_id, AuditEvent.seq > seq).order_by(AuditEvent.seq)))


def service_events(services, ip) -> list[AuditEvent]:
    with services.db.session() as session:
        return list(session.scalars(select(AuditEvent).where(
            AuditEvent.account_id.is_(None), AuditEvent.ip == ip).order_by(AuditEvent.seq)))


def app_password(services, user_id, label="backup job") -> str:
    return with_user(services, user_id,
                     lambda s, u: auth.create_app_password(s, services.keyring, u, label))


# -- passwords on every door ---------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["web", "ftps", "sftp"])
def test_correct_password_logs_in_and_is_audited_once(services, account, make_user, protocol):
    user_id, username = make_user(account)
    before = chain_count(services, account.id)
    result = login(services, username.upper(), STRONG_PASSWORD, protocol=protocol, ip="::ffff:192.0.2.7")
    assert (result.user_id, result.account_id, result.username) == (user_id, account.id, username)
    assert (result.role, result.protocol, result.ip) == ("user", protocol, "192.0.2.7")
    assert not result.needs_totp and not result.must_enrol
    [event] = events_after(services, account.id, before)
    assert (event.action, event.status, event.protocol, event.ip, event.user_id) == (
        "login", "ok", protocol, "192.0.2.7", user_id)


def test_wrong_password_is_one_failed_event_with_reason(services, account, make_user):
    user_id, username = make_user(account)
    before = chain_count(services, account.id)
    refused(lambda: login(services, username, "not-the-password", protocol="sftp", ip="192.0.2.9"))
    [event] = events_after(services, account.id, before)
    assert (event.action, event.status, event.protocol, event.ip, event.detail) == (
        "login_failed", "failed", "sftp", "192.0.2.9", "wrong password")
    assert event.user_id == user_id


def test_unknown_name_gets_the_same_reply_and_hashing_work(services, account, make_user):
    _, username = make_user(account)
    ip = random_ip()
    work = passwords.hashing_work_done()
    known = refused(lambda: login(services, username, "wrong-password", ip=ip))
    known_work = passwords.hashing_work_done() - work
    work = passwords.hashing_work_done()
    unknown = refused(lambda: login(services, "nobody-" + secrets.token_hex(4), "wrong-password", ip=ip))
    assert passwords.hashing_work_done() - work == known_work == 1
    assert (type(known), str(known)) == (type(unknown), str(unknown))
    [event] = service_events(services, ip)
    assert (event.action, event.status, event.user_id, event.username_sealed) == (
        "login_failed", "failed", None, None)


def test_malformed_and_disabled_names_are_plain_failures(services, account, make_user):
    user_id, username = make_user(account)
    with_user(services, user_id, lambda s, u: setattr(u, "status", "disabled"))
    refused(lambda: login(services, username, STRONG_PASSWORD))
    refused(lambda: login(services, "bad name/with slash" * 10, STRONG_PASSWORD))
    refused(lambda: login(services, "", STRONG_PASSWORD))


# -- IP allow-lists ----------------------------------------------------------------------------

ALLOW_LIST_CASES = [
    # (account rules, user rules, client address, allowed)
    (["192.0.2.0/24"], [], "192.0.2.50", True),
    (["192.0.2.0/24"], [], "198.51.100.1", False),
    ([], ["198.51.100.7"], "198.51.100.7", True),
    ([], ["198.51.100.7"], "198.51.100.8", False),
    (["198.51.100.0/24"], ["198.51.100.7/32"], "198.51.100.7", True),
    (["198.51.100.0/24"], ["198.51.100.7/32"], "198.51.100.9", False),  # account ok, user not
    (["203.0.113.0/24"], ["198.51.100.7/32"], "198.51.100.7", False),   # user ok, account not
    (["192.0.2.0/24"], [], "::ffff:192.0.2.50", True),
    (["::ffff:192.0.2.0/120"], [], "192.0.2.50", True),
    (["2001:db8::/32"], [], "2001:db8::5", True),
    (["2001:db8::/32"], [], "192.0.2.50", False),
]


@pytest.mark.parametrize("account_rules,user_rules,ip,allowed", ALLOW_LIST_CASES)
def test_allow_list_matrix(services, make_account, make_user, account_rules, user_rules, ip, allowed):
    account = make_account("t2")
    user_id, username = make_user(account)
    for cidr in account_rules:
        allow(services, account.id, cidr)
    for cidr in user_rules:
        allow(services, account.id, cidr, user_id)
    if allowed:
        assert login(services, username, STRONG_PASSWORD, protocol="ftps", ip=ip).user_id == user_id
        return
    before, work = chain_count(services, account.id), passwords.hashing_work_done()
    refused(lambda: login(services, username, STRONG_PASSWORD, protocol="ftps", ip=ip))
    assert passwords.hashing_work_done() - work == 1
    [event] = events_after(services, account.id, before)
    assert (event.action, event.status, event.detail) == ("login_failed", "refused", "address not in allow-list")


def test_other_users_rules_do_not_apply(services, make_account, make_user):
    account = make_account("t5")
    other_id, _ = make_user(account)
    _, username = make_user(account)
    allow(services, account.id, "192.0.2.1", other_id)
    assert login(services, username, STRONG_PASSWORD, ip="203.0.113.4")


def test_allow_list_refusal_is_not_counted_but_feeds_the_defender(services, make_account, make_user):
    account = make_account("t10")
    _, username = make_user(account)
    allow(services, account.id, "192.0.2.0/24")
    outside = random_ip()
    for _ in range(services.settings.lockout_threshold + 2):
        refused(lambda: login(services, username, STRONG_PASSWORD, ip=outside))
    assert not auth.is_locked_out(services, username)
    assert login(services, username, STRONG_PASSWORD, ip="192.0.2.1")
    with services.db.session() as session:
        assert session.scalar(select(DefenderFailure.id).where(DefenderFailure.ip == outside).limit(1))


def test_allow_list_is_enterprise_only(services, make_account, make_user):
    account = make_account("basic")
    user_id, _ = make_user(account)
    for user in (None, user_id):
        with pytest.raises(TierRequired, match="enterprise plans"):
            allow(services, account.id, "192.0.2.0/24", user)


@pytest.mark.parametrize("cidr,message", [
    ("not-an-address", "CIDR range"), ("192.0.2.1/24", "did you mean 192.0.2.0/24"), ("", "CIDR")])
def test_bad_ranges_are_refused_clearly(services, make_account, cidr, message):
    account = make_account("t2")
    with pytest.raises(InvalidInput, match=message):
        allow(services, account.id, cidr)


def test_duplicate_rule_is_refused(services, make_account):
    account = make_account("t2")
    allow(services, account.id, "192.0.2.0/24")
    with pytest.raises(AlreadyExists):
        allow(services, account.id, "192.0.2.0/24")


# -- MFA across the doors ---------------------------------------------------------------------

@dataclasses.dataclass
class MfaUser:
    user_id: int
    username: str
    otp: pyotp.TOTP | None
    token: str
    key_blob: bytes


@pytest.fixture
def mfa_user(services, make_account, make_user):
    def make(*, require: bool, exempt: bool = False, enrolled: bool = False, tier: str = "basic") -> MfaUser:
        account = make_account(tier)
        user_id, username = make_user(account)
        require_mfa(services, account.id, require)
        if exempt:
            with_user(services, user_id, lambda s, u: auth.set_mfa_exempt(s, services.keyring, u, True))
        otp = enrol(services, user_id) if enrolled else None
        blob = add_key(services, user_id, new_ed25519_line())
        return MfaUser(user_id, username, otp, app_password(services, user_id), blob)
    return make


def first_factor(services, user: MfaUser, protocol: str, method: str):
    secret = {"password": STRONG_PASSWORD, "app_password": user.token, "publickey": user.key_blob}[method]
    return login(services, user.username, secret, protocol=protocol, method=method)


MFA_MATRIX = [
    # (door, method, require_mfa, exempt, enrolled, expected)
    ("web", "password", False, False, False, "in"),
    ("web", "password", False, False, True, "code"),      # enrolled on their own: asked all the same
    ("web", "password", False, True, True, "in"),         # an exempt service user is never asked
    ("web", "password", True, False, True, "code"),
    ("web", "password", True, False, False, "enrol"),
    ("web", "password", True, True, False, "in"),
    ("sftp", "password", False, False, False, "in"),
    ("sftp", "password", True, False, True, "code"),
    ("sftp", "password", True, False, False, "refused"),
    ("sftp", "password", True, True, False, "in"),
    ("sftp", "publickey", False, False, False, "in"),
    ("sftp", "publickey", True, False, True, "code"),
    ("sftp", "publickey", True, False, False, "refused"),
    ("sftp", "password", False, False, True, "code"),
    ("sftp", "publickey", False, False, True, "code"),
    ("ftps", "password", False, False, False, "in"),
    ("ftps", "app_password", False, False, False, "in"),
    ("ftps", "password", True, False, True, "refused"),   # the account password is a wrong one
    ("ftps", "app_password", True, False, True, "in"),
    ("ftps", "app_password", True, False, False, "refused"),
    ("ftps", "password", True, True, False, "in"),
    ("ftps", "password", False, False, True, "refused"),
    ("ftps", "app_password", False, False, True, "in"),
]


@pytest.mark.parametrize("door,method,require,exempt,enrolled,expected", MFA_MATRIX)
def test_mfa_matrix(services, mfa_user, door, method, require, exempt, enrolled, expected):
    user = mfa_user(require=require, exempt=exempt, enrolled=enrolled)
    if expected == "refused":
        refused(lambda: first_factor(services, user, door, method))
        return
    result = first_factor(services, user, door, method)
    assert result.user_id == user.user_id
    assert result.needs_totp == (expected == "code")
    assert result.must_enrol == (expected == "enrol")
    if expected == "code":
        done = auth.verify_totp(services, result, user.otp.now())
        assert (done.user_id, done.needs_totp, done.protocol) == (user.user_id, False, door)


def test_second_factor_is_audited_once_and_first_factor_not_as_login(services, mfa_user):
    user = mfa_user(require=True, enrolled=True)
    account_id = with_user(services, user.user_id, lambda s, u: u.account_id)
    before = chain_count(services, account_id)
    pending = first_factor(services, user, "sftp", "password")
    assert events_after(services, account_id, before) == []
    auth.verify_totp(services, pending, user.otp.now())
    [event] = events_after(services, account_id, before)
    assert (event.action, event.status, event.protocol, event.detail) == ("login", "ok", "sftp", "password + totp")


def test_unenrolled_refusal_is_audited_and_not_counted(services, mfa_user):
    user = mfa_user(require=True)
    account_id = with_user(services, user.user_id, lambda s, u: u.account_id)
    before, work = chain_count(services, account_id), passwords.hashing_work_done()
    for _ in range(services.settings.lockout_threshold + 1):
        refused(lambda: first_factor(services, user, "ftps", "password"))
    assert passwords.hashing_work_done() - work == services.settings.lockout_threshold + 1
    events = events_after(services, account_id, before)
    assert {(e.action, e.status, e.detail) for e in events} == {
        ("login_failed", "refused", "mfa required but not enrolled")}
    assert not auth.is_locked_out(services, user.username)


def test_totp_code_cannot_be_replayed(services, mfa_user):
    user = mfa_user(require=True, enrolled=True)
    code = user.otp.now()
    auth.verify_totp(services, first_factor(services, user, "web", "password"), code)
    refused(lambda: auth.verify_totp(services, first_factor(services, user, "sftp", "password"), code))
    # An earlier step than the last one used is a replay too.
    earlier = user.otp.at(time.time() - 30)
    refused(lambda: auth.verify_totp(services, first_factor(services, user, "web", "password"), earlier))
    later = user.otp.at(time.time() + 30)
    assert auth.verify_totp(services, first_factor(services, user, "web", "password"), later)


def test_wrong_code_is_refused_and_counted(services, mfa_user):
    user = mfa_user(require=True, enrolled=True)
    pending = first_factor(services, user, "web", "password")
    wrong = f"{(int(user.otp.now()) + 1) % 1_000_000:06d}"
    refused(lambda: auth.verify_totp(services, pending, wrong))
    with services.db.session() as session:
        subject = accounts.username_index(services.keyring.service(session), user.username)
        assert len(session.get(LoginThrottle, subject).failures) == 1


def test_recovery_codes_work_once_on_the_web_only(services, mfa_user):
    user = mfa_user(require=True, enrolled=True)
    codes = with_user(services, user.user_id,
                      lambda s, u: totp.generate_recovery_codes(s, services.keyring, u))
    assert len(set(codes)) == len(codes) == totp.RECOVERY_CODE_COUNT
    refused(lambda: auth.verify_totp(services, first_factor(services, user, "sftp", "password"), codes[0]))
    done = auth.verify_totp(services, first_factor(services, user, "web", "password"), codes[0].upper())
    assert done.user_id == user.user_id
    refused(lambda: auth.verify_totp(services, first_factor(services, user, "web", "password"), codes[0]))
    assert auth.verify_totp(services, first_factor(services, user, "web", "password"), codes[1])


def test_second_factor_must_follow_in_time(services, mfa_user):
    user = mfa_user(require=True, enrolled=True)
    pending = first_factor(services, user, "web", "password")
    stale = dataclasses.replace(pending, issued_at=pending.issued_at - auth.SECOND_FACTOR_SECONDS - 1)
    refused(lambda: auth.verify_totp(services, stale, user.otp.now()))


def test_web_enrolment_needs_a_confirming_code(services, make_account, make_user):
    account = make_account("basic")
    user_id, username = make_user(account)
    require_mfa(services, account.id)
    uri = with_user(services, user_id, lambda s, u: totp.start_totp_enrolment(s, services.keyring, u))
    otp = pyotp.parse_uri(uri)
    assert login(services, username, STRONG_PASSWORD).must_enrol
    wrong = f"{(int(otp.now()) + 500_000) % 1_000_000:06d}"
    assert not with_user(services, user_id,
                         lambda s, u: totp.confirm_totp_enrolment(s, services.keyring, u, wrong))
    assert with_user(services, user_id, lambda s, u: totp.confirm_totp_enrolment(s, services.keyring, u, otp.now()))
    pending = login(services, username, STRONG_PASSWORD)
    assert pending.needs_totp
    refused(lambda: auth.verify_totp(services, pending, otp.now()))  # the confirming code is spent
    assert "issuer=Sealdrop" in uri


def test_exemption_is_audited_and_no_lockout_exemption(services, mfa_user):
    user = mfa_user(require=True, exempt=True)
    account_id = with_user(services, user.user_id, lambda s, u: u.account_id)
    with services.db.session() as session:
        details = session.scalars(select(AuditEvent.detail).where(
            AuditEvent.account_id == account_id, AuditEvent.action == "admin_change")).all()
    assert f"user {user.user_id} exempt from mfa" in details
    for _ in range(services.settings.lockout_threshold):
        refused(lambda: first_factor(services, dataclasses.replace(user, token="x"), "ftps", "app_password"))
    with pytest.raises(LockedOut):
        first_factor(services, user, "web", "password")


# -- FTPS app passwords ----------------------------------------------------------------------

def test_app_password_token_shape(services, account, make_user):
    user_id, _ = make_user(account)
    token = app_password(services, user_id)
    prefix, public_id, secret = token.split("_", 2)
    assert prefix == "sdap" and len(public_id) == 16 and len(secret) >= 43


def test_app_password_is_ftps_only_and_checked_with_the_same_work(services, account, make_user):
    user_id, username = make_user(account)
    token = app_password(services, user_id)
    work = passwords.hashing_work_done()
    assert login(services, username, token, protocol="ftps").user_id == user_id
    assert passwords.hashing_work_done() - work == 1
    refused(lambda: login(services, username, token, protocol="web"))
    refused(lambda: login(services, username, token, protocol="sftp"))
    with pytest.raises(ValueError):
        login(services, username, token, protocol="web", method="app_password")


def test_revoked_app_password_fails_and_others_keep_working(services, account, make_user):
    user_id, username = make_user(account)
    first, second = app_password(services, user_id, "one"), app_password(services, user_id, "two")
    public_id = first.split("_")[1]
    with_user(services, user_id, lambda s, u: auth.revoke_app_password(s, services.keyring, u, public_id))
    refused(lambda: login(services, username, first, protocol="ftps"))
    assert login(services, username, second, protocol="ftps").user_id == user_id
    listed = with_user(services, user_id, lambda s, u: auth.list_app_passwords(s, services.keyring, u))
    assert [(i.label, i.revoked_at is not None) for i in listed] == [("two", False), ("one", True)]


def test_app_password_belongs_to_its_user_only(services, account, make_user):
    owner_id, _ = make_user(account)
    _, other = make_user(account)
    token = app_password(services, owner_id)
    refused(lambda: login(services, other, token, protocol="ftps"))
    public_id, secret = token.split("_")[1], token.split("_", 2)[2]
    tampered = f"sdap_{public_id}_{secret[:-2]}xx"
    refused(lambda: login(services, other, tampered, protocol="ftps"))


# -- SSH public keys ---------------------------------------------------------------------------

def test_public_key_parsing_matches_openssh():
    key = auth.parse_public_key(OPENSSH_KEY + "\n")
    assert (key.key_type, key.fingerprint, key.comment) == ("ssh-ed25519", OPENSSH_FINGERPRINT, "me@host")
    key = auth.parse_public_key("# a comment line\n" + ECDSA_KEY)
    assert (key.key_type, key.fingerprint) == ("ecdsa-sha2-nistp256", ECDSA_FINGERPRINT)


@pytest.mark.parametrize("line", [
    "", "garbage", "ssh-ed25519 not!base64", "ssh-rsa " + OPENSSH_KEY.split()[1],
    OPENSSH_KEY + "\n" + OPENSSH_KEY,
])
def test_garbage_keys_are_refused(line):
    with pytest.raises(InvalidInput):
        auth.parse_public_key(line)


def test_short_rsa_keys_are_refused():
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    with pytest.raises(InvalidInput, match="2048"):
        auth.parse_public_key(line)


def test_key_probe_and_refused_offer_record_nothing(services, account, make_user):
    user_id, username = make_user(account)
    blob = add_key(services, user_id, new_ed25519_line())
    stranger = auth.parse_public_key(new_ed25519_line()).blob
    before = chain_count(services, account.id)
    assert auth.is_authorized_key(services, username, "ssh-ed25519", blob)
    assert not auth.is_authorized_key(services, username, "ssh-ed25519", stranger)
    assert not auth.is_authorized_key(services, username, "ssh-rsa", blob)
    assert not auth.is_authorized_key(services, "nobody-" + secrets.token_hex(3), "ssh-ed25519", blob)
    for _ in range(services.settings.lockout_threshold + 1):
        refused(lambda: login(services, username, stranger, protocol="sftp", method="publickey"))
    assert events_after(services, account.id, before) == []
    assert not auth.is_locked_out(services, username)
    assert login(services, username, blob, protocol="sftp", method="publickey").user_id == user_id


def test_duplicate_key_is_refused(services, account, make_user):
    user_id, _ = make_user(account)
    line = new_ed25519_line()
    add_key(services, user_id, line)
    with pytest.raises(AlreadyExists):
        add_key(services, user_id, line)


def test_unauthenticated_end_is_one_event(services, account, make_user):
    user_id, username = make_user(account)
    before = chain_count(services, account.id)
    auth.record_unauthenticated_end(services, username, "sftp", "192.0.2.44")
    [event] = events_after(services, account.id, before)
    assert (event.action, event.status, event.protocol, event.ip, event.user_id) == (
        "login_failed", "failed", "sftp", "192.0.2.44", user_id)
    ip = random_ip()
    auth.record_unauthenticated_end(services, None, "sftp", ip)
    assert [e.action for e in service_events(services, ip)] == ["login_failed"]


# -- the per-IP defender -------------------------------------------------------------------------

@pytest.fixture
def strict_defender(settings, migrated):
    svc = Services(dataclasses.replace(settings, defender_max_failures=4, defender_min_users=3,
                                       defender_window_seconds=600, defender_ban_seconds=600))
    yield svc
    svc.close()


def test_defender_bans_after_both_thresholds(strict_defender, account, make_user):
    names = [make_user(account)[1] for _ in range(2)] + ["ghost-" + secrets.token_hex(3)]
    ip = random_ip()
    for name in names:
        refused(lambda: login(strict_defender, name, "wrong-password", ip=ip))
    assert not auth.is_banned(strict_defender, ip)
    refused(lambda: login(strict_defender, names[0], "wrong-password", ip="::ffff:" + ip))
    assert auth.is_banned(strict_defender, ip) and auth.is_banned(strict_defender, "::ffff:" + ip)
    with pytest.raises(Banned):
        login(strict_defender, names[1], STRONG_PASSWORD, ip=ip)
    bans = [e for e in service_events(strict_defender, ip) if e.action == "lockout"]
    assert len(bans) == 1 and bans[0].detail.startswith("address banned")
    assert login(strict_defender, names[1], STRONG_PASSWORD, ip=random_ip())


def test_defender_counts_an_ipv6_client_by_its_64(strict_defender, account, make_user):
    names = [make_user(account)[1] for _ in range(3)] + ["ghost-" + secrets.token_hex(3)]
    prefix = f"2001:db8:{secrets.randbelow(0xffff):x}:{secrets.randbelow(0xffff):x}"
    addresses = [f"{prefix}:{secrets.randbelow(0xffff):x}::{n + 1}" for n in range(len(names))]
    for name, ip in zip(names, addresses):  # every guess from another address of one /64
        assert not auth.is_banned(strict_defender, ip)
        refused(lambda: login(strict_defender, name, "wrong-password", ip=ip))
    neighbour = f"{prefix}:ffff:ffff:ffff:fff0"
    assert auth.is_banned(strict_defender, neighbour)
    with pytest.raises(Banned):
        login(strict_defender, names[0], STRONG_PASSWORD, ip=neighbour)
    other_64 = f"2001:db8:{secrets.randbelow(0xffff):x}:{secrets.randbelow(0xffff):x}::1"
    assert not auth.is_banned(strict_defender, other_64)
    assert login(strict_defender, names[0], STRONG_PASSWORD, ip=other_64)


def test_address_groups():
    assert auth.address_group("203.0.113.9") == "203.0.113.9"
    assert auth.address_group("::ffff:203.0.113.9") == "203.0.113.9"
    assert auth.address_group("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert auth.address_group("[2001:db8:1:2::7%eth0]") == "2001:db8:1:2::/64"
    assert auth.address_group("::1") == "::/64"
    assert auth.address_group("not an address") is None


def test_defender_needs_enough_distinct_names(strict_defender, account, make_user):
    _, first = make_user(account)
    ip = random_ip()
    for name in [first, first, first, "ghost-" + secrets.token_hex(3), first]:
        with pytest.raises(AuthFailed):
            login(strict_defender, name, "wrong-password", ip=ip)
    assert not auth.is_banned(strict_defender, ip)


def test_loopback_is_not_exempt(strict_defender):
    # Any loopback address proves it; a fresh one keeps the ban away from concurrent tests.
    ip = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"
    try:
        for _ in range(4):
            refused(lambda: login(strict_defender, "ghost-" + secrets.token_hex(3), "x", ip=ip))
        assert auth.is_banned(strict_defender, ip)
    finally:
        with strict_defender.db.session() as session:
            session.execute(delete(IpBan).where(IpBan.ip == ip))


# -- password policy ------------------------------------------------------------------------------

def test_policy_rules_are_enterprise_only_and_mfa_is_for_all(services, make_account):
    basic = make_account("basic")
    with pytest.raises(TierRequired, match="enterprise plans"):
        with_account(services, basic.id, lambda s, a: auth.set_policy(s, services.keyring, a, upper=True))
    policy = with_account(services, basic.id,
                          lambda s, a: auth.set_policy(s, services.keyring, a, require_mfa=True))
    assert policy.require_mfa and not policy.require_upper


def test_policy_is_set_audited_and_applied(services, make_account, make_user):
    account = make_account("t2")
    before = chain_count(services, account.id)
    with_account(services, account.id, lambda s, a: auth.set_policy(
        s, services.keyring, a, min_length=30, upper=True, digit=True, symbol=True))
    [event] = events_after(services, account.id, before)
    assert event.action == "admin_change" and "min_length=30" in event.detail
    with pytest.raises(PolicyViolation, match="30 characters"):
        make_user(account)  # STRONG_PASSWORD has 23 characters


@pytest.mark.parametrize("length", [3, 7, 10_000])
def test_policy_length_bounds(services, make_account, length):
    account = make_account("t2")
    with pytest.raises(InvalidInput, match="between"):
        with_account(services, account.id,
                     lambda s, a: auth.set_policy(s, services.keyring, a, min_length=length))


# -- the audit chains stay whole --------------------------------------------------------------

def test_chains_verify_after_every_kind_of_outcome(services, mfa_user):
    user = mfa_user(require=True, enrolled=True, tier="t2")
    account_id = with_user(services, user.user_id, lambda s, u: u.account_id)
    refused(lambda: first_factor(services, user, "ftps", "password"))
    auth.verify_totp(services, first_factor(services, user, "web", "password"), user.otp.now())
    refused(lambda: login(services, "ghost-" + secrets.token_hex(3), "x"))
    with services.db.session() as session:
        assert audit.verify_chain(session, account_id).ok
        assert audit.verify_chain(session, None).ok


def test_a_completed_login_records_when_the_user_last_signed_in(services, account):
    with services.db.session() as session:
        assert session.get(User, account.admin_id).last_login_at is None
    login(services, account.admin_username, account.password, protocol="sftp")
    with services.db.session() as session:
        assert session.get(User, account.admin_id).last_login_at is not None
