"""Shares, the /Shared view, the admins' /Audit Logs, user deletion, and tenant isolation."""
from __future__ import annotations

from email import message_from_bytes, policy

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from sqlalchemy import select

from common import accounts, audit
from common.crypto import token_hash
from common.errors import (
    InvalidInput, NotFound, PermissionDenied, SealdropError,
)
from common.jobs.invitations import send_share_invitation
from common.models import Contact, FileVersion, Node, Share, ShareLink, User
from common.vfs import Workspace
from tests.factories import principal, share


def put(ws, path, data=b"data"):
    up = ws.open_write(path)
    up.write(data)
    return up.commit()


@pytest.fixture
def team(services, make_account, make_user):
    services.store.ensure_bucket()
    account = make_account()
    owner_id, owner = make_user(account)
    guest_id, guest = make_user(account)
    owner_ws = Workspace(services, principal(account, owner_id, owner))
    guest_ws = Workspace(services, principal(account, guest_id, guest))
    owner_ws.make_dir("/projects")
    put(owner_ws, "/projects/plan.txt", b"the plan")
    return account, owner, owner_ws, guest, guest_ws, guest_id


def test_read_share_lists_and_downloads_but_never_changes(services, team):
    account, owner, owner_ws, guest, guest_ws, _ = team
    share(services, account, owner, "/projects", guest, "read")
    base = f"/Shared/{owner}/projects"
    assert [e.name for e in guest_ws.list_dir("/Shared")] == [owner]
    assert [e.name for e in guest_ws.list_dir(base)] == ["plan.txt"]
    assert b"".join(guest_ws.open_read(base + "/plan.txt")) == b"the plan"
    for attempt in (lambda: put(guest_ws, base + "/new.txt"), lambda: guest_ws.make_dir(base + "/d"),
                    lambda: guest_ws.remove(base + "/plan.txt"),
                    lambda: guest_ws.rename(base + "/plan.txt", base + "/x.txt")):
        with pytest.raises(PermissionDenied):
            attempt()


def test_write_share_allows_changes_inside_but_not_on_the_folder(services, team):
    account, owner, owner_ws, guest, guest_ws, _ = team
    share(services, account, owner, "projects", guest, "write")
    base = f"/Shared/{owner}/projects"
    put(guest_ws, base + "/from-guest.txt", b"hi")
    guest_ws.make_dir(base + "/sub")
    guest_ws.rename(base + "/from-guest.txt", base + "/sub/moved.txt")
    assert b"".join(owner_ws.open_read("/projects/sub/moved.txt")) == b"hi"
    guest_ws.remove(base + "/plan.txt")
    with pytest.raises(NotFound):
        owner_ws.stat("/projects/plan.txt")
    for attempt in (lambda: guest_ws.remove(base), lambda: guest_ws.rename(base, f"/Shared/{owner}/other")):
        with pytest.raises(PermissionDenied):
            attempt()
    with services.db.session() as session:
        owner_row = accounts.find_user(session, services.keyring, owner)
        nodes = session.scalars(select(Node).where(Node.account_id == account.id, Node.kind == "file")).all()
        assert {n.owner_id for n in nodes} == {owner_row.id}  # grantee uploads belong to the owner


def test_same_folder_names_from_one_owner_get_numbered(services, team):
    account, owner, owner_ws, guest, guest_ws, _ = team
    owner_ws.make_dir("/a")
    owner_ws.make_dir("/a/projects")
    share(services, account, owner, "/projects", guest, "read")
    share(services, account, owner, "/a/projects", guest, "read")
    assert [e.name for e in guest_ws.list_dir(f"/Shared/{owner}")] == ["projects", "projects (2)"]


def test_sharing_never_crosses_accounts(services, team, make_account):
    account, owner, *_ = team
    other = make_account()
    with pytest.raises(InvalidInput) as foreign:
        share(services, account, owner, "/projects", other.admin_username, "read")
    with pytest.raises(InvalidInput) as unknown:
        share(services, account, owner, "/projects", "no-such-user-" + other.name, "read")
    assert foreign.value.message == unknown.value.message  # another account is never named


def test_share_with_email_creates_a_contact(services, team):
    account, owner, *_ = team
    share(services, account, owner, "/projects", "Partner@Example.test", "write")
    share(services, account, owner, "/projects", "partner@example.test", "read")
    with services.db.session() as session:
        contacts = session.scalars(select(Contact).where(Contact.account_id == account.id)).all()
        assert len(contacts) == 1
        shares = session.scalars(select(Share).where(Share.grantee_contact_id == contacts[0].id)).all()
        assert [s.permission for s in shares] == ["read"]


def test_audit_logs_are_for_admins_only(services, team):
    account, owner, owner_ws, *_ = team
    admin_ws = Workspace(services, principal(account, account.admin_id, account.admin_username, "admin"))
    assert "Audit Logs" in [e.name for e in admin_ws.list_dir("/")]
    assert "Audit Logs" not in [e.name for e in owner_ws.list_dir("/")]
    with pytest.raises(NotFound):
        owner_ws.list_dir("/Audit Logs")
    with pytest.raises(PermissionDenied):
        put(admin_ws, "/Audit Logs/forged.csv")


