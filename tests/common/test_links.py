"""Share links in the core (real Postgres, Redis, S3): the account's link policy, tokens made
only by the mail job, what kills a link, download counting, password limits, request links,
uploads that never overwrite, and the arrivals digest."""
from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from common import accounts, passwords, refs, sharing
from common.errors import InvalidInput, NotFound, PermissionDenied
from common.jobs.arrivals import send_arrival_digests
from common.jobs.invitations import send_share_invitation
from common.models import Contact, Share, ShareLink, User
from common.vfs import Principal, Workspace
from tests.links import events, make_link, owner_workspace, set_policy, shared_projects, write_file


def visitor(services, account, share_id, link_id=None) -> Workspace:
    return Workspace(services, Principal.for_link(share_id, account.id, ip="198.51.100.7", link_id=link_id))


def is_live(services, token) -> bool:
    with services.db.session() as session:
        return sharing.live_link(session, token) is not None


def test_a_link_follows_the_account_policy(services, account):
    share_id = shared_projects(services, account, "read")
    link_id, token = make_link(services, account, share_id)
    with services.db.session() as session:
        link = session.get(ShareLink, link_id)
        days = (link.expires_at - link.created_at).total_seconds() / 86400
        assert 29.9 < days < 30.01 and link.password_hash is None
    set_policy(services, account.id, link_max_days=7, link_password_required=True)
    with pytest.raises(InvalidInput):
        make_link(services, account, share_id, password="pw-1234-abcd", expires_in_days=8)
    with pytest.raises(InvalidInput):
        make_link(services, account, share_id)  # no password
    link_id, token = make_link(services, account, share_id, password="pw-1234-abcd")
    with services.db.session() as session:
        link = session.get(ShareLink, link_id)
        assert link.password_hash.startswith("$argon2id$") and "pw-1234" not in link.password_hash
        assert (link.expires_at - link.created_at) < timedelta(days=7, seconds=5)


def test_request_links_only_where_the_policy_allows(services, account):
    share_id = shared_projects(services, account, "request")
    set_policy(services, account.id, request_links_allowed=False)
    with pytest.raises(PermissionDenied):
        make_link(services, account, share_id)


def test_a_new_link_holds_no_token_until_one_is_issued_and_a_new_token_ends_the_old(services, account):
    share_id = shared_projects(services, account, "read")
    link_id, first = make_link(services, account, share_id)
    with services.db.session() as session:
        second = sharing.issue_link_token(session, session.get(ShareLink, link_id))
    assert len(first) >= 43 and not is_live(services, first) and is_live(services, second)


@pytest.mark.parametrize("kill", ["revoke", "expire", "spend", "delete_folder", "delete_owner", "delete_contact"])
def test_what_kills_a_link(services, account, make_account, kill):
    share_id = shared_projects(services, account, "read")
    if kill == "delete_owner":  # a second admin stays, so the owner can be deleted
        with services.db.session() as session:
            owner = session.get(User, account.admin_id)
            owner.role = "user"
    link_id, token = make_link(services, account, share_id, max_downloads=1)
    assert is_live(services, token)
    with services.db.session() as session:
        link, share = session.get(ShareLink, link_id), session.get(Share, share_id)
        if kill == "revoke":
            actor = accounts.Actor(protocol="web", user_id=account.admin_id)
            sharing.revoke_link(session, services.keyring, link_id, actor=actor)
        elif kill == "expire":
            link.expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)
        elif kill == "spend":
            assert sharing.count_download(session, link_id) and not sharing.count_download(session, link_id)
        elif kill == "delete_folder":
            pass
        elif kill == "delete_owner":
            session.delete(session.get(User, account.admin_id))
        else:
            session.delete(session.get(Contact, share.grantee_contact_id))
    if kill == "delete_folder":
        owner_workspace(services, account).remove("/projects")
    assert not is_live(services, token)


def test_another_account_cannot_revoke_a_link(services, account, make_account):
    share_id = shared_projects(services, account, "read")
    link_id, token = make_link(services, account, share_id)
    other = make_account()
    with services.db.session() as session, pytest.raises(NotFound):
        sharing.revoke_link(session, services.keyring, link_id,
                            actor=accounts.Actor(protocol="web", user_id=other.admin_id))
    assert is_live(services, token)


def test_wrong_passwords_are_limited_per_link(services, account):
    share_id = shared_projects(services, account, "read")
    link_id, _ = make_link(services, account, share_id, password="right-pw-1234")
    with services.db.session() as session:
        link = session.get(ShareLink, link_id)
        assert sharing.check_link_password(services.redis, link, "right-pw-1234", "203.0.113.1")
        for n in range(sharing.LINK_PASSWORD_TRIES_PER_LINK):
            assert not sharing.check_link_password(services.redis, link, "wrong", f"203.0.113.{n + 10}")
        # Over the link's limit, even the right password opens nothing, from any address.
        assert not sharing.check_link_password(services.redis, link, "right-pw-1234", "203.0.113.200")


