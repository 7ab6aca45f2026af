"""The Users tab: list and search, invitation, edits, disabling on every door (open sessions too),
resets, unlock, access rules, SSH keys, the MFA exemption, deletion and the last-admin rule."""
from __future__ import annotations

import ftplib
import re

import pytest
from paramiko.sftp import SFTP_PERMISSION_DENIED
from rq.job import Job
from sqlalchemy import select

from common import auth
from common.jobs.invitations import send_password_link
from common.models import Contact, IpRule, RecoveryCode, SshKey, User
from common.vfs import Workspace
from tests.factories import (
    allow, enrol, login, new_ed25519_line, principal, refused, require_mfa, share, upload, with_user,
)
from tests.fixtures import STRONG_PASSWORD, unique_name
from tests.portal.admin_pages import admin_details, signed_in_as, text_of, user_row
from tests.transfer.ftps_door import connect as ftps_connect, quit_quietly
from tests.transfer.sftp_door import SftpStatus, connect as sftp_connect

NEW_PASSWORD = "Lantern-Orchid-Basalt-77"
LINK = re.compile(r"https?://\S+/password/([A-Za-z0-9_-]+)")


def act(client, user_id, action, data=None):
    """Press one of the buttons of a user's page."""
    return client.submit(f"/users/{user_id}/{action}", data or {}, form_page=f"/users/{user_id}")


def run_mail_job(mailer, user_id, purpose) -> None:
    """Run the waiting set-password mail job as the worker would."""
    job = Job.fetch(f"password-{purpose}-{user_id}", connection=mailer.redis)
    job.delete()
    assert send_password_link(mailer, *job.args) is True


def sealed_email(services, account_id, user_id) -> str:
    with services.db.session() as db:
        return services.keyring.account(db, account_id).open_text(db.get(User, user_id).email_sealed, "email")


# -- who may come in ------------------------------------------------------------------------------

PAGES = ["/users/", "/users/new", "/users/{id}", "/users/{id}/delete", "/users/{id}/ip-rules/1/remove",
         "/users/{id}/keys/1/remove"]
ACTIONS = ["/users/new", "/users/{id}/edit", "/users/{id}/disable", "/users/{id}/enable", "/users/{id}/reset-password",
           "/users/{id}/reset-mfa", "/users/{id}/unlock", "/users/{id}/mfa-exempt", "/users/{id}/ip-rules",
           "/users/{id}/keys", "/users/{id}/delete"]


@pytest.mark.parametrize("method,url", [("get", url) for url in PAGES] + [("post", url) for url in ACTIONS])
def test_a_plain_user_is_refused(signed_in, portal_app, make_user, services, method, url):
    user_id, name = make_user(signed_in.account)
    plain = signed_in_as(portal_app, name)
    response = plain.get(url.format(id=user_id)) if method == "get" else plain.submit(
        url.format(id=user_id), {"exempt": "on", "role": "admin", "email": "x@example.test"}, form_page="/profile/")
    assert response.status_code == 403
    assert user_row(services, user_id).role == "user" and user_row(services, user_id).status == "active"


@pytest.mark.parametrize("url", ACTIONS)
def test_every_action_wants_its_csrf_token(signed_in, make_user, services, url):
    user_id, _ = make_user(signed_in.account)
    before = user_row(services, user_id)
    response = signed_in.post(url.format(id=user_id), data={
        "username": unique_name("u"), "email": "x@example.test", "role": "admin", "exempt": "on",
        "cidr": "192.0.2.1", "key": new_ed25519_line()})
    assert response.status_code == 400
    after = user_row(services, user_id)
    assert (after.role, after.status, after.email_sealed, after.mfa_exempt, after.session_version) == (
        before.role, before.status, before.email_sealed, before.mfa_exempt, before.session_version)


def test_a_signed_out_visitor_is_sent_to_sign_in(client):
    response = client.get("/users/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/signin")


# -- another account's ids ----------------------------------------------------------------------------

