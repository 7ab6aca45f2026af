"""Sharing pages: the share dialog, Shared by me, the account's links (admins), the compliance slot,
and the CLI's `shares add` making the same share and the same mail as the dialog."""
from __future__ import annotations

import re

import pytest
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import func, select

from common import shares, sharing
from common.accounts import Actor
from common.jobs.invitations import send_share_invitation
from common.jobs.registry import MAIL_QUEUE
from common.models import Account, Contact, Share, ShareLink
from common.vfs import Workspace
from tests.factories import principal
from tests.fixtures import STRONG_PASSWORD
from tests.portal.conftest import PortalClient

LINK_IN_MAIL = re.compile(r"/s/([A-Za-z0-9_-]{43,})")
WHEN = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}")  # the expiry, a minute apart at most


def text_of(page) -> str:
    return page.get_data(as_text=True)


def folder_of(services, account, user_id, username, path="/projects") -> str:
    services.store.ensure_bucket()
    return Workspace(services, principal(account, user_id, username)).make_dir(path).id


@pytest.fixture
def mine(services, signed_in):
    """The signed-in admin's folder /projects: its ref."""
    account = signed_in.account
    return folder_of(services, account, account.admin_id, account.admin_username)


def counts(services, account_id):
    with services.db.session() as db:
        return tuple(db.scalar(select(func.count()).select_from(model).where(model.account_id == account_id))
                     for model in (Share, ShareLink, Contact))


def take_invitation(services, share_id) -> Job:
    job = Job.fetch(f"share-invite-{share_id}", connection=services.redis)
    assert job.origin == MAIL_QUEUE and job.args == (share_id,)
    job.delete()
    return job


def no_invitation(services, share_id) -> bool:
    try:
        Job.fetch(f"share-invite-{share_id}", connection=services.redis)
    except NoSuchJobError:
        return True
    return False


def only_share(services, account_id) -> Share:
    with services.db.session() as db:
        found = db.scalars(select(Share).where(Share.account_id == account_id)).one()
        db.expunge(found)
        return found


def sign_in_as(app, username) -> PortalClient:
    client = app.test_client()
    assert client.sign_in(username, STRONG_PASSWORD).status_code == 302
    return client


def share_as_owner(services, account, folder_ref, to, permission="read", **link):
    """Share through the core as the account's admin (for pages that list what exists)."""
    return shares.share_with(services, account.admin_id, int(folder_ref[1:]), to=to, permission=permission,
                             actor=Actor("web", "127.0.0.1", account.admin_id, account.admin_username),
                             link=shares.LinkOptions(**link))


def set_policy(services, account_id, **values):
    with services.db.session() as db:
        for key, value in values.items():
            setattr(db.get(Account, account_id), key, value)


# -- the share button and the dialog -------------------------------------------------------------

def test_the_share_button_is_on_my_folders_only(signed_in, mine, services):
    assert 'id="share-folder"' in text_of(signed_in.get(f"/files/folder/{mine}"))
    assert 'id="share-folder"' not in text_of(signed_in.get("/files/"))
    assert 'id="share-folder"' not in text_of(signed_in.get("/files/folder/shared"))
    page = text_of(signed_in.get(f"/shares/folder/{mine}"))
    assert "Links last at most 30 days" in page and 'value="30"' in page and "Request files" in page


def test_sharing_with_a_user_of_the_account(signed_in, mine, services, make_user, portal_app):
    account = signed_in.account
    _, guest = make_user(account)
    response = signed_in.submit(f"/shares/folder/{mine}", {"to": guest, "permission": "write",
                                                          "expires_in_days": "30"})
    assert response.status_code == 303 and response.headers["Location"] == "/shares/"
    share = only_share(services, account.id)
    assert (share.permission, share.grantee_contact_id) == ("write", None) and no_invitation(services, share.id)
    assert counts(services, account.id) == (1, 0, 0)
    listed = sign_in_as(portal_app, guest).get("/files/folder/shared")
    assert account.admin_username in text_of(listed)


def test_sharing_with_a_contact_makes_the_link_and_queues_the_mail(signed_in, mine, services):
    account = signed_in.account
    response = signed_in.submit(f"/shares/folder/{mine}", {
        "to": "partner@example.test", "permission": "read", "expires_in_days": "5", "password": "a long passphrase",
        "max_downloads": "4"})
    assert response.status_code == 303
    share = only_share(services, account.id)
    take_invitation(services, share.id)
    with services.db.session() as db:
        link = db.scalars(select(ShareLink).where(ShareLink.share_id == share.id)).one()
        assert (link.max_uses, link.password_hash is not None, link.created_by_id) == (4, True, account.admin_id)
    page = text_of(signed_in.get("/shares/"))
    assert "partner@example.test" in page and "expires in 4 days" in page and "0 of 4 downloads" in page


