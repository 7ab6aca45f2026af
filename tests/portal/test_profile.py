"""The profile: password, MFA, SSH keys, FTPS app passwords, sessions and connection details."""
from __future__ import annotations

import dataclasses
import ftplib
import html
import io
import re
import secrets
import time

import pyotp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import delete, func, select

from common import accounts, auth
from common.auth import totp
from common.errors import AuthFailed
from common.models import AppPassword, AuditEvent, DoorKey, RecoveryCode, SshKey, User
from common.passwords import verify_password
from portal import create_app
from tests.factories import login, new_ed25519_line, require_mfa, with_account, with_user
from tests.fixtures import STRONG_PASSWORD
from tests.portal.conftest import PortalClient
from tests.transfer.ftps_door import connect as ftps_connect, quit_quietly

NEW_PASSWORD = "Lantern-Orchid-Basalt-77"
SECRET_SHOWN = re.compile(r'id="totp-secret">([A-Z2-7 ]+)<')
TOKEN_SHOWN = re.compile(r'id="app-password">(sdap_[^<]+)<')
CODES_SHOWN = re.compile(r"<li>([a-z2-9]{5}-[a-z2-9]{5})</li>")

GET_PAGES = ["/profile/", "/profile/password", "/profile/mfa", "/profile/mfa/disable", "/profile/keys",
             "/profile/app-passwords", "/profile/connection"]
POST_ACTIONS = ["/profile/sessions/end-all", "/profile/password", "/profile/mfa/start", "/profile/mfa/confirm",
                "/profile/mfa/recovery", "/profile/mfa/disable", "/profile/keys", "/profile/app-passwords"]


def text_of(page) -> str:
    return page.get_data(as_text=True)


def new_client(app, account_or_name, password=STRONG_PASSWORD) -> PortalClient:
    client = app.test_client()
    username = getattr(account_or_name, "admin_username", account_or_name)
    assert client.sign_in(username, password).status_code == 302
    return client


def audit_details(services, account_id) -> list[str]:
    with services.db.session() as db:
        return list(db.scalars(select(AuditEvent.detail).where(AuditEvent.account_id == account_id)
                               .order_by(AuditEvent.seq)))


def user_row(services, user_id) -> User:
    with services.db.session() as db:
        row = db.get(User, user_id)
        db.expunge(row)
        return row


# -- signed out, CSRF ----------------------------------------------------------------------------

@pytest.mark.parametrize("url", GET_PAGES + ["/profile/keys/1/remove", "/profile/app-passwords/ab12/revoke"])
def test_every_page_wants_a_signed_in_user(client, url):
    response = client.get(url)
    assert response.status_code == 302 and response.headers["Location"].startswith("/signin")


@pytest.mark.parametrize("url", POST_ACTIONS)
def test_every_action_wants_a_signed_in_user(client, url):
    response = client.submit(url, {}, form_page="/signin")
    assert response.status_code == 302 and response.headers["Location"].startswith("/signin")


@pytest.mark.parametrize("url", POST_ACTIONS)
def test_every_action_wants_its_csrf_token(signed_in, services, url):
    before = user_row(services, signed_in.account.admin_id)
    response = signed_in.post(url, data={"current": STRONG_PASSWORD, "new": NEW_PASSWORD, "confirm": NEW_PASSWORD,
                                         "key": new_ed25519_line(), "label": "x", "code": "123456"})
    assert response.status_code == 400 and "This form has expired" in text_of(response)
    after = user_row(services, signed_in.account.admin_id)
    assert (after.password_hash, after.session_version, after.totp_secret_sealed) == (
        before.password_hash, before.session_version, before.totp_secret_sealed)
    assert signed_in.get("/profile/").status_code == 200


# -- overview, sessions --------------------------------------------------------------------------

