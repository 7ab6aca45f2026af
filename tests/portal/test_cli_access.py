"""The access commands of the operator CLI, through Flask's CLI runner on a real Postgres."""
from __future__ import annotations

import pyotp
import pytest
from sqlalchemy import select

from common import auth
from common.errors import LockedOut
from common.models import IpRule, PasswordPolicy, User
from tests.factories import login, new_ed25519_line, random_ip, refused, require_mfa
from tests.fixtures import STRONG_PASSWORD, assert_one_line_error


@pytest.fixture(scope="module")
def cli_app(settings, migrated):
    from portal import create_app
    app = create_app(settings)
    yield app
    app.extensions["sealdrop"].close()


def run(app, *args, input=None):
    # `flask` (FlaskGroup) pushes an app context for every command; the test runner does not.
    with app.app_context():
        return app.test_cli_runner().invoke(args=[str(a) for a in args], input=input)




def lock(services, username):
    for _ in range(services.settings.lockout_threshold):
        refused(lambda: login(services, username, "wrong-password"))


# -- users unlock ----------------------------------------------------------------------------

def test_unlock(cli_app, services, account, make_user):
    user_id, username = make_user(account)
    lock(services, username)
    result = run(cli_app, "users", "unlock", account.name, username.upper())
    assert result.exit_code == 0, result.output
    assert login(services, username, STRONG_PASSWORD).user_id == user_id


def test_unlock_refuses_a_user_of_another_account(cli_app, services, make_account, make_user):
    mine, other = make_account(), make_account()
    _, username = make_user(other)
    lock(services, username)
    assert_one_line_error(run(cli_app, "users", "unlock", mine.name, username), "No such user")
    with pytest.raises(LockedOut):
        login(services, username, STRONG_PASSWORD)


def test_unknown_account_is_one_line(cli_app, make_user, account):
    _, username = make_user(account)
    assert_one_line_error(run(cli_app, "users", "unlock", "no-such-account-x1", username), "No such account")


# -- users add-key -----------------------------------------------------------------------------

def test_add_key(cli_app, services, account, make_user, tmp_path):
    _, username = make_user(account)
    line = new_ed25519_line("ops@example")
    (tmp_path / "id.pub").write_text(line + "\n")
    result = run(cli_app, "users", "add-key", account.name, username, tmp_path / "id.pub")
    key = auth.parse_public_key(line)
    assert result.exit_code == 0 and key.fingerprint in result.stdout
    assert auth.is_authorized_key(services, username, key.key_type, key.blob)
    assert login(services, username, key.blob, protocol="sftp", method="publickey")


def test_add_key_from_stdin(cli_app, services, account, make_user):
    _, username = make_user(account)
    line = new_ed25519_line()
    assert run(cli_app, "users", "add-key", account.name, username, "-", input=line).exit_code == 0
    key = auth.parse_public_key(line)
    assert auth.is_authorized_key(services, username, key.key_type, key.blob)


@pytest.mark.parametrize("content,fragment", [
    ("notakey\n", "OpenSSH public key"),
    ("ssh-ed25519 not a key\n", "could not be read"),
    ("ssh-ed25519 AAAA!!!!\n", "could not be read"),
    (b"\xff\xfe binary", "cannot read"),
])
def test_add_key_refuses_garbage(cli_app, account, make_user, tmp_path, content, fragment):
    _, username = make_user(account)
    path = tmp_path / "bad.pub"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_one_line_error(run(cli_app, "users", "add-key", account.name, username, path), fragment)


def test_add_key_missing_file(cli_app, account, make_user, tmp_path):
    _, username = make_user(account)
    assert_one_line_error(run(cli_app, "users", "add-key", account.name, username, tmp_path / "nope.pub"),
                          "cannot read")


# -- MFA and app passwords ---------------------------------------------------------------------

def test_mfa_enrol_prints_a_working_uri_once(cli_app, services, account, make_user):
    user_id, username = make_user(account)
    require_mfa(services, account.id)
    result = run(cli_app, "users", "mfa-enrol", account.name, username)
    assert result.exit_code == 0 and result.stdout.startswith("otpauth://totp/")
    otp = pyotp.parse_uri(result.stdout.strip())
    pending = login(services, username, STRONG_PASSWORD, protocol="sftp")
    assert pending.needs_totp
    assert auth.verify_totp(services, pending, otp.now()).user_id == user_id


def test_app_password_prints_a_working_token(cli_app, services, account, make_user):
    user_id, username = make_user(account)
    result = run(cli_app, "users", "app-password", account.name, username, "--label", "nightly sync")
    token = result.stdout.strip()
    assert result.exit_code == 0 and token.startswith(auth.APP_PASSWORD_PREFIX)
    assert login(services, username, token, protocol="ftps").user_id == user_id