@pytest.mark.parametrize("form, policy, message", [
    ({"to": "not an email"}, {}, "valid email address"),
    ({"to": "c@example.test", "expires_in_days": "31"}, {}, "from 1 to 30 days"),
    ({"to": "c@example.test", "expires_in_days": "8"}, {"link_max_days": 7}, "from 1 to 7 days"),
    ({"to": "c@example.test"}, {"link_password_required": True}, "requires a password"),
    ({"to": "c@example.test", "permission": "request"}, {"request_links_allowed": False}, "Not a valid choice"),
    ({"to": "c@example.test", "max_downloads": "0"}, {}, "At least 1 download"),
    ({"to": ""}, {}, "This field is required"),
], ids=["bad-email", "beyond-default-policy", "beyond-policy", "password-required", "request-not-allowed",
        "no-downloads", "nobody"])
def test_the_dialog_refuses_what_the_policy_or_the_address_does_not_allow(signed_in, mine, services, form,
                                                                         policy, message):
    set_policy(services, signed_in.account.id, **policy)
    data = {"permission": "read", "expires_in_days": form.pop("expires_in_days", "")} | form
    response = signed_in.submit(f"/shares/folder/{mine}", data)
    assert response.status_code == 400 and message in text_of(response)
    assert counts(services, signed_in.account.id) == (0, 0, 0)


def test_only_the_owner_may_share_and_other_tenants_folders_are_not_found(signed_in, mine, services, make_user,
                                                                         make_account, portal_app):
    account = signed_in.account
    guest_id, guest = make_user(account)
    share_as_owner(services, account, mine, guest, "write")
    as_guest = sign_in_as(portal_app, guest)
    assert as_guest.get(f"/shares/folder/{mine}").status_code == 403  # shared with them, not theirs
    assert as_guest.submit(f"/shares/folder/{mine}", {"to": "x@example.test", "permission": "read"},
                           form_page="/shares/").status_code == 403
    assert as_guest.get("/shares/folder/root").status_code == 403
    stranger = make_account()
    theirs = folder_of(services, stranger, stranger.admin_id, stranger.admin_username)
    assert signed_in.get(f"/shares/folder/{theirs}").status_code == 404
    assert signed_in.submit(f"/shares/folder/{theirs}", {"to": "x@example.test", "permission": "read"},
                            form_page="/shares/").status_code == 404
    assert signed_in.get("/shares/folder/bogus").status_code == 404
    assert counts(services, stranger.id) == (0, 0, 0) and counts(services, account.id) == (1, 0, 0)


# -- shared by me ----------------------------------------------------------------------------

def test_shared_by_me_lists_my_shares_and_unshares_after_confirmation(signed_in, mine, services, make_user):
    account = signed_in.account
    _, guest = make_user(account)
    share = share_as_owner(services, account, mine, guest, "read")
    page = text_of(signed_in.get("/shares/"))
    assert guest in page and "projects" in page and "in their Shared folder" in page
    confirm = signed_in.get(f"/shares/{share.share_id}/remove")
    assert confirm.status_code == 200 and "Stop sharing" in text_of(confirm)
    assert counts(services, account.id) == (1, 0, 0)  # asking is not doing
    response = signed_in.submit(f"/shares/{share.share_id}/remove")
    assert response.status_code == 303 and counts(services, account.id) == (0, 0, 0)
    assert "no longer shared" in text_of(signed_in.get("/shares/"))


def test_a_revoked_link_shows_revoked_and_a_new_link_goes_by_mail(signed_in, mine, services):
    account = signed_in.account
    shared = share_as_owner(services, account, mine, "c@example.test")
    take_invitation(services, shared.share_id)
    assert signed_in.get(f"/shares/links/{shared.link_id}/revoke").status_code == 200
    assert signed_in.submit(f"/shares/links/{shared.link_id}/revoke").status_code == 303
    assert "revoked" in text_of(signed_in.get("/shares/"))
    response = signed_in.submit(f"/shares/{shared.share_id}/new-link", {"expires_in_days": "3"})
    assert response.status_code == 303
    take_invitation(services, shared.share_id)
    with services.db.session() as db:
        states = [row.state for row in shares.shares_by(db, services.keyring, account.admin_id)[0].links]
    assert states == [shares.ACTIVE, shares.REVOKED]
    refused = signed_in.submit(f"/shares/{shared.share_id}/new-link", {"expires_in_days": "99"})
    assert refused.status_code == 400 and "from 1 to 30 days" in text_of(refused)