def test_the_overview_shows_me_my_sessions_and_my_sign_ins_on_every_door(signed_in, services, portal_app):
    account = signed_in.account
    other = new_client(portal_app, account)
    with pytest.raises(AuthFailed):
        login(services, account.admin_username, "not the password", protocol="ftps", ip="192.0.2.77")
    page = text_of(signed_in.get("/profile/"))
    assert account.admin_username in page and "Account administrator" in page
    sessions = page[page.index('id="sessions"'):page.index("</table>", page.index('id="sessions"'))]
    assert sessions.count("<tr>") == 3 and sessions.count("this session") == 1
    assert other.environ_base["REMOTE_ADDR"] in sessions and signed_in.environ_base["REMOTE_ADDR"] in sessions
    logins = page[page.index('id="logins"'):]
    first_row = logins[logins.index("<tbody>"):logins.index("</tr>", logins.index("<tbody>"))]
    assert "ftps" in first_row and "192.0.2.77" in first_row and "failed" in first_row  # newest first
    assert logins.count("signed in") >= 2 and ">web<" in logins


def test_sign_out_everywhere_ends_every_session_this_one_too(signed_in, services, portal_app):
    other = new_client(portal_app, signed_in.account)
    response = signed_in.submit("/profile/sessions/end-all", form_page="/profile/")
    assert response.status_code == 302 and response.headers["Location"] == "/signin"
    assert "You are signed out everywhere" in text_of(signed_in.get("/signin"))
    assert signed_in.get("/profile/").status_code == 302
    assert other.get("/profile/").status_code == 302
    with services.db.session() as db:
        actions = db.execute(select(AuditEvent.action, AuditEvent.protocol).where(
            AuditEvent.account_id == signed_in.account.id).order_by(AuditEvent.seq)).all()
    assert actions[-1] == ("logout", "web")


# -- password -----------------------------------------------------------------------------------

def test_changing_my_password_ends_my_other_sessions_and_this_one_continues(signed_in, services, portal_app):
    account = signed_in.account
    other = new_client(portal_app, account)
    old_cookie = signed_in.get_cookie("sealdrop_session", domain="portal.test").value
    response = signed_in.submit("/profile/password", {"current": STRONG_PASSWORD, "new": NEW_PASSWORD,
                                                      "confirm": NEW_PASSWORD})
    assert response.status_code == 302 and response.headers["Location"] == "/profile/"
    assert "Your password is changed" in text_of(signed_in.get("/profile/"))
    assert signed_in.get_cookie("sealdrop_session", domain="portal.test").value != old_cookie  # a new id
    assert other.get("/files/").status_code == 302  # the other session ended
    row = user_row(services, account.admin_id)
    assert verify_password(row.password_hash, NEW_PASSWORD) and row.password_changed_at is not None
    assert f"user {account.admin_id} changed their password" in audit_details(services, account.id)
    assert portal_app.test_client().sign_in(account.admin_username, NEW_PASSWORD).status_code == 302


@pytest.mark.parametrize("form, message", [
    ({"current": "not my password", "new": NEW_PASSWORD, "confirm": NEW_PASSWORD}, "current password you typed"),
    ({"current": STRONG_PASSWORD, "new": NEW_PASSWORD, "confirm": NEW_PASSWORD + "x"}, "The two new passwords differ"),
    ({"current": STRONG_PASSWORD, "new": "Short-1", "confirm": "Short-1"}, "Use at least"),
    ({"current": STRONG_PASSWORD, "new": "passwordpassword", "confirm": "passwordpassword"}, "too common"),
])
def test_a_refused_password_change_says_why_and_changes_nothing(signed_in, services, form, message):
    before = user_row(services, signed_in.account.admin_id)
    page = signed_in.submit("/profile/password", form)
    assert page.status_code == 400 and message in html.unescape(text_of(page))
    after = user_row(services, signed_in.account.admin_id)
    assert (after.password_hash, after.session_version) == (before.password_hash, before.session_version)
    assert signed_in.get("/profile/").status_code == 200