def test_mfa_exempt_and_off(cli_app, services, account, make_user):
    user_id, username = make_user(account)
    assert run(cli_app, "users", "mfa-exempt", account.name, username).exit_code == 0
    assert _user(services, user_id).mfa_exempt
    assert run(cli_app, "users", "mfa-exempt", account.name, username, "--off").exit_code == 0
    assert not _user(services, user_id).mfa_exempt


def _user(services, user_id) -> User:
    with services.db.session() as session:
        return session.get(User, user_id)


# -- policy set ------------------------------------------------------------------------------

def test_policy_set_on_enterprise(cli_app, services, make_account):
    account = make_account("t5")
    result = run(cli_app, "policy", "set", account.name, "--min-length", 14, "--upper", "--symbol",
                 "--require-mfa")
    assert result.exit_code == 0, result.output
    with services.db.session() as session:
        policy = session.get(PasswordPolicy, account.id)
        assert (policy.min_length, policy.require_upper, policy.require_lower, policy.require_symbol,
                policy.require_mfa) == (14, True, False, True, True)
    assert run(cli_app, "policy", "set", account.name, "--no-upper").exit_code == 0
    with services.db.session() as session:
        assert not session.get(PasswordPolicy, account.id).require_upper


def test_policy_rules_refused_on_basic_but_mfa_allowed(cli_app, services, make_account):
    account = make_account("basic")
    assert_one_line_error(run(cli_app, "policy", "set", account.name, "--digit"), "enterprise plans")
    assert run(cli_app, "policy", "set", account.name, "--require-mfa").exit_code == 0
    with services.db.session() as session:
        policy = session.get(PasswordPolicy, account.id)
        assert policy.require_mfa and not policy.require_digit


def test_policy_bad_length_is_one_line(cli_app, make_account):
    account = make_account("t2")
    assert_one_line_error(run(cli_app, "policy", "set", account.name, "--min-length", 2), "between")


# -- ip allow ----------------------------------------------------------------------------------

def test_ip_allow_for_account_and_user(cli_app, services, make_account, make_user):
    account = make_account("t10")
    user_id, username = make_user(account)
    assert run(cli_app, "ip", "allow", account.name, "192.0.2.0/24").exit_code == 0
    assert run(cli_app, "ip", "allow", account.name, "--user", username, "192.0.2.9").exit_code == 0
    with services.db.session() as session:
        rules = session.execute(select(IpRule.user_id, IpRule.cidr).where(IpRule.account_id == account.id)).all()
    assert {(u, str(c)) for u, c in rules} == {(None, "192.0.2.0/24"), (user_id, "192.0.2.9/32")}
    assert login(services, username, STRONG_PASSWORD, ip="192.0.2.9")
    refused(lambda: login(services, username, STRONG_PASSWORD, ip="192.0.2.10"))
    refused(lambda: login(services, username, STRONG_PASSWORD, ip=random_ip()))


def test_ip_remove_undoes_allow(cli_app, services, make_account, make_user):
    account = make_account("t2")
    _, username = make_user(account)
    assert run(cli_app, "ip", "allow", account.name, "--user", username, "192.0.2.9").exit_code == 0
    refused(lambda: login(services, username, STRONG_PASSWORD, ip="198.51.100.7"))
    assert_one_line_error(run(cli_app, "ip", "remove", account.name, "192.0.2.9"), "not on this allow-list")
    assert run(cli_app, "ip", "remove", account.name, "--user", username, "192.0.2.9").exit_code == 0
    assert login(services, username, STRONG_PASSWORD, ip="198.51.100.7")  # an empty list allows all


@pytest.mark.parametrize("tier,cidr,fragment", [
    ("basic", "192.0.2.0/24", "enterprise plans"),
    ("t2", "192.0.2.1/24", "did you mean"),
    ("t2", "nonsense", "CIDR"),
])
def test_ip_allow_refusals_are_one_line(cli_app, make_account, tier, cidr, fragment):
    account = make_account(tier)
    assert_one_line_error(run(cli_app, "ip", "allow", account.name, cidr), fragment)


def test_ip_allow_for_a_user_of_another_account(cli_app, make_account, make_user):
    mine, other = make_account("t2"), make_account("t2")
    _, username = make_user(other)
    assert_one_line_error(run(cli_app, "ip", "allow", mine.name, "--user", username, "192.0.2.0/24"),
                          "No such user")
