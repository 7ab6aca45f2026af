"""Set-password links (invitations and resets): the token, its life and death, and the mail jobs."""
from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone

import pytest
from rq.job import Job
from sqlalchemy import select, update

from common.auth import password_links, set_policy
from common.errors import InvalidInput
from common.jobs.invitations import (
    FORGOT_PER_ADDRESS, FORGOT_PER_NAME, NOBODY, enqueue_password_link, request_password_reset, send_password_link,
)
from common.models import AuditEvent, PasswordLink, User
from common.passwords import verify_password
from tests.factories import login, random_ip, refused, with_account, with_user
from tests.fixtures import STRONG_PASSWORD
from tests.smtp import LINK, run_link_job

NEW_PASSWORD = "Lantern-Orchid-Basalt-77"


def issue(services, user_id, purpose="invite") -> str:
    return with_user(services, user_id, lambda s, user: password_links.issue(s, services.keyring, user, purpose))


def user_for(services, token):
    with services.db.session() as session:
        user = password_links.user_for(session, token)
        return user.id if user else None


def redeem(services, token, password=NEW_PASSWORD):
    with services.db.session() as session:
        return password_links.redeem(session, services.keyring, token, password, ip="192.0.2.9").id


def user_row(services, user_id) -> User:
    with services.db.session() as session:
        row = session.get(User, user_id)
        session.expunge(row)
        return row


def links_of(services, user_id) -> list[PasswordLink]:
    with services.db.session() as session:
        rows = session.scalars(select(PasswordLink).where(PasswordLink.user_id == user_id)
                               .order_by(PasswordLink.id)).all()
        session.expunge_all()
        return rows


# -- the token ---------------------------------------------------------------------------------

def test_a_link_stores_only_the_hash_of_a_256_bit_token_for_72_hours(services, account, make_user):
    user_id, _ = make_user(account)
    token = issue(services, user_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", token)  # 32 random bytes, URL-safe
    [link] = links_of(services, user_id)
    assert link.token_hash == hashlib.sha256(token.encode()).digest() and link.purpose == "invite"
    assert token.encode() not in link.token_hash
    assert abs(link.expires_at - datetime.now(timezone.utc) - timedelta(hours=72)) < timedelta(minutes=1)
    assert user_for(services, token) == user_id


def test_redeeming_sets_the_password_once_ends_sessions_and_is_audited(services, account, make_user):
    user_id, _ = make_user(account)
    with_user(services, user_id, lambda s, user: setattr(user, "must_change_password", True))
    before = user_row(services, user_id)
    token = issue(services, user_id, "reset")
    other = issue(services, user_id, "invite")
    assert redeem(services, token) == user_id
    after = user_row(services, user_id)
    assert verify_password(after.password_hash, NEW_PASSWORD) and not verify_password(after.password_hash,
                                                                                       STRONG_PASSWORD)
    assert after.session_version == before.session_version + 1 and not after.must_change_password
    assert after.password_changed_at > before.password_changed_at
    assert all(link.used_at for link in links_of(services, user_id))  # the invitation died too
    for dead in (token, other):
        assert user_for(services, dead) is None
        with pytest.raises(password_links.DeadLink, match="no longer works"):
            redeem(services, dead, "Another-Quite-Long-Passphrase-9")
    with services.db.session() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.account_id == account.id)
                                .order_by(AuditEvent.seq.desc())).first()
        assert (event.action, event.user_id, event.ip) == ("admin_change", user_id, "192.0.2.9")
        assert "set their password by reset link" in event.detail


