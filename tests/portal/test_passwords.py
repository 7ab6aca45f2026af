"""The set-password links from the mail and "Forgot password", through the portal and a real SMTP server."""
from __future__ import annotations

import html
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from rq.job import Job
from sqlalchemy import update

from common.auth import set_policy
from common.jobs.invitations import FORGOT_PER_ADDRESS, FORGOT_PER_NAME, enqueue_password_link
from common.models import PasswordLink
from common.passwords import verify_password
from tests.factories import with_account, with_user
from tests.fixtures import STRONG_PASSWORD
from tests.smtp import LINK, run_link_job

NEW_PASSWORD = "Lantern-Orchid-Basalt-77"
DEAD = "This link no longer works"
CSRF_VALUE = re.compile(r'(?<=name="csrf_token" )[^>]*')


def text_of(page) -> str:
    return html.unescape(page.get_data(as_text=True))


def mailed_link(mailer, smtp_server, user_id, purpose="invite") -> str:
    """Queue the user's set-password mail, run its job, and return the path of the link it carries."""
    enqueue_password_link(mailer, user_id, purpose)
    assert run_link_job(mailer, user_id, purpose) is True
    _, message = smtp_server.messages[-1]
    link = LINK.search(message.get_body(("plain",)).get_content()).group(1)
    assert link.startswith(mailer.settings.public_url + "/password/")
    return urlsplit(link).path


def password_hash(services, user_id) -> str:
    return with_user(services, user_id, lambda s, user: user.password_hash)


def set_new_password(client, path, password=NEW_PASSWORD):
    return client.submit(path, {"new": password, "confirm": password})


# -- the link --------------------------------------------------------------------------------

def test_the_invitation_link_sets_the_password_and_the_user_signs_in(client, portal_app, services, mailer,
                                                                      smtp_server, account, make_user):
    user_id, username = make_user(account)
    path = mailed_link(mailer, smtp_server, user_id)
    page = client.get(path)
    assert page.status_code == 200
    body = text_of(page)
    assert "Choose your password" in body and username in body and 'id="password-rules"' in body
    response = set_new_password(client, path)
    assert response.status_code == 302 and response.headers["Location"] == "/signin"
    assert "Your password is set" in text_of(client.get("/signin"))
    assert verify_password(password_hash(services, user_id), NEW_PASSWORD)
    assert client.sign_in(username, NEW_PASSWORD).status_code == 302
    assert client.get("/files/").status_code == 200
    stranger = portal_app.test_client()
    assert stranger.sign_in(username, STRONG_PASSWORD).status_code == 200  # the old password is refused


def test_a_link_works_once(client, portal_app, services, mailer, smtp_server, account, make_user):
    user_id, _ = make_user(account)
    path = mailed_link(mailer, smtp_server, user_id, "reset")
    assert set_new_password(client, path).status_code == 302
    again = portal_app.test_client()
    page = again.get(path)
    assert page.status_code == 410 and DEAD in text_of(page) and 'href="/forgot"' in text_of(page)
    posted = again.post(path, data={"new": "Other-Long-Passphrase-31", "confirm": "Other-Long-Passphrase-31",
                                    "csrf_token": again.csrf_token("/forgot")})
    assert posted.status_code == 410
    assert verify_password(password_hash(services, user_id), NEW_PASSWORD)


def test_an_expired_link_is_refused(client, services, mailer, smtp_server, account, make_user):
    user_id, _ = make_user(account)
    path = mailed_link(mailer, smtp_server, user_id)
    token = client.csrf_token(path)  # the form page, while the link still works
    with services.db.session() as session:
        session.execute(update(PasswordLink).where(PasswordLink.user_id == user_id)
                        .values(expires_at=datetime.now(timezone.utc) - timedelta(minutes=1)))
    assert client.get(path).status_code == 410
    response = client.post(path, data={"new": NEW_PASSWORD, "confirm": NEW_PASSWORD, "csrf_token": token})
    assert response.status_code == 410 and DEAD in text_of(response)
    assert verify_password(password_hash(services, user_id), STRONG_PASSWORD)


def test_a_new_link_kills_the_old_one(client, services, mailer, smtp_server, account, make_user):
    user_id, _ = make_user(account)
    old = mailed_link(mailer, smtp_server, user_id)
    new = mailed_link(mailer, smtp_server, user_id)
    assert client.get(old).status_code == 410
    assert set_new_password(client, new).status_code == 302


def test_the_form_enforces_the_policy_and_its_confirmation(client, services, mailer, smtp_server, account,
                                                           make_user):
    user_id, username = make_user(account)
    with_account(services, account.id, lambda s, acct: set_policy(s, services.keyring, acct, min_length=30,
                                                                  symbol=True))
    path = mailed_link(mailer, smtp_server, user_id)
    assert "At least 30 characters." in text_of(client.get(path))
    short = set_new_password(client, path)  # strong, but shorter than the account's minimum
    assert short.status_code == 400 and "at least 30 characters" in text_of(short)
    guessable = set_new_password(client, path, "password" * 4 + "!")
    assert guessable.status_code == 400 and "guess" in text_of(guessable).lower()  # zxcvbn's feedback
    differ = client.submit(path, {"new": "Lantern-Orchid-Basalt-Quiver-Mango-77",
                                  "confirm": "Lantern-Orchid-Basalt-Quiver-Mango-78"})
    assert differ.status_code == 400 and "differ" in text_of(differ)
    assert verify_password(password_hash(services, user_id), STRONG_PASSWORD)
    assert set_new_password(client, path, "Lantern-Orchid-Basalt-Quiver-Mango-77").status_code == 302