def test_a_user_share_has_no_link_to_send(signed_in, mine, services, make_user):
    _, guest = make_user(signed_in.account)
    share = share_as_owner(services, signed_in.account, mine, guest)
    assert signed_in.get(f"/shares/{share.share_id}/new-link").status_code == 404


def test_shares_and_links_of_others_are_not_found_and_stay_as_they_were(signed_in, mine, services, make_user,
                                                                       make_account, portal_app):
    account = signed_in.account
    mine_shared = share_as_owner(services, account, mine, "c@example.test")
    take_invitation(services, mine_shared.share_id)
    colleague_id, colleague = make_user(account)
    stranger = make_account()
    theirs = folder_of(services, stranger, stranger.admin_id, stranger.admin_username)
    their_share = share_as_owner(services, stranger, theirs, "d@example.test")
    take_invitation(services, their_share.share_id)
    as_colleague = sign_in_as(portal_app, colleague)
    for client, share_id, link_id in ((signed_in, their_share.share_id, their_share.link_id),
                                      (as_colleague, mine_shared.share_id, mine_shared.link_id)):
        for url in (f"/shares/{share_id}/remove", f"/shares/links/{link_id}/revoke", f"/shares/{share_id}/new-link"):
            assert client.get(url).status_code == 404
            assert client.submit(url, {"expires_in_days": "3"}, form_page="/shares/").status_code == 404
    assert signed_in.submit(f"/shares/links/{their_share.link_id}/admin-revoke", form_page="/shares/links"
                            ).status_code == 404
    assert counts(services, stranger.id) == (1, 1, 1) and counts(services, account.id) == (1, 1, 1)
    with services.db.session() as db:
        assert db.get(ShareLink, their_share.link_id).revoked_at is None
        assert db.get(ShareLink, mine_shared.link_id).revoked_at is None
    assert no_invitation(services, their_share.share_id) and no_invitation(services, mine_shared.share_id)


# -- admins: every link of the account -----------------------------------------------------------

def test_admins_see_every_link_of_the_account_and_revoke_one(signed_in, services, make_user, portal_app):
    account = signed_in.account
    owner_id, owner = make_user(account)
    folder = folder_of(services, account, owner_id, owner, "/outbox")
    shared = shares.share_with(services, owner_id, int(folder[1:]), to="c@example.test", permission="write",
                               actor=Actor("web", "127.0.0.1", owner_id, owner))
    take_invitation(services, shared.share_id)
    page = text_of(signed_in.get("/shares/links"))
    assert owner in page and "outbox" in page and "c@example.test" in page and "active" in page
    as_owner = sign_in_as(portal_app, owner)
    assert as_owner.get("/shares/links").status_code == 403
    assert as_owner.get(f"/shares/links/{shared.link_id}/admin-revoke").status_code == 403
    assert signed_in.get(f"/shares/links/{shared.link_id}/admin-revoke").status_code == 200
    assert signed_in.submit(f"/shares/links/{shared.link_id}/admin-revoke").status_code == 303
    with services.db.session() as db:
        assert db.get(ShareLink, shared.link_id).revoked_at is not None
    assert "revoked" in text_of(as_owner.get("/shares/"))


def test_the_compliance_page_counts_open_links(signed_in, mine, services):
    account = signed_in.account
    empty = text_of(signed_in.get("/compliance/"))
    assert "0 open links" in empty and "/shares/links" in empty
    shared = share_as_owner(services, account, mine, "c@example.test", expires_in_days=2)
    take_invitation(services, shared.share_id)
    page = text_of(signed_in.get("/compliance/"))
    assert "1 open link" in page and "1 without a password" in page and "the soonest expires" in page


@pytest.mark.parametrize("url", ["/shares/folder/{ref}", "/shares/{share}/remove", "/shares/links/{link}/revoke",
                                 "/shares/{share}/new-link", "/shares/links/{link}/admin-revoke"])
def test_every_change_wants_its_csrf_token(signed_in, mine, services, url):
    account = signed_in.account
    shared = share_as_owner(services, account, mine, "c@example.test")
    take_invitation(services, shared.share_id)
    target = url.format(ref=mine, share=shared.share_id, link=shared.link_id)
    response = signed_in.post(target, data={"to": "d@example.test", "permission": "read", "expires_in_days": "3"})
    assert response.status_code == 400
    assert counts(services, account.id) == (1, 1, 1)
    with services.db.session() as db:
        assert db.get(ShareLink, shared.link_id).revoked_at is None
    assert no_invitation(services, shared.share_id)