def test_another_accounts_user_rule_and_key_are_not_found_and_stay(signed_in, services, make_account):
    stranger = make_account()
    theirs = stranger.admin_id
    allow(services, stranger.id, "198.51.100.0/24", user_id=theirs)
    with_user(services, theirs, lambda s, u: auth.add_ssh_key(s, services.keyring, u, new_ed25519_line()))
    with services.db.session() as db:
        rule_id = db.scalar(select(IpRule.id).where(IpRule.user_id == theirs))
        key_id = db.scalar(select(SshKey.id).where(SshKey.user_id == theirs))
    before = user_row(services, theirs)
    for url in (f"/users/{theirs}", f"/users/{theirs}/delete", f"/users/{theirs}/ip-rules/{rule_id}/remove",
                f"/users/{theirs}/keys/{key_id}/remove"):
        assert signed_in.get(url).status_code == 404, url
    mine = signed_in.account.admin_id
    for url in [a.format(id=theirs) for a in ACTIONS[1:]] + [
            f"/users/{theirs}/ip-rules/{rule_id}/remove", f"/users/{theirs}/keys/{key_id}/remove",
            f"/users/{mine}/ip-rules/{rule_id}/remove", f"/users/{mine}/keys/{key_id}/remove"]:
        response = signed_in.submit(url, {"email": "x@example.test", "role": "user", "exempt": "on",
                                          "cidr": "192.0.2.1", "key": new_ed25519_line()}, form_page="/users/")
        assert response.status_code == 404, url
    after = user_row(services, theirs)
    assert (after.role, after.status, after.email_sealed, after.mfa_exempt, after.session_version) == (
        before.role, before.status, before.email_sealed, before.mfa_exempt, before.session_version)
    with services.db.session() as db:
        assert db.get(IpRule, rule_id) is not None and db.get(SshKey, key_id) is not None
    assert not [d for d in admin_details(services, stranger.id) if "disabled" in d or "deleted" in d]


# -- the list ------------------------------------------------------------------------------------------

def test_the_list_shows_role_mfa_lock_and_last_login_and_searches(signed_in, services, make_user):
    account = signed_in.account
    locked_id, locked = make_user(account)
    exempt_id, exempt = make_user(account, username="zz" + unique_name("svc"))
    with_user(services, exempt_id, lambda s, u: auth.set_mfa_exempt(s, services.keyring, u, True))
    for _ in range(3):
        refused(lambda: login(services, locked, "wrong password"))
    page = text_of(signed_in.get("/users/"))
    rows = {name: page[page.index(f">{name}</a>"):page.index("</tr>", page.index(f">{name}</a>"))]
            for name in (account.admin_username, locked, exempt)}
    assert "Admin" in rows[account.admin_username] and "UTC" in rows[account.admin_username]  # signed in just now
    assert "locked" in rows[locked] and "never" in rows[locked]
    assert "exempt (exception)" in rows[exempt]
    found = text_of(signed_in.get("/users/?q=" + exempt[:6].upper()))
    assert exempt in found and locked not in found and "1 user matching" in found
    assert "No user name or email contains" in text_of(signed_in.get("/users/?q=nobody-here"))


def test_the_compliance_pages_filters_show_only_their_users(signed_in, services, make_user):
    account = signed_in.account
    _, locked = make_user(account)
    exempt_id, exempt = make_user(account)
    with_user(services, exempt_id, lambda s, u: auth.set_mfa_exempt(s, services.keyring, u, True))
    for _ in range(3):
        refused(lambda: login(services, locked, "wrong password"))
    admin = account.admin_username  # signed in, not locked, not exempt, not enrolled
    pages = {group: text_of(signed_in.get(f"/users/?filter={group}"))
             for group in ("locked", "exempt", "never", "unenrolled")}
    shown = {group: page[page.index("<main"):] for group, page in pages.items()}  # not the navigation bar
    assert locked in shown["locked"] and exempt not in shown["locked"] and f">{admin}<" not in shown["locked"]
    assert exempt in shown["exempt"] and locked not in shown["exempt"]
    assert locked in shown["never"] and exempt in shown["never"] and f">{admin}<" not in shown["never"]
    assert f">{admin}<" in shown["unenrolled"] and locked in shown["unenrolled"] and exempt not in shown["unenrolled"]
    assert "Showing only active users who are locked" in shown["locked"]