def test_an_expired_link_is_dead(services, account, make_user):
    user_id, _ = make_user(account)
    token = issue(services, user_id)
    with services.db.session() as session:
        session.execute(update(PasswordLink).where(PasswordLink.user_id == user_id)
                        .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    assert user_for(services, token) is None
    with pytest.raises(password_links.DeadLink):
        redeem(services, token)
    assert verify_password(user_row(services, user_id).password_hash, STRONG_PASSWORD)


def test_a_new_link_kills_the_older_one_of_its_purpose_only(services, account, make_user):
    user_id, _ = make_user(account)
    first, invite = issue(services, user_id, "reset"), issue(services, user_id, "invite")
    second = issue(services, user_id, "reset")
    assert user_for(services, first) is None
    assert user_for(services, second) == user_for(services, invite) == user_id


def test_a_disabled_user_has_no_live_link(services, account, make_user):
    user_id, _ = make_user(account)
    token = issue(services, user_id)
    with_user(services, user_id, lambda s, user: setattr(user, "status", "disabled"))
    assert user_for(services, token) is None
    with pytest.raises(password_links.DeadLink):
        redeem(services, token)


def test_the_account_policy_applies_and_a_refusal_keeps_the_link(services, make_account, make_user):
    account = make_account("t5")
    user_id, username = make_user(account)
    with_account(services, account.id, lambda s, acct: set_policy(s, services.keyring, acct, min_length=30))
    token = issue(services, user_id)
    for weak in (NEW_PASSWORD, "password", username + "1"):
        with pytest.raises(InvalidInput):
            redeem(services, token, weak)
    assert user_for(services, token) == user_id
    assert verify_password(user_row(services, user_id).password_hash, STRONG_PASSWORD)
    redeem(services, token, "Lantern-Orchid-Basalt-Quiver-Mango-77")


@pytest.mark.parametrize("token", ["", "x", "A" * 43, "A" * 5000])
def test_unknown_tokens_are_dead(services, token):
    assert user_for(services, token) is None


# -- the jobs ----------------------------------------------------------------------------------

def test_an_invitation_is_queued_without_a_token_and_the_job_mails_the_link(services, mailer, smtp_server,
                                                                              account, make_user):
    user_id, username = make_user(account)
    version = user_row(services, user_id).session_version
    enqueue_password_link(services, user_id, "invite")
    assert links_of(services, user_id) == []  # the token is made by the job, never waits in Redis
    assert user_row(services, user_id).session_version == version  # an invitation ends no session
    assert run_link_job(mailer, user_id, "invite") is True
    [(recipients, message)] = smtp_server.messages
    assert recipients == [f"{username}@example.test"] and message["To"] == f"{username}@example.test"
    assert message["Subject"] == "Your Sealdrop account: choose your password"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    link, token = LINK.search(text).groups()
    assert link == f"{services.settings.public_url}/password/{token}" and f'href="{link}"' in html
    assert "72 hours" in text and user_for(services, token) == user_id
    assert username not in text and username not in html  # the page shows it, behind the token


def test_an_admin_reset_ends_sessions_at_once_and_mails_a_reset_link(services, mailer, smtp_server,
                                                                       account, make_user):
    user_id, username = make_user(account)
    version = user_row(services, user_id).session_version
    enqueue_password_link(services, user_id, "reset")
    assert user_row(services, user_id).session_version == version + 1
    for door in ("web", "ftps", "sftp"):  # the old password works nowhere any more
        refused(lambda: login(services, username, STRONG_PASSWORD, protocol=door))
    assert run_link_job(mailer, user_id, "reset") is True
    [(recipients, message)] = smtp_server.messages
    assert recipients == [f"{username}@example.test"]
    assert message["Subject"] == "Sealdrop: reset your password"
    token = LINK.search(message.get_body(("plain",)).get_content()).group(2)
    assert redeem(services, token) == user_id


def test_a_disabled_or_deleted_user_gets_no_mail(services, mailer, smtp_server, account, make_user):
    user_id, _ = make_user(account)
    with_user(services, user_id, lambda s, user: setattr(user, "status", "disabled"))
    assert send_password_link(mailer, user_id, "reset") is False
    assert send_password_link(mailer, NOBODY, "reset") is False
    assert smtp_server.messages == [] and links_of(services, user_id) == []


def test_a_forgotten_password_request_queues_a_reset_for_a_real_name_only(services, mailer, smtp_server,
                                                                           account, make_user):
    user_id, username = make_user(account)
    version = user_row(services, user_id).session_version
    request_password_reset(services, username.upper(), random_ip())  # names are case-insensitive
    assert user_row(services, user_id).session_version == version  # asking signs nobody out
    assert run_link_job(mailer, user_id, "reset") is True
    request_password_reset(services, "nobody-" + username, random_ip())
    assert Job.fetch(f"password-reset-{NOBODY}", connection=services.redis).args == (NOBODY, "reset")
    assert [recipients for recipients, _ in smtp_server.messages] == [[f"{username}@example.test"]]


def test_forgotten_password_requests_are_limited_per_name(services, mailer, smtp_server, account, make_user):
    user_id, username = make_user(account)
    for _ in range(FORGOT_PER_NAME):
        request_password_reset(services, username, random_ip())
        assert run_link_job(mailer, user_id, "reset") is True
    request_password_reset(services, username, random_ip())
    assert not Job.exists(f"password-reset-{user_id}", connection=services.redis)
    assert len(smtp_server.messages) == FORGOT_PER_NAME


def test_forgotten_password_requests_are_limited_per_address(services, mailer, smtp_server, account, make_user):
    user_id, username = make_user(account)
    address = random_ip()
    for n in range(FORGOT_PER_ADDRESS):
        request_password_reset(services, f"unknown-{n}-{username}", address)
    request_password_reset(services, username, address)
    assert not Job.exists(f"password-reset-{user_id}", connection=services.redis)
    request_password_reset(services, username, random_ip())  # the same name from elsewhere
    assert run_link_job(mailer, user_id, "reset") is True
    assert len(smtp_server.messages) == 1