def test_a_guessable_password_gets_zxcvbns_advice(signed_in):
    page = html.unescape(text_of(signed_in.submit("/profile/password", {
        "current": STRONG_PASSWORD, "new": "passwordpassword", "confirm": "passwordpassword"})))
    assert "Add another word or two" in page  # zxcvbn's own suggestion


def test_the_accounts_policy_is_shown_and_enforced(signed_in, services):
    with_account(services, signed_in.account.id,
                 lambda s, a: auth.set_policy(s, services.keyring, a, min_length=20, symbol=True))
    page = text_of(signed_in.get("/profile/password"))
    assert "At least 20 characters." in page and "A character that is not a letter or digit." in page
    refused = signed_in.submit("/profile/password", {"current": STRONG_PASSWORD, "new": "Lantern Orchid Basalt",
                                                     "confirm": "Lantern Orchid Basalt"})
    assert refused.status_code == 400 and "Include a character that is not a letter or digit." in text_of(refused)


# -- MFA ----------------------------------------------------------------------------------------

def start_enrolment(client) -> pyotp.TOTP:
    assert client.submit("/profile/mfa/start", form_page="/profile/mfa").status_code == 302
    page = text_of(client.get("/profile/mfa"))
    return pyotp.TOTP(SECRET_SHOWN.search(page).group(1).replace(" ", ""))


def test_enrolling_shows_a_local_qr_code_and_counts_only_after_a_code(signed_in, services):
    user_id = signed_in.account.admin_id
    assert "Set up two-step sign-in" in text_of(signed_in.get("/profile/mfa"))
    code = start_enrolment(signed_in)
    page = text_of(signed_in.get("/profile/mfa"))
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert 'class="qr-code"' in svg and "<path" in svg
    assert "style" not in svg and "<script" not in svg and "data:" not in page  # CSP: style-src 'self'
    assert user_row(services, user_id).totp_enrolled_at is None  # not yet
    wrong = signed_in.submit("/profile/mfa/confirm", {"code": "000000" if code.now() != "000000" else "111111"},
                             form_page="/profile/mfa")
    assert wrong.status_code == 303
    assert "That code was not accepted" in text_of(signed_in.get("/profile/mfa"))
    assert user_row(services, user_id).totp_enrolled_at is None
    done = signed_in.submit("/profile/mfa/confirm", {"code": code.now()}, form_page="/profile/mfa")
    assert done.status_code == 200
    codes = CODES_SHOWN.findall(text_of(done))
    assert len(codes) == 10
    assert user_row(services, user_id).totp_enrolled_at is not None
    assert f"user {user_id} enrolled in mfa" in audit_details(services, user_row(services, user_id).account_id)


def test_an_empty_code_is_refused_with_a_message(signed_in):
    start_enrolment(signed_in)
    assert signed_in.submit("/profile/mfa/confirm", {"code": ""}, form_page="/profile/mfa").status_code == 303
    assert "Enter the 6-digit code" in text_of(signed_in.get("/profile/mfa"))


def enrolled_client(client) -> pyotp.TOTP:
    code = start_enrolment(client)
    assert client.submit("/profile/mfa/confirm", {"code": code.now()}, form_page="/profile/mfa").status_code == 200
    return code


def test_new_recovery_codes_replace_the_old_ones_and_are_shown_once(signed_in, services):
    enrolled_client(signed_in)
    with services.db.session() as db:
        old = set(db.scalars(select(RecoveryCode.code_hash).where(RecoveryCode.user_id == signed_in.account.admin_id)))
    page = signed_in.submit("/profile/mfa/recovery", form_page="/profile/mfa")
    assert page.status_code == 200 and len(CODES_SHOWN.findall(text_of(page))) == 10
    with services.db.session() as db:
        new = set(db.scalars(select(RecoveryCode.code_hash).where(RecoveryCode.user_id == signed_in.account.admin_id)))
    assert len(new) == 10 and not old & new
    assert not CODES_SHOWN.findall(text_of(signed_in.get("/profile/mfa")))