def test_the_list_is_paged_by_fifty(signed_in, services, make_user):
    for _ in range(50):
        make_user(signed_in.account)
    first, second = text_of(signed_in.get("/users/")), text_of(signed_in.get("/users/?page=2"))
    assert first.count("<tr><td><a href=") == 50
    assert "51 users" in first and 'href="/users/?page=2"' in first
    assert second.count("<tr><td><a href=") == 1


# -- creating a user by invitation ---------------------------------------------------------------------

def test_a_new_user_is_invited_sets_a_password_and_signs_in(signed_in, services, mailer, smtp_server, client):
    name = unique_name("new")
    response = signed_in.submit("/users/new", {"username": name, "email": f"{name}@example.test", "role": "user"})
    assert response.status_code == 303
    user_id = int(response.headers["Location"].rsplit("/", 1)[1])
    assert "an invitation is on its way" in text_of(signed_in.get(response.headers["Location"]))
    assert user_row(services, user_id).password_hash is None
    assert "invited, no password yet" in text_of(signed_in.get(f"/users/{user_id}"))
    refused(lambda: login(services, name, ""))
    run_mail_job(mailer, user_id, "invite")
    [(recipients, message)] = smtp_server.messages
    assert recipients == [f"{name}@example.test"]
    token = LINK.search(message.get_body(("plain",)).get_content()).group(1)
    assert client.submit(f"/password/{token}", {"new": NEW_PASSWORD, "confirm": NEW_PASSWORD}).status_code == 302
    assert client.sign_in(name, NEW_PASSWORD).status_code == 302
    assert client.get("/files/").status_code in (200, 302)
    assert f"user {user_id} created as user" in admin_details(services, signed_in.account.id)


@pytest.mark.parametrize("form,field_error", [
    ({"username": "bad name", "email": "a@example.test", "role": "user"}, "may contain only"),
    ({"username": "fine-name", "email": "no-at-sign", "role": "user"}, "exactly one @"),
    ({"username": "fine-name", "email": "a@example.test", "role": "owner"}, "Not a valid choice"),
])
def test_a_bad_new_user_is_refused_with_the_reason(signed_in, form, field_error):
    response = signed_in.submit("/users/new", form)
    assert response.status_code == 400 and field_error in text_of(response)


def test_a_taken_user_name_is_refused(signed_in):
    response = signed_in.submit("/users/new", {"username": signed_in.account.admin_username.upper(),
                                               "email": "a@example.test", "role": "user"})
    assert response.status_code == 400 and "That user name is taken" in text_of(response)


# -- edits --------------------------------------------------------------------------------------------

def test_email_and_role_are_edited_and_audited(signed_in, services, make_user):
    user_id, _ = make_user(signed_in.account)
    response = signed_in.submit(f"/users/{user_id}/edit", {"email": "moved@example.test", "role": "admin"},
                                form_page=f"/users/{user_id}")
    assert response.status_code == 303
    assert user_row(services, user_id).role == "admin"
    assert sealed_email(services, signed_in.account.id, user_id) == "moved@example.test"
    details = admin_details(services, signed_in.account.id)
    assert f"user {user_id} email changed" in details and f"user {user_id} role set to admin" in details


def test_a_bad_email_is_refused_and_nothing_changes(signed_in, services, make_user):
    user_id, name = make_user(signed_in.account)
    response = signed_in.submit(f"/users/{user_id}/edit", {"email": "two@@example.test", "role": "admin"},
                                form_page=f"/users/{user_id}")
    assert response.status_code == 400 and "exactly one @" in text_of(response)
    assert user_row(services, user_id).role == "user"
    assert sealed_email(services, signed_in.account.id, user_id) == f"{name}@example.test"


# -- the last admin, through every route -----------------------------------------------------------------