@pytest.mark.parametrize("url", ["/shares/", "/shares/folder/n1", "/shares/1/remove", "/shares/links"])
def test_every_page_wants_a_signed_in_user(client, url):
    response = client.get(url)
    assert response.status_code == 302 and response.headers["Location"].startswith("/signin")


# -- the CLI and the dialog: the same share, the same mail -------------------------------------------

def mailed(mailer, smtp_server, share_id):
    take_invitation(mailer, share_id)
    before = len(smtp_server.messages)
    assert send_share_invitation(mailer, share_id)
    assert len(smtp_server.messages) == before + 1
    recipients, message = smtp_server.messages[-1]
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    token = LINK_IN_MAIL.search(text).group(1)
    return (recipients, message["Subject"], WHEN.sub("WHEN", text.replace(token, "TOKEN")),
            WHEN.sub("WHEN", html.replace(token, "TOKEN")), token)


def share_rows(services, account_id):
    with services.db.session() as db:
        share = db.scalars(select(Share).where(Share.account_id == account_id)).one()
        link = db.scalars(select(ShareLink).where(ShareLink.share_id == share.id)).one()
        contact = db.get(Contact, share.grantee_contact_id)
        email = services.keyring.account(db, account_id).open_text(contact.email_sealed, "email")
        return ((share.permission, share.grantee_user_id, email, share.arrivals_pending),
                (link.permission, link.max_uses, link.password_hash is not None, link.revoked_at,
                 round((link.expires_at - link.created_at).total_seconds() / 3600)), link.id)


def test_the_cli_and_the_share_dialog_make_the_same_share_and_the_same_mail(
        signed_in, services, mailer, smtp_server, make_account, portal_app):
    by_page = signed_in.account
    by_cli = make_account()
    for account in (by_page, by_cli):
        folder_of(services, account, account.admin_id, account.admin_username, "/outbox")
    page_ref = folder_of(services, by_page, by_page.admin_id, by_page.admin_username, "/outbox/reports")
    folder_of(services, by_cli, by_cli.admin_id, by_cli.admin_username, "/outbox/reports")

    response = signed_in.submit(f"/shares/folder/{page_ref}", {
        "to": "partner@example.test", "permission": "write", "expires_in_days": "9", "password": "a long passphrase",
        "max_downloads": "5"})
    assert response.status_code == 303
    result = portal_app.test_cli_runner().invoke(args=["shares", "add", by_cli.name, by_cli.admin_username, "/outbox/reports",
                 "--to", "partner@example.test", "--perm", "write", "--expires-days", "9",
                 "--link-password", "a long passphrase", "--max-downloads", "5"])
    assert result.exit_code == 0, result.output

    page_share, page_link, _ = share_rows(services, by_page.id)
    cli_share, cli_link, cli_link_id = share_rows(services, by_cli.id)
    assert page_share == cli_share == ("write", None, "partner@example.test", 0)
    assert page_link == cli_link == ("write", 5, True, None, 9 * 24)
    page_mail = mailed(mailer, smtp_server, only_share(services, by_page.id).id)
    cli_mail = mailed(mailer, smtp_server, only_share(services, by_cli.id).id)
    assert page_mail[:4] == cli_mail[:4] and page_mail[0] == ["partner@example.test"]
    assert page_mail[4] != cli_mail[4]
    with services.db.session() as db:  # the mailed token opens the link it was issued for
        assert sharing.live_link(db, cli_mail[4]).id == cli_link_id


def test_the_mailed_link_opens_shows_as_used_and_dies_when_revoked_from_my_page(
        signed_in, mine, services, mailer, smtp_server, portal_app):
    shared = share_as_owner(services, signed_in.account, mine, "c@example.test")
    *_, token = mailed(mailer, smtp_server, shared.share_id)
    visitor = portal_app.test_client()
    assert "last used never" in " ".join(text_of(signed_in.get("/shares/")).split())
    assert visitor.get(f"/s/{token}").status_code == 200
    assert "last used never" not in " ".join(text_of(signed_in.get("/shares/")).split())
    assert signed_in.submit(f"/shares/links/{shared.link_id}/revoke").status_code == 303
    assert visitor.get(f"/s/{token}").status_code == 404  # the same visitor's next request