def test_recovery_codes_need_mfa_on(signed_in):
    page = signed_in.submit("/profile/mfa/recovery", form_page="/profile/mfa")
    assert page.status_code == 400 and "Turn on two-step sign-in first" in text_of(page)


def test_turning_mfa_off_takes_a_code_and_a_confirmation(signed_in, services):
    code = enrolled_client(signed_in)
    assert "Enter a code from your app to confirm" in text_of(signed_in.get("/profile/mfa/disable"))
    refused = signed_in.submit("/profile/mfa/disable", {"code": "12345x"})
    assert refused.status_code == 400 and "That code was not accepted" in text_of(refused)
    assert user_row(services, signed_in.account.admin_id).totp_enrolled_at is not None
    unused = code.at(time.time() + totp.INTERVAL)  # the enrolment claimed this step's code; the next one is new
    done = signed_in.submit("/profile/mfa/disable", {"code": unused})
    assert done.status_code == 302
    row = user_row(services, signed_in.account.admin_id)
    assert row.totp_secret_sealed is None and row.totp_enrolled_at is None
    with services.db.session() as db:
        assert db.scalar(select(func.count()).where(RecoveryCode.user_id == row.id)) == 0


def test_mfa_cannot_be_turned_off_when_the_account_requires_it(signed_in, services):
    code = enrolled_client(signed_in)
    require_mfa(services, signed_in.account.id)
    assert "cannot be turned off" in text_of(signed_in.get("/profile/mfa"))
    assert signed_in.get("/profile/mfa/disable").status_code == 403
    unused = code.at(time.time() + totp.INTERVAL)  # not the step the enrolment claimed
    assert signed_in.submit("/profile/mfa/disable", {"code": unused}, form_page="/profile/mfa").status_code == 403
    assert user_row(services, signed_in.account.admin_id).totp_enrolled_at is not None


def test_a_user_who_must_enrol_is_taken_to_enrolment_and_confirming_signs_them_in(client, account, services):
    require_mfa(services, account.id)
    response = client.sign_in(account.admin_username, account.password)
    assert response.headers["Location"] == "/profile/mfa"
    for page in ("/files/", "/profile/", "/profile/keys", "/profile/connection"):
        assert client.get(page).headers["Location"] == "/profile/mfa", page
    assert "Set it up to continue" in text_of(client.get("/profile/mfa"))
    code = start_enrolment(client)
    done = client.submit("/profile/mfa/confirm", {"code": code.now()}, form_page="/profile/mfa")
    assert done.status_code == 200 and len(CODES_SHOWN.findall(text_of(done))) == 10
    assert 'href="/files/"' in text_of(done)
    assert client.get("/files/").status_code == 200 and client.get("/profile/").status_code == 200
    # The next sign-in asks for the code.
    again = client.application.test_client()
    assert again.sign_in(account.admin_username, account.password).headers["Location"] == "/signin/code"


# -- SSH keys -----------------------------------------------------------------------------------

def test_adding_listing_and_removing_an_ssh_key(signed_in, services):
    line = new_ed25519_line("<img src=x onerror=alert(1)>")
    fingerprint = auth.parse_public_key(line).fingerprint
    added = signed_in.submit("/profile/keys", {"key": line})
    assert added.status_code == 302
    page = text_of(signed_in.get("/profile/keys"))
    assert f"Key {fingerprint} is added" in page and fingerprint.startswith("SHA256:")
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    with services.db.session() as db:
        key_id = db.scalar(select(SshKey.id).where(SshKey.user_id == signed_in.account.admin_id))
    confirm = text_of(signed_in.get(f"/profile/keys/{key_id}/remove"))
    assert "Remove this SSH key?" in confirm and fingerprint in confirm
    assert signed_in.submit(f"/profile/keys/{key_id}/remove").status_code == 302
    with services.db.session() as db:
        assert db.get(SshKey, key_id) is None
    assert f"ssh key {fingerprint} removed from user {signed_in.account.admin_id}" in audit_details(
        services, signed_in.account.id)