def test_the_last_admin_cannot_be_demoted_disabled_or_deleted_on_the_pages(signed_in, services):
    admin_id = signed_in.account.admin_id
    demote = signed_in.submit(f"/users/{admin_id}/edit", {"email": "boss@example.test", "role": "user"},
                              form_page=f"/users/{admin_id}")
    assert demote.status_code == 400 and "last admin of an account cannot be demoted" in text_of(demote)
    for action, word in (("disable", "disabled"), ("delete", "deleted")):
        response = act(signed_in, admin_id, action)
        assert response.status_code == 303
        assert f"cannot be {word}" in text_of(signed_in.get(response.headers["Location"]))
    admin = user_row(services, admin_id)
    assert (admin.role, admin.status) == ("admin", "active")
    assert sealed_email(services, signed_in.account.id, admin_id) != "boss@example.test"  # one transaction


def test_the_last_admin_cannot_be_deleted_by_the_cli(signed_in, portal_app, services):
    runner = portal_app.test_cli_runner()
    result = runner.invoke(args=["users", "delete", signed_in.account.name, signed_in.account.admin_username])
    assert result.exit_code != 0 and "last admin" in result.stderr
    assert user_row(services, signed_in.account.admin_id) is not None


def test_with_another_admin_an_admin_may_step_down(signed_in, services, make_user):
    make_user(signed_in.account, role="admin")
    admin_id = signed_in.account.admin_id
    response = signed_in.submit(f"/users/{admin_id}/edit", {"email": "me@example.test", "role": "user"},
                                form_page=f"/users/{admin_id}")
    assert response.status_code == 303 and user_row(services, admin_id).role == "user"
    assert signed_in.get("/users/").status_code == 403  # no longer an admin, on the next request


# -- disabling: every door, sessions that were open before --------------------------------------------------

def test_disabling_ends_open_web_ftps_and_sftp_sessions_and_refuses_new_ones(
        signed_in, services, portal_app, make_user, ftps_server, sftp_server):
    user_id, name = make_user(signed_in.account)
    upload(Workspace(services, principal(signed_in.account, user_id, name)), "/before.txt", b"before")
    web = signed_in_as(portal_app, name)
    ftp = ftps_connect(ftps_server, name, STRONG_PASSWORD)
    transport, sftp = sftp_connect(sftp_server.port, name, password=STRONG_PASSWORD)
    try:
        assert ftp.nlst("/") and sftp.listdir("/") and web.get("/files/").status_code == 200
        response = act(signed_in, user_id, "disable")
        assert response.status_code == 303 and user_row(services, user_id).status == "disabled"
        assert "disabled" in text_of(signed_in.get(response.headers["Location"]))
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.mkd("/after")
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.size("/before.txt")
        with pytest.raises(SftpStatus) as denied:
            sftp.stat("/before.txt")
        assert denied.value.code == SFTP_PERMISSION_DENIED
        with pytest.raises(SftpStatus) as denied:
            sftp.open("/after.txt", "w").write(b"x")
        assert denied.value.code == SFTP_PERMISSION_DENIED
        assert web.get("/files/").status_code == 302  # the web session ended
    finally:
        quit_quietly(ftp)
        transport.close()
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftps_connect(ftps_server, name, STRONG_PASSWORD)
    assert sign_in_refused(portal_app, name)
    assert f"user {user_id} disabled" in admin_details(services, signed_in.account.id)


def sign_in_refused(app, name) -> bool:
    client = app.test_client()
    return client.sign_in(name, STRONG_PASSWORD).status_code == 200  # the form again, with its error


def test_enabling_lets_the_user_in_again(signed_in, services, portal_app, make_user):
    user_id, name = make_user(signed_in.account)
    act(signed_in, user_id, "disable")
    assert sign_in_refused(portal_app, name)
    response = act(signed_in, user_id, "enable")
    assert response.status_code == 303 and user_row(services, user_id).status == "active"
    with_user(services, user_id, lambda s, u: auth.unlock_user(s, services.keyring, u))
    signed_in_as(portal_app, name)