def test_parallel_guesses_check_no_more_passwords_than_the_limit(services, account, monkeypatch):
    share_id = shared_projects(services, account, "read")
    link_id, _ = make_link(services, account, share_id, password="right-pw-1234")
    checked = []
    verify = passwords.verify_password
    # Counts the checks against the link's hash (our own function, wrapped, not replaced); over
    # the limit only the dummy work runs.
    monkeypatch.setattr(passwords, "verify_password",
                        lambda stored, given: (stored and checked.append(1)) or verify(stored, given))
    with services.db.session() as session:
        link = session.get(ShareLink, link_id)
        session.expunge(link)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: sharing.check_link_password(
            services.redis, link, "wrong", f"198.51.100.{n + 1}"), range(3 * sharing.LINK_PASSWORD_TRIES_PER_LINK)))
    assert not any(results)
    assert len(checked) == sharing.LINK_PASSWORD_TRIES_PER_LINK


def test_wrong_passwords_are_limited_per_address(services, account):
    share_id = shared_projects(services, account, "read")
    per_link = sharing.LINK_PASSWORD_TRIES_PER_LINK
    ids = [make_link(services, account, share_id, password="right-pw-1234")[0]
           for _ in range(sharing.LINK_PASSWORD_TRIES_PER_ADDRESS // per_link + 1)]
    address = f"2001:db8:{secrets.randbelow(65536):x}::1"
    with services.db.session() as session:
        links = [session.get(ShareLink, link_id) for link_id in ids]
        for n in range(sharing.LINK_PASSWORD_TRIES_PER_ADDRESS):
            assert not sharing.check_link_password(services.redis, links[n // per_link], "wrong", address)
        fresh = links[-1]  # no wrong try on it yet; the address (its whole /64) is over its limit
        assert not sharing.check_link_password(services.redis, fresh, "right-pw-1234", address[:-1] + "2")
        assert sharing.check_link_password(services.redis, fresh, "right-pw-1234", "203.0.113.201")


def test_a_request_link_uploads_and_sees_nothing(services, account):
    share_id = shared_projects(services, account, "request")
    ws = visitor(services, account, share_id)
    write_file(ws, "/sent.txt", b"for you")
    for look in (lambda: ws.list_dir("/"), lambda: ws.make_dir("/new")):
        with pytest.raises(PermissionDenied):
            look()
    # Inside the folder, what exists answers exactly as what does not.
    for look in (lambda: ws.stat("/plan.txt"), lambda: ws.open_read("/plan.txt"), lambda: ws.stat("/nothing-here"),
                 lambda: ws.open_write("/drafts/x.txt"), lambda: ws.open_write("/nowhere/x.txt")):
        with pytest.raises(NotFound) as refused:
            look()
        assert refused.value.message == NotFound.default_message
    assert b"".join(owner_workspace(services, account).open_read("/projects/sent.txt")) == b"for you"


def test_a_write_link_never_overwrites_deletes_or_renames(services, account):
    share_id = shared_projects(services, account, "write")
    ws = visitor(services, account, share_id, link_id=99)
    entry = write_file(ws, "/plan.txt", b"visitor's plan")
    again = write_file(ws, "/plan.txt", b"another")
    assert (entry.name, again.name) == ("plan (2).txt", "plan (3).txt")
    owner = owner_workspace(services, account)
    assert b"".join(owner.open_read("/projects/plan.txt")) == b"the plan"
    assert b"".join(owner.open_read("/projects/plan (2).txt")) == b"visitor's plan"
    for change in (lambda: ws.remove("/plan.txt"), lambda: ws.rename("/plan.txt", "/p.txt")):
        with pytest.raises(PermissionDenied):
            change()
    assert ("link", "ok", "link 99", "198.51.100.7") in events(services, account.id, "upload")


def test_many_arrivals_make_one_mail_to_the_owner(services, account, mailer, smtp_server):
    share_id = shared_projects(services, account, "request")
    ws = visitor(services, account, share_id)
    for n in range(5):
        write_file(ws, f"/scan-{n}.pdf", b"scan")
    with services.db.session() as session:
        owner = session.get(User, account.admin_id)
        email = services.keyring.account(session, account.id).open_text(owner.email_sealed, "email")
        folder_id = session.get(Share, share_id).folder_id

    def mails_to_owner():
        return [message for to, message in smtp_server.messages if to == [email]]

    send_arrival_digests(mailer)
    assert mails_to_owner() == []  # too recent: more may come
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert send_arrival_digests(mailer, now=later) >= 1
    send_arrival_digests(mailer, now=later)
    [message] = mails_to_owner()
    body = message.get_body(("plain",)).get_content()
    assert "5 new files" in body and "scan-" not in body and "projects" not in body
    assert f"{mailer.settings.public_url}/files/folder/{refs.node_ref(folder_id)}" in body


def test_the_invitation_job_mails_a_token_of_the_newest_live_link(services, account):
    share_id = shared_projects(services, account, "read")
    link_id, _ = make_link(services, account, share_id, max_downloads=3)
    assert send_share_invitation(services, share_id)
    with services.db.session() as session:
        links = session.scalars(select(ShareLink).where(ShareLink.share_id == share_id)).all()
    assert [link.id for link in links] == [link_id]  # no second link was made