def weak_rsa_line() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.mark.parametrize("paste, message", [
    ("ssh-ed25519 not-base64!!", "could not be read"),
    ("hello", "not an OpenSSH public key line"),
    (weak_rsa_line(), "RSA keys need at least 2048 bits"),
])
def test_a_bad_key_paste_is_refused_with_a_clear_message(signed_in, services, paste, message):
    page = signed_in.submit("/profile/keys", {"key": paste})
    assert page.status_code == 400 and message in text_of(page)
    with services.db.session() as db:
        assert db.scalar(select(func.count()).where(SshKey.user_id == signed_in.account.admin_id)) == 0


def test_the_same_key_twice_is_refused(signed_in):
    line = new_ed25519_line()
    signed_in.submit("/profile/keys", {"key": line})
    page = signed_in.submit("/profile/keys", {"key": line})
    assert page.status_code == 400 and "already authorised" in text_of(page)


def test_another_users_key_is_not_found_and_stays(signed_in, services, make_account):
    other = make_account()
    with_user(services, other.admin_id, lambda s, u: auth.add_ssh_key(s, services.keyring, u, new_ed25519_line()))
    with services.db.session() as db:
        key_id = db.scalar(select(SshKey.id).where(SshKey.user_id == other.admin_id))
    assert signed_in.get(f"/profile/keys/{key_id}/remove").status_code == 404
    assert signed_in.submit(f"/profile/keys/{key_id}/remove", form_page="/profile/keys").status_code == 404
    with services.db.session() as db:
        assert db.get(SshKey, key_id) is not None


# -- FTPS app passwords -------------------------------------------------------------------------

def test_an_app_password_made_on_the_page_works_on_the_ftps_door(signed_in, services, ftps_server):
    enrolled_client(signed_in)  # with MFA on, FTPS takes app passwords only
    created = signed_in.submit("/profile/app-passwords", {"label": "scanner <b>bold</b>"})
    assert created.status_code == 200
    token = TOKEN_SHOWN.search(text_of(created)).group(1)
    assert "&lt;b&gt;bold&lt;/b&gt;" in text_of(created)
    ftp = ftps_connect(ftps_server, signed_in.account.admin_username, token)
    ftp.storbinary("STOR /from-the-profile.txt", io.BytesIO(b"ok"))
    quit_quietly(ftp)
    listing = text_of(signed_in.get("/profile/app-passwords"))
    assert "scanner &lt;b&gt;bold&lt;/b&gt;" in listing and token not in listing
    assert "never" not in listing.split('id="app-passwords"')[1].split("</table>")[0]  # last use shown
    public_id = token.split("_")[1]
    confirm = text_of(signed_in.get(f"/profile/app-passwords/{public_id}/revoke"))
    assert "Revoke this app password?" in confirm
    assert signed_in.submit(f"/profile/app-passwords/{public_id}/revoke").status_code == 302
    assert "revoked" in text_of(signed_in.get("/profile/app-passwords"))
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftps_connect(ftps_server, signed_in.account.admin_username, token)
    details = audit_details(services, signed_in.account.id)
    assert f"app password {public_id} created for user {signed_in.account.admin_id}" in details
    assert f"app password {public_id} of user {signed_in.account.admin_id} revoked" in details


def test_a_too_long_label_is_refused(signed_in, services):
    page = signed_in.submit("/profile/app-passwords", {"label": "x" * 65})
    assert page.status_code == 400 and "64" in text_of(page)
    with services.db.session() as db:
        assert db.scalar(select(func.count()).where(AppPassword.user_id == signed_in.account.admin_id)) == 0