# -- resets, unlock, exemption --------------------------------------------------------------------------------

def test_a_password_reset_ends_sessions_and_mails_a_link(signed_in, services, portal_app, make_user, mailer,
                                                         smtp_server):
    user_id, name = make_user(signed_in.account)
    web = signed_in_as(portal_app, name)
    response = act(signed_in, user_id, "reset-password")
    assert response.status_code == 303 and web.get("/files/").status_code == 302
    run_mail_job(mailer, user_id, "reset")
    [(recipients, _)] = smtp_server.messages
    assert recipients == [f"{name}@example.test"]
    assert f"password reset link sent to user {user_id}" in admin_details(services, signed_in.account.id)


def test_an_mfa_reset_removes_the_authenticator_and_the_codes(signed_in, services, make_user):
    user_id, name = make_user(signed_in.account)
    enrol(services, user_id)
    with_user(services, user_id, lambda s, u: auth.totp.generate_recovery_codes(s, services.keyring, u))
    assert act(signed_in, user_id, "reset-mfa").status_code == 303
    row = user_row(services, user_id)
    assert row.totp_secret_sealed is None and row.totp_enrolled_at is None
    with services.db.session() as db:
        assert db.scalar(select(RecoveryCode.id).where(RecoveryCode.user_id == user_id)) is None
    assert not login(services, name, STRONG_PASSWORD).needs_totp
    assert f"user {user_id} mfa reset" in admin_details(services, signed_in.account.id)


def test_unlocking_lifts_the_lockout(signed_in, services, make_user):
    user_id, name = make_user(signed_in.account)
    for _ in range(3):
        refused(lambda: login(services, name, "wrong password"))
    assert auth.is_locked_out(services, name) and "Unlock" in text_of(signed_in.get(f"/users/{user_id}"))
    assert act(signed_in, user_id, "unlock").status_code == 303
    assert not auth.is_locked_out(services, name)
    assert login(services, name, STRONG_PASSWORD).user_id == user_id


def test_a_service_user_is_exempted_from_mfa_shown_as_an_exception(signed_in, services, make_user):
    user_id, name = make_user(signed_in.account)
    require_mfa(services, signed_in.account.id)
    assert act(signed_in, user_id, "mfa-exempt", {"exempt": "on"}).status_code == 303
    assert user_row(services, user_id).mfa_exempt
    assert 'id="mfa-exception"' in text_of(signed_in.get(f"/users/{user_id}"))
    assert not login(services, name, STRONG_PASSWORD, protocol="sftp").must_enrol
    assert act(signed_in, user_id, "mfa-exempt", {"exempt": "off"}).status_code == 303
    assert not user_row(services, user_id).mfa_exempt
    details = admin_details(services, signed_in.account.id)
    assert f"user {user_id} exempt from mfa" in details and f"user {user_id} no longer exempt from mfa" in details


# -- the user's IP allow-list and SSH keys ---------------------------------------------------------------------

def test_ip_rules_are_added_listed_and_removed(signed_in, services, make_user):
    user_id, name = make_user(signed_in.account)
    response = signed_in.submit(f"/users/{user_id}/ip-rules", {"cidr": "192.0.2.0/24"}, form_page=f"/users/{user_id}")
    assert response.status_code == 303
    assert "192.0.2.0/24" in text_of(signed_in.get(f"/users/{user_id}"))
    refused(lambda: login(services, name, STRONG_PASSWORD, ip="198.51.100.1"))
    assert login(services, name, STRONG_PASSWORD, ip="192.0.2.9").user_id == user_id
    with services.db.session() as db:
        rule_id = db.scalar(select(IpRule.id).where(IpRule.user_id == user_id))
    url = f"/users/{user_id}/ip-rules/{rule_id}/remove"
    assert "Remove 192.0.2.0/24" in text_of(signed_in.get(url))
    assert signed_in.submit(url).status_code == 303
    with services.db.session() as db:
        assert db.get(IpRule, rule_id) is None
    details = admin_details(services, signed_in.account.id)
    assert f"allow-list of user {user_id}: added 192.0.2.0/24" in details
    assert f"allow-list of user {user_id}: removed 192.0.2.0/24" in details