def test_deleting_a_user_purges_their_files_and_shares_and_keeps_a_contact(services, team):
    account, owner, owner_ws, guest, guest_ws, guest_id = team
    share(services, account, owner, "/projects", guest, "read")
    with services.db.session() as session:
        acct = session.get(accounts.Account, account.id)
        accounts.delete_user(session, services.keyring, acct,
                             accounts.find_account_user(session, services.keyring, acct, owner))
    assert guest_ws.list_dir("/Shared") == []
    with services.db.session() as session:
        assert accounts.find_user(session, services.keyring, owner) is None
        assert session.scalars(select(Node).where(Node.account_id == account.id, Node.kind == "file")).all() == []
        keys = services.keyring.account(session, account.id)
        emails = {keys.open_text(c.email_sealed, "email")
                  for c in session.scalars(select(Contact).where(Contact.account_id == account.id))}
        assert f"{owner}@example.test" in emails
        assert audit.verify_chain(session, account.id).ok


def test_the_last_admin_cannot_be_deleted(services, make_account):
    account = make_account()
    with services.db.session() as session:
        acct = session.get(accounts.Account, account.id)
        with pytest.raises(PermissionDenied):
            accounts.delete_user(session, services.keyring, acct, session.get(User, account.admin_id))


def test_folder_to_share_must_exist_and_be_inside(services, team):
    account, owner, *_ = team
    with pytest.raises(NotFound):
        share(services, account, owner, "/nope", "x@example.test", "read")
    with pytest.raises(InvalidInput):
        share(services, account, owner, "/", "x@example.test", "read")


# -- no path reaches another account --------------------------------------------------------

SEGMENTS = st.sampled_from(["..", ".", "", "Shared", "Audit Logs", "projects", "plan.txt", "victim",
                            "%2e%2e", "..\\..", "\u2025", "projects\x00", "PROJECTS"])


@pytest.fixture
def two_tenants(services, team, make_account):
    account, owner, owner_ws, *_ = team
    attacker = make_account()
    ws = Workspace(services, principal(attacker, attacker.admin_id, attacker.admin_username, "admin"))
    return ws, account.id, attacker.id


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(SEGMENTS, min_size=0, max_size=6), st.booleans())
def test_no_path_escapes_into_another_account(two_tenants, segments, absolute):
    ws, victim_account, attacker_account = two_tenants
    path = ("/" if absolute else "") + "/".join(segments)
    try:
        entry = ws.stat(path)
        if entry.version is not None:  # a file: its content must be the attacker's own
            with ws.services.db.session() as session:
                assert session.get(FileVersion, entry.version).account_id == attacker_account
        names = [e.name for e in ws.list_dir(path)]
        assert "plan.txt" not in names and "projects" not in names
    except SealdropError:
        pass


def test_a_contact_gets_a_mailed_link_that_only_exists_in_the_mail(services, team):
    account, owner, *_ = team
    share_id = share(services, account, owner, "/projects", "partner@example.test", "write")
    before = set(services.settings.mail_dir.glob("*.eml")) if services.settings.mail_dir.exists() else set()
    assert send_share_invitation(services, share_id)
    [sent] = set(services.settings.mail_dir.glob("*.eml")) - before
    mail = message_from_bytes(sent.read_bytes(), policy=policy.default)
    assert mail["To"] == "partner@example.test"
    token = mail.get_body(("plain",)).get_content().split("/s/")[1].split()[0]
    with services.db.session() as session:
        link = session.scalar(select(ShareLink).where(ShareLink.share_id == share_id))
        assert link.token_hash == token_hash(token) and link.permission == "write"
        assert token.encode() not in link.token_hash


def test_a_write_grant_revoked_during_an_upload_stops_its_commit(services, team):
    account, owner, owner_ws, guest, guest_ws, _ = team
    share_id = share(services, account, owner, "/projects", guest, "write")
    up = guest_ws.open_write(f"/Shared/{owner}/projects/planted.bin")
    up.write(b"payload")
    with services.db.session() as session:
        session.delete(session.get(Share, share_id))
    with pytest.raises((NotFound, PermissionDenied)):
        up.commit()
    assert "planted.bin" not in [e.name for e in owner_ws.list_dir("/projects")]


def test_the_shared_folder_itself_keeps_its_metadata(services, team):
    from datetime import datetime, timezone
    account, owner, owner_ws, guest, guest_ws, _ = team
    share(services, account, owner, "/projects", guest, "write")
    with pytest.raises(PermissionDenied):
        guest_ws.set_mtime(f"/Shared/{owner}/projects", datetime(2001, 1, 1, tzinfo=timezone.utc))


def test_a_demoted_admin_loses_the_audit_logs_at_once(services, make_account):
    account = make_account()
    ws = Workspace(services, principal(account, account.admin_id, account.admin_username, "admin"))
    assert "Audit Logs" in [e.name for e in ws.list_dir("/")]
    with services.db.session() as session:
        session.get(User, account.admin_id).role = "user"
    assert "Audit Logs" not in [e.name for e in ws.list_dir("/")]
    with pytest.raises(NotFound):
        ws.list_dir("/Audit Logs")