def test_setting_the_password_wants_its_csrf_token(client, services, mailer, smtp_server, account, make_user):
    user_id, _ = make_user(account)
    path = mailed_link(mailer, smtp_server, user_id)
    response = client.post(path, data={"new": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert response.status_code == 400
    assert verify_password(password_hash(services, user_id), STRONG_PASSWORD)
    assert client.get(path).status_code == 200  # the link still works


def test_setting_the_password_signs_out_every_session_and_signs_in_nobody(portal_app, services, mailer,
                                                                          smtp_server, account, make_user):
    user_id, username = make_user(account)
    elsewhere = portal_app.test_client()
    assert elsewhere.sign_in(username, STRONG_PASSWORD).status_code == 302
    browser = portal_app.test_client()
    assert browser.sign_in(username, STRONG_PASSWORD).status_code == 302
    path = mailed_link(mailer, smtp_server, user_id, "reset")  # an admin's reset ends sessions at once
    assert elsewhere.get("/files/").status_code == 302
    assert set_new_password(browser, path).status_code == 302
    assert browser.get("/files/").status_code == 302  # to sign in: no automatic sign-in


def test_a_disabled_user_link_is_dead(client, services, mailer, smtp_server, account, make_user):
    user_id, _ = make_user(account)
    path = mailed_link(mailer, smtp_server, user_id)
    with_user(services, user_id, lambda s, user: setattr(user, "status", "disabled"))
    assert client.get(path).status_code == 410


# -- forgot password ---------------------------------------------------------------------------

def forgot(client, username):
    return client.submit("/forgot", {"username": username})


def test_the_sign_in_page_links_to_forgot_password(client):
    assert 'href="/forgot"' in text_of(client.get("/signin"))
    assert client.get("/forgot").status_code == 200


def test_the_reply_is_the_same_for_a_real_and_an_unknown_name_and_only_the_real_one_mails(
        portal_app, services, mailer, smtp_server, account, make_user):
    user_id, username = make_user(account)
    replies = []
    for name in (username, "nobody-" + username, "not a valid name!"):
        client = portal_app.test_client()
        response = forgot(client, name)
        shown = CSRF_VALUE.sub("", text_of(client.get("/signin")))  # each session has its own token
        replies.append((response.status_code, response.headers["Location"], response.get_data(), shown))
    assert replies[0] == replies[1] == replies[2]
    assert replies[0][0] == 302 and "a link to choose a new password is on its way" in replies[0][3]
    assert run_link_job(mailer, user_id, "reset") is True
    [(recipients, message)] = smtp_server.messages
    assert recipients == [f"{username}@example.test"] and message["Subject"] == "Sealdrop: reset your password"


def test_forgot_password_is_limited_per_name(portal_app, services, mailer, smtp_server, account, make_user):
    user_id, username = make_user(account)
    replies = set()
    for _ in range(FORGOT_PER_NAME + 1):
        response = forgot(portal_app.test_client(), username)  # each from an address of its own
        replies.add((response.status_code, response.get_data()))
        if Job.exists(f"password-reset-{user_id}", connection=services.redis):
            run_link_job(mailer, user_id, "reset")
    assert len(replies) == 1 and len(smtp_server.messages) == FORGOT_PER_NAME


def test_forgot_password_is_limited_per_address(portal_app, services, mailer, smtp_server, account, make_user):
    user_id, username = make_user(account)
    client = portal_app.test_client()
    for n in range(FORGOT_PER_ADDRESS):
        forgot(client, f"unknown{n}-{username}")
    over = forgot(client, username)
    assert over.status_code == 302
    assert not Job.exists(f"password-reset-{user_id}", connection=services.redis)
    other = portal_app.test_client()
    assert other.environ_base["REMOTE_ADDR"] != client.environ_base["REMOTE_ADDR"]
    forgot(other, username)
    assert run_link_job(mailer, user_id, "reset") is True and len(smtp_server.messages) == 1


def test_forgot_password_wants_its_csrf_token(client, services, account, make_user):
    user_id, username = make_user(account)
    response = client.post("/forgot", data={"username": username})
    assert response.status_code == 400
    assert not Job.exists(f"password-reset-{user_id}", connection=services.redis)


def test_forgot_password_without_a_name_is_a_validation_error(client):
    response = client.submit("/forgot", {"username": ""})
    assert response.status_code == 400 and "This field is required" in text_of(response)


def test_a_reset_by_forgot_password_ends_no_session_until_the_password_is_set(
        portal_app, services, mailer, smtp_server, account, make_user):
    user_id, username = make_user(account)
    signed_in = portal_app.test_client()
    assert signed_in.sign_in(username, STRONG_PASSWORD).status_code == 302
    forgot(portal_app.test_client(), username)  # anyone may ask; that signs nobody out
    assert signed_in.get("/files/").status_code == 200
    assert run_link_job(mailer, user_id, "reset") is True
    path = urlsplit(LINK.search(smtp_server.messages[-1][1].get_body(("plain",)).get_content()).group(1)).path
    assert set_new_password(portal_app.test_client(), path).status_code == 302
    assert signed_in.get("/files/").status_code == 302
    assert with_user(services, user_id, lambda s, user: user.session_version) > 1