def test_another_users_app_password_is_not_found_and_stays(signed_in, services, make_user):
    other_id, _ = make_user(signed_in.account)  # the same account: still not mine
    token = with_user(services, other_id, lambda s, u: auth.create_app_password(s, services.keyring, u, "theirs"))
    public_id = token.split("_")[1]
    assert signed_in.get(f"/profile/app-passwords/{public_id}/revoke").status_code == 404
    assert signed_in.submit(f"/profile/app-passwords/{public_id}/revoke",
                            form_page="/profile/app-passwords").status_code == 404
    with services.db.session() as db:
        assert db.scalar(select(AppPassword.revoked_at).where(AppPassword.public_id == public_id)) is None


# -- connection details -------------------------------------------------------------------------

@pytest.fixture
def published_keys(services):
    """Two fingerprints as the doors publish them (one with markup, to see it escaped)."""
    kind = "test-" + secrets.token_hex(4)
    rows = [DoorKey(door="sftp", key_type=kind, fingerprint="SHA256:" + secrets.token_urlsafe(32)),
            DoorKey(door="ftps", key_type=kind, fingerprint="<b>" + secrets.token_hex(32) + "</b>")]
    with services.db.session() as db:
        db.add_all(rows)
    yield [(row.door, row.fingerprint) for row in rows]
    with services.db.session() as db:
        db.execute(delete(DoorKey).where(DoorKey.key_type == kind))


def test_the_connection_page_shows_the_published_fingerprints_and_my_examples(signed_in, published_keys, settings):
    page = text_of(signed_in.get("/profile/connection"))
    (_, ssh_fingerprint), (_, tls_fingerprint) = published_keys
    assert ssh_fingerprint in page
    assert html.escape(tls_fingerprint) in page and tls_fingerprint not in page
    user = signed_in.account.admin_username
    assert f"sftp -P {settings.sftp_port} {user}@127.0.0.1" in page
    assert f"curl --ssl-reqd --user {user} -T report.pdf ftp://127.0.0.1:{settings.ftps_port}/" in page
    assert f"open -u {user} -p {settings.ftps_port} ftp://127.0.0.1" in page
    assert f"user={user} explicit_tls=true" in page
    assert 'src="/static/copy.js"' in page


def test_before_the_doors_publish_the_page_says_so(fresh_settings):
    # A database of its own: in the shared one, a running door may have published its keys.
    app = create_app(fresh_settings)
    app.test_client_class = PortalClient
    try:
        svc = app.extensions["sealdrop"]
        with svc.db.session() as db:
            accounts.create_account(db, svc.keyring, name="Fresh", tier="basic", admin_username="fresh-admin",
                                    admin_email="fresh@example.test", admin_password=STRONG_PASSWORD)
        page = text_of(new_client(app, "fresh-admin").get("/profile/connection"))
        assert "Not published yet" in page and "<table class=\"table table-sm\" id=\"fingerprints\"" not in page
    finally:
        app.extensions["sealdrop"].close()


@pytest.fixture(scope="module")
def published_host_app(settings, migrated):
    app = create_app(dataclasses.replace(settings, public_transfer_host="transfer.example.test",
                                         public_ftps_port=990, public_sftp_port=22))
    app.test_client_class = PortalClient
    yield app
    app.extensions["sealdrop"].close()


def test_the_public_host_and_ports_can_differ_from_the_listening_ones(published_host_app, account):
    client = new_client(published_host_app, account)
    page = text_of(client.get("/profile/connection"))
    assert "transfer.example.test" in page and f"sftp -P 22 {account.admin_username}@transfer.example.test" in page
    assert "ftp://transfer.example.test:990/" in page


def test_the_public_transfer_settings_are_read_from_the_environment(test_env):
    from common.config import load_settings
    settings = load_settings({**test_env, "PUBLIC_URL": "https://files.example.test",
                              "PUBLIC_SFTP_PORT": "22"})
    assert settings.transfer_host == "files.example.test" and settings.shown_sftp_port == 22
    assert settings.shown_ftps_port == settings.ftps_port and settings.public_ftps_port is None