@pytest.mark.parametrize("cidr,message", [("192.0.2.1/24", "host bits set"), ("not-an-ip", "Give an IP address"),
                                          ("", "This field is required")])
def test_a_bad_ip_rule_is_refused(signed_in, services, make_user, cidr, message):
    user_id, _ = make_user(signed_in.account)
    response = signed_in.submit(f"/users/{user_id}/ip-rules", {"cidr": cidr}, form_page=f"/users/{user_id}")
    assert response.status_code == 400 and message in text_of(response)
    with services.db.session() as db:
        assert db.scalar(select(IpRule.id).where(IpRule.user_id == user_id)) is None


def test_ip_rules_are_shown_locked_on_the_basic_plan(client, make_account, make_user, services):
    basic = make_account(tier="basic")
    assert client.sign_in(basic.admin_username, basic.password).status_code == 302
    user_id, _ = make_user(basic)
    assert "enterprise plans" in text_of(client.get(f"/users/{user_id}"))
    response = client.submit(f"/users/{user_id}/ip-rules", {"cidr": "192.0.2.1"}, form_page="/users/")
    assert response.status_code == 400 and "enterprise plans" in text_of(response)


def test_ssh_keys_are_added_listed_and_removed(signed_in, services, make_user):
    user_id, _ = make_user(signed_in.account)
    line = new_ed25519_line("scanner")
    fingerprint = auth.parse_public_key(line).fingerprint
    response = signed_in.submit(f"/users/{user_id}/keys", {"key": line}, form_page=f"/users/{user_id}")
    assert response.status_code == 303 and fingerprint in text_of(signed_in.get(f"/users/{user_id}"))
    again = signed_in.submit(f"/users/{user_id}/keys", {"key": line}, form_page=f"/users/{user_id}")
    assert again.status_code == 400 and "already authorised" in text_of(again)
    bad = signed_in.submit(f"/users/{user_id}/keys", {"key": "ssh-ed25519 nonsense"}, form_page=f"/users/{user_id}")
    assert bad.status_code == 400
    with services.db.session() as db:
        key_id = db.scalar(select(SshKey.id).where(SshKey.user_id == user_id))
    url = f"/users/{user_id}/keys/{key_id}/remove"
    assert fingerprint in text_of(signed_in.get(url))
    assert signed_in.submit(url).status_code == 303
    with services.db.session() as db:
        assert db.get(SshKey, key_id) is None
    assert f"ssh key {fingerprint} removed from user {user_id}" in admin_details(services, signed_in.account.id)


# -- deleting -------------------------------------------------------------------------------------------------

def test_deleting_says_what_goes_and_keeps_the_user_as_a_contact(signed_in, services, make_user):
    account = signed_in.account
    user_id, name = make_user(account)
    _, grantee = make_user(account)
    ws = Workspace(services, principal(account, user_id, name))
    ws.make_dir("/reports")
    upload(ws, "/reports/q1.csv", b"1")
    upload(ws, "/notes.txt", b"2")
    share(services, account, name, "/reports", grantee, "read")
    page = text_of(signed_in.get(f"/users/{user_id}/delete"))
    impact = page[page.index('id="impact"'):page.index("</div>", page.index('id="impact"'))]
    assert re.findall(r"<strong>(\d+)</strong>", impact) == ["2", "1", "1"]
    assert "stays on as a <strong>contact</strong>" in page
    response = signed_in.submit(f"/users/{user_id}/delete")
    assert response.status_code == 303 and response.headers["Location"] == "/users/"
    assert user_row(services, user_id) is None
    with services.db.session() as db:
        assert db.scalar(select(Contact.id).where(Contact.account_id == account.id)) is not None
    assert f"{name}@example.test" in text_of(signed_in.get("/contacts/"))
    assert f"user {user_id} deleted; kept as contact" in admin_details(services, account.id)
