"""Sharing as owners and admins do it: share, link and invitation in one call; my shares and the
account's links with their state; unsharing and revoking; the compliance figures of open links."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import func, select

from common import audit, compliance, shares
from common.accounts import Actor
from common.errors import InvalidInput, NotFound, PermissionDenied
from common.models import Account, AuditEvent, Contact, Share, ShareLink, User
from common.vfs import Workspace
from tests.factories import principal


@pytest.fixture
def owned(services, account, make_user):
    """An account whose user owns /projects; (account, owner id, owner name, folder id, workspace)."""
    services.store.ensure_bucket()
    owner_id, owner = make_user(account)
    ws = Workspace(services, principal(account, owner_id, owner))
    folder_id = int(ws.make_dir("/projects").id[1:])
    return account, owner_id, owner, folder_id, ws


def actor_of(owner_id, owner):
    return Actor("web", "127.0.0.1", owner_id, owner)


def invitation_job(services, share_id) -> Job | None:
    try:
        return Job.fetch(f"share-invite-{share_id}", connection=services.redis)
    except NoSuchJobError:
        return None


def rows(services, account_id):
    with services.db.session() as db:
        return tuple(db.scalar(select(func.count()).select_from(model).where(model.account_id == account_id))
                     for model in (Share, ShareLink, Contact))


def set_policy(services, account_id, **values):
    with services.db.session() as db:
        for key, value in values.items():
            setattr(db.get(Account, account_id), key, value)


def test_a_user_of_the_account_gets_the_share_and_no_link_or_mail(services, owned, make_user):
    account, owner_id, owner, folder_id, _ = owned
    _, guest = make_user(account)
    shared = shares.share_with(services, owner_id, folder_id, to=guest, permission="write",
                               actor=actor_of(owner_id, owner))
    assert shared.link_id is None and shared.permission == "write"
    assert rows(services, account.id) == (1, 0, 0)
    assert invitation_job(services, shared.share_id) is None


def test_a_contact_gets_the_share_a_link_with_its_options_and_a_queued_invitation(services, owned):
    account, owner_id, owner, folder_id, _ = owned
    shared = shares.share_with(services, owner_id, folder_id, to="Partner@Example.test", permission="read",
                               actor=actor_of(owner_id, owner),
                               link=shares.LinkOptions(expires_in_days=7, password="open sesame", max_downloads=3))
    with services.db.session() as db:
        link = db.get(ShareLink, shared.link_id)
        assert (link.share_id, link.permission, link.max_uses) == (shared.share_id, "read", 3)
        assert link.password_hash and "open sesame" not in link.password_hash
        assert abs(link.expires_at - datetime.now(timezone.utc) - timedelta(days=7)) < timedelta(minutes=5)
        assert link.created_by_id == owner_id
    job = invitation_job(services, shared.share_id)
    assert job is not None and job.args == (shared.share_id,)
    job.delete()


@pytest.mark.parametrize("to, link, policy, error", [
    ("not an email", shares.LinkOptions(), {}, InvalidInput),
    ("c@example.test", shares.LinkOptions(expires_in_days=31), {}, InvalidInput),
    ("c@example.test", shares.LinkOptions(expires_in_days=10), {"link_max_days": 5}, InvalidInput),
    ("c@example.test", shares.LinkOptions(), {"link_password_required": True}, InvalidInput),
    ("c@example.test", shares.LinkOptions(max_downloads=0), {}, InvalidInput),
], ids=["bad-email", "beyond-30-days", "beyond-policy", "password-required", "no-downloads"])
def test_a_refused_share_leaves_no_share_contact_link_or_mail(services, owned, to, link, policy, error):
    account, owner_id, owner, folder_id, _ = owned
    set_policy(services, account.id, **policy)
    with pytest.raises(error):
        shares.share_with(services, owner_id, folder_id, to=to, permission="read",
                          actor=actor_of(owner_id, owner), link=link)
    assert rows(services, account.id) == (0, 0, 0)


def test_request_links_only_where_the_account_allows_them_and_only_for_contacts(services, owned, make_user):
    account, owner_id, owner, folder_id, _ = owned
    _, guest = make_user(account)
    with pytest.raises(InvalidInput):
        shares.share_with(services, owner_id, folder_id, to=guest, permission="request", actor=actor_of(owner_id, owner))
    set_policy(services, account.id, request_links_allowed=False)
    with pytest.raises(PermissionDenied):
        shares.share_with(services, owner_id, folder_id, to="c@example.test", permission="request",
                          actor=actor_of(owner_id, owner))
    assert rows(services, account.id) == (0, 0, 0)
    set_policy(services, account.id, request_links_allowed=True)
    shared = shares.share_with(services, owner_id, folder_id, to="c@example.test", permission="request",
                               actor=actor_of(owner_id, owner))
    assert shared.permission == "request" and shared.link_id is not None
    invitation_job(services, shared.share_id).delete()


def test_only_the_owner_shares_and_never_the_home_itself(services, owned, make_user):
    account, owner_id, owner, folder_id, _ = owned
    other_id, other = make_user(account)
    with pytest.raises(PermissionDenied):
        shares.share_with(services, other_id, folder_id, to="c@example.test", permission="read",
                          actor=actor_of(other_id, other))
    with services.db.session() as db:
        home_id = db.get(User, owner_id).home_folder_id
    with pytest.raises(InvalidInput):
        shares.share_with(services, owner_id, home_id, to="c@example.test", permission="read",
                          actor=actor_of(owner_id, owner))
    assert rows(services, account.id) == (0, 0, 0)


def test_a_new_link_replaces_the_earlier_ones(services, owned):
    account, owner_id, owner, folder_id, _ = owned
    actor = actor_of(owner_id, owner)
    first = shares.share_with(services, owner_id, folder_id, to="c@example.test", permission="read", actor=actor)
    second = shares.send_new_link(services, owner_id, first.share_id, actor=actor,
                                  link=shares.LinkOptions(expires_in_days=2))
    with services.db.session() as db:
        mine = shares.shares_by(db, services.keyring, owner_id)
    assert [(link.id, link.state) for link in mine[0].links] == [(second.link_id, shares.ACTIVE),
                                                                (first.link_id, shares.REVOKED)]
    assert mine[0].links[0].days_left == 1  # two days from now, less the seconds gone by
    invitation_job(services, first.share_id).delete()


def test_my_shares_show_names_and_each_link_state(services, owned, make_user):
    account, owner_id, owner, folder_id, ws = owned
    actor = actor_of(owner_id, owner)
    _, guest = make_user(account)
    shares.share_with(services, owner_id, folder_id, to=guest, permission="read", actor=actor)
    shared = shares.share_with(services, owner_id, folder_id, to="c@example.test", permission="write", actor=actor,
                               link=shares.LinkOptions(max_downloads=2))
    with services.db.session() as db:
        link = db.get(ShareLink, shared.link_id)
        link.use_count = 2
        audit.record(db, services.keyring, audit.Event(action="link_access", protocol="link",
                                                       account_id=account.id, detail=f"link {link.id}"))
    with services.db.session() as db:
        mine = shares.shares_by(db, services.keyring, owner_id)
    assert [(row.folder, row.grantee, row.with_contact, row.permission) for row in mine] == [
        ("projects", "c@example.test", True, "write"), ("projects", guest, False, "read")]
    link_row = mine[0].links[0]
    assert (link_row.state, link_row.downloads, link_row.max_downloads) == (shares.USED_UP, 2, 2)
    assert link_row.last_used is not None and mine[1].links == []
    with services.db.session() as db:
        db.get(ShareLink, shared.link_id).expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)
    with services.db.session() as db:
        assert shares.shares_by(db, services.keyring, owner_id)[0].links[0].state == shares.EXPIRED
    invitation_job(services, shared.share_id).delete()


def test_unshare_and_revoke_reach_only_my_shares_and_my_account(services, owned, make_account, make_user):
    account, owner_id, owner, folder_id, _ = owned
    actor = actor_of(owner_id, owner)
    shared = shares.share_with(services, owner_id, folder_id, to="c@example.test", permission="read", actor=actor)
    invitation_job(services, shared.share_id).delete()
    other_id, other = make_user(account)
    stranger = make_account()
    with services.db.session() as db:
        with pytest.raises(NotFound):
            shares.unshare(db, services.keyring, other_id, shared.share_id, actor=actor_of(other_id, other))
        with pytest.raises(NotFound):
            shares.revoke_my_link(db, services.keyring, other_id, shared.link_id, actor=actor_of(other_id, other))
        with pytest.raises(NotFound):
            shares.revoke_account_link(db, services.keyring, stranger.id, shared.link_id,
                                       actor=actor_of(stranger.admin_id, stranger.admin_username))
    with services.db.session() as db:
        assert db.get(ShareLink, shared.link_id).revoked_at is None
        shares.revoke_my_link(db, services.keyring, owner_id, shared.link_id, actor=actor)
    with services.db.session() as db:
        assert db.get(ShareLink, shared.link_id).revoked_at is not None
        shares.unshare(db, services.keyring, owner_id, shared.share_id, actor=actor)
    assert rows(services, account.id) == (0, 0, 1)  # the contact stays a contact
    with services.db.session() as db:
        actions = list(db.scalars(select(AuditEvent.action).where(AuditEvent.account_id == account.id)
                                  .order_by(AuditEvent.seq)))
    assert actions[-2:] == ["share", "unshare"]


def test_the_account_links_name_owner_folder_and_contact_and_stay_in_the_account(services, owned, make_account):
    account, owner_id, owner, folder_id, _ = owned
    shared = shares.share_with(services, owner_id, folder_id, to="c@example.test", permission="read",
                               actor=actor_of(owner_id, owner))
    invitation_job(services, shared.share_id).delete()
    with services.db.session() as db:
        links = shares.account_links(db, services.keyring, account.id)
        assert shares.account_links(db, services.keyring, make_account().id) == []
    assert [(row.id, row.owner, row.folder, row.contact, row.state) for row in links] == [
        (shared.link_id, owner, "projects", "c@example.test", shares.ACTIVE)]


def test_open_links_in_the_compliance_figures(services, owned):
    account, owner_id, owner, folder_id, ws = owned
    actor = actor_of(owner_id, owner)
    set_policy(services, account.id, link_max_days=90)
    long = shares.share_with(services, owner_id, folder_id, to="a@example.test", permission="read", actor=actor,
                             link=shares.LinkOptions(expires_in_days=60))
    short = shares.share_with(services, owner_id, folder_id, to="b@example.test", permission="read", actor=actor,
                              link=shares.LinkOptions(expires_in_days=3, password="a long passphrase"))
    dead = shares.share_with(services, owner_id, folder_id, to="d@example.test", permission="read", actor=actor)
    with services.db.session() as db:
        shares.revoke_my_link(db, services.keyring, owner_id, dead.link_id, actor=actor)
    with services.db.session() as db:
        links = compliance.compliance_report(db, db.get(Account, account.id)).links
        soonest = db.get(ShareLink, short.link_id).expires_at
    assert (links.live, links.long_lived, links.without_password) == (2, 1, 1)
    assert links.soonest_expiry == soonest
    for shared in (long, short, dead):
        invitation_job(services, shared.share_id).delete()
