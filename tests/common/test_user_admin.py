"""Administering users and contacts in the core: roles, email, disabling, the last-admin rule
(race-safe), invited users with no password, MFA reset, the Users tab's search and contacts."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text

from common import accounts, auth, directory, passwords, sharing
from common.auth import totp
from common.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied
from common.models import Account, Contact, RecoveryCode, Share, User
from common.vfs import Workspace
from tests.factories import (
    enrol, login, principal, refused, require_mfa, share, upload, wait_for, with_account, with_user,
)
from tests.fixtures import STRONG_PASSWORD, unique_name
from tests.portal.admin_pages import admin_details, user_row as row


def on_user(services, account_id, user_id, change):
    """Run change(session, account, user) in one transaction."""
    with services.db.session() as session:
        return change(session, session.get(Account, account_id), session.get(User, user_id))


# -- invited users: no password ------------------------------------------------------------------

def test_an_invited_user_has_no_password_and_no_password_opens_their_account(services, account):
    name = unique_name("invited")
    with services.db.session() as session:
        user = accounts.create_user(session, services.keyring, session.get(Account, account.id), username=name,
                                    email=f"{name}@example.test", password=None)
        user_id = user.id
    assert row(services, user_id).password_hash is None
    work = passwords.hashing_work_done()
    refused(lambda: login(services, name, STRONG_PASSWORD))
    assert passwords.hashing_work_done() - work == 1  # the same work as a wrong password
    for guess in ("", "x", STRONG_PASSWORD):
        for door in ("web", "ftps", "sftp"):
            refused(lambda: login(services, name, guess, protocol=door))
    assert f"user {user_id} created as user" in admin_details(services, account.id)


def test_a_role_that_does_not_exist_is_refused(services, account):
    with services.db.session() as session, pytest.raises(InvalidInput):
        accounts.create_user(session, services.keyring, session.get(Account, account.id), username=unique_name("u"),
                             email="u@example.test", password=None, role="owner")


# -- role, email, enable and disable -------------------------------------------------------------

def test_role_and_email_changes_are_audited_with_ids(services, account, make_user):
    user_id, name = make_user(account)
    on_user(services, account.id, user_id, lambda s, a, u: accounts.set_role(s, services.keyring, a, u, "admin"))
    on_user(services, account.id, user_id, lambda s, a, u: accounts.set_email(s, services.keyring, a, u,
                                                                               " New@Example.test "))
    changed = row(services, user_id)
    assert changed.role == "admin"
    with services.db.session() as session:
        assert services.keyring.account(session, account.id).open_text(changed.email_sealed, "email") == \
            "New@Example.test"
        assert changed.email_index == accounts.email_index(services.keyring.account(session, account.id),
                                                           "new@example.test")
    details = admin_details(services, account.id)
    assert f"user {user_id} role set to admin" in details and f"user {user_id} email changed" in details
    assert not any(name in d or "example.test" in d.lower() for d in details)


def test_a_bad_email_is_refused_and_nothing_changes(services, account, make_user):
    user_id, _ = make_user(account)
    before = row(services, user_id).email_sealed
    with pytest.raises(InvalidInput):
        on_user(services, account.id, user_id, lambda s, a, u: accounts.set_email(s, services.keyring, a, u, "no-at"))
    assert row(services, user_id).email_sealed == before


def test_disabling_refuses_every_door_and_moves_the_session_version(services, account, make_user):
    user_id, name = make_user(account)
    version = row(services, user_id).session_version
    on_user(services, account.id, user_id, lambda s, a, u: accounts.set_enabled(s, services.keyring, a, u, False))
    assert (row(services, user_id).status, row(services, user_id).session_version) == ("disabled", version + 1)
    for door in ("web", "ftps", "sftp"):
        refused(lambda: login(services, name, STRONG_PASSWORD, protocol=door))
    on_user(services, account.id, user_id, lambda s, a, u: accounts.set_enabled(s, services.keyring, a, u, True))
    with_user(services, user_id, lambda s, u: auth.unlock_user(s, services.keyring, u))  # three refusals froze it
    assert login(services, name, STRONG_PASSWORD).user_id == user_id
    details = admin_details(services, account.id)
    assert f"user {user_id} disabled" in details and f"user {user_id} enabled" in details


def test_a_disabled_users_open_workspace_is_refused(services, account, make_user):
    user_id, name = make_user(account)
    ws = Workspace(services, principal(account, user_id, name, protocol="sftp"))
    upload(ws, "/kept.txt", b"kept")
    on_user(services, account.id, user_id, lambda s, a, u: accounts.set_enabled(s, services.keyring, a, u, False))
    for operation in (lambda: ws.list_dir("/"), lambda: ws.stat("/kept.txt"), lambda: ws.make_dir("/new"),
                      lambda: ws.open_read("/kept.txt"), lambda: ws.open_write("/more.txt")):
        with pytest.raises(PermissionDenied):
            operation()


def test_another_accounts_user_is_not_found(services, account, make_account, make_user):
    stranger = make_account()
    with services.db.session() as session:
        mine = session.get(Account, account.id)
        theirs = session.get(User, stranger.admin_id)
        for change in (lambda: accounts.set_role(session, services.keyring, mine, theirs, "user"),
                       lambda: accounts.set_email(session, services.keyring, mine, theirs, "x@example.test"),
                       lambda: accounts.set_enabled(session, services.keyring, mine, theirs, False),
                       lambda: directory.find_user(session, mine, stranger.admin_id)):
            with pytest.raises(NotFound):
                change()
    assert (row(services, stranger.admin_id).role, row(services, stranger.admin_id).status) == ("admin", "active")


# -- the last admin --------------------------------------------------------------------------------

LAST_ADMIN_CHANGES = {
    "demoted": lambda s, k, a, u: accounts.set_role(s, k, a, u, "user"),
    "disabled": lambda s, k, a, u: accounts.set_enabled(s, k, a, u, False),
    "deleted": lambda s, k, a, u: accounts.delete_user(s, k, a, u),
}


@pytest.mark.parametrize("change", LAST_ADMIN_CHANGES)
def test_the_last_admin_can_be_neither_demoted_disabled_nor_deleted(services, account, change):
    with pytest.raises(PermissionDenied, match="last admin"):
        on_user(services, account.id, account.admin_id,
                lambda s, a, u: LAST_ADMIN_CHANGES[change](s, services.keyring, a, u))
    admin = row(services, account.admin_id)
    assert (admin.role, admin.status) == ("admin", "active")


@pytest.mark.parametrize("change", LAST_ADMIN_CHANGES)
def test_a_disabled_admin_does_not_count_as_the_admin_that_remains(services, account, make_user, change):
    other_id, _ = make_user(account, role="admin")
    on_user(services, account.id, other_id, lambda s, a, u: accounts.set_enabled(s, services.keyring, a, u, False))
    with pytest.raises(PermissionDenied):
        on_user(services, account.id, account.admin_id,
                lambda s, a, u: LAST_ADMIN_CHANGES[change](s, services.keyring, a, u))
    # The disabled admin may go: the active one remains.
    on_user(services, account.id, other_id, lambda s, a, u: LAST_ADMIN_CHANGES[change](s, services.keyring, a, u))


@pytest.mark.parametrize("change", LAST_ADMIN_CHANGES)
def test_with_a_second_admin_the_first_may_go(services, account, make_user, change):
    make_user(account, role="admin")
    on_user(services, account.id, account.admin_id,
            lambda s, a, u: LAST_ADMIN_CHANGES[change](s, services.keyring, a, u))


@pytest.mark.parametrize("first,second", [("demoted", "disabled"), ("disabled", "deleted"), ("deleted", "demoted")])
def test_two_admins_removed_at_once_leave_one(services, account, make_user, first, second):
    """Each of two admins is removed by its own transaction at the same time: one must be refused."""
    other_id, _ = make_user(account, role="admin")
    outcome = {}
    with services.db.session() as holding:
        LAST_ADMIN_CHANGES[first](holding, services.keyring, holding.get(Account, account.id),
                                  holding.get(User, account.admin_id))
        holding_pid = holding.scalar(text("SELECT pg_backend_pid()"))

        def race():
            try:
                on_user(services, account.id, other_id,
                        lambda s, a, u: LAST_ADMIN_CHANGES[second](s, services.keyring, a, u))
                outcome["second"] = "done"
            except PermissionDenied as exc:
                outcome["second"] = exc

        racer = threading.Thread(target=race)
        racer.start()
        with services.db.session() as watcher:
            # The second change must wait on the first's lock (not read the admins before it commits).
            wait_for(lambda: watcher.scalar(text(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> :me AND pid <> :holder"),
                {"me": watcher.scalar(text("SELECT pg_backend_pid()")), "holder": holding_pid}) > 0, timeout=30)
    racer.join(60)
    assert isinstance(outcome["second"], PermissionDenied), outcome
    with services.db.session() as session:
        active_admins = session.scalar(select(text("count(*)")).select_from(User).where(
            User.account_id == account.id, User.role == "admin", User.status == "active"))
    assert active_admins == 1


# -- MFA reset ---------------------------------------------------------------------------------------

def test_resetting_mfa_removes_the_secret_and_the_recovery_codes_audited(services, account, make_user):
    user_id, name = make_user(account)
    require_mfa(services, account.id)
    enrol(services, user_id)
    with_user(services, user_id, lambda s, u: totp.generate_recovery_codes(s, services.keyring, u))
    with_user(services, user_id, lambda s, u: totp.reset_mfa(s, services.keyring, u))
    reset = row(services, user_id)
    assert (reset.totp_secret_sealed, reset.totp_enrolled_at, reset.totp_last_step) == (None, None, None)
    with services.db.session() as session:
        assert session.scalar(select(RecoveryCode.id).where(RecoveryCode.user_id == user_id)) is None
    assert login(services, name, STRONG_PASSWORD).must_enrol  # they enrol again at the next sign-in
    assert f"user {user_id} mfa reset" in admin_details(services, account.id)


# -- the Users tab's search, states and the deletion's impact ---------------------------------------

def test_search_opens_names_and_emails_and_pages_by_name(services, account, make_user):
    made = sorted(make_user(account, username=f"zz{i:02d}{unique_name('p')}")[1] for i in range(5))
    with services.db.session() as session:
        acct = session.get(Account, account.id)
        everyone = directory.search_users(session, services.keyring, acct, page_size=2)
        by_name = directory.search_users(session, services.keyring, acct, made[3][:4].upper())
        by_email = directory.search_users(session, services.keyring, acct, f"{made[1]}@EXAMPLE")
        last = directory.search_users(session, services.keyring, acct, "zz", page=99, page_size=2)
        nothing = directory.search_users(session, services.keyring, acct, "no such person")
    assert (everyone.total, everyone.pages, len(everyone.users)) == (6, 3, 2)
    assert [u.username for u in by_name.users] == [made[3]]
    assert [u.username for u in by_email.users] == [made[1]]
    assert (last.page, [u.username for u in last.users]) == (3, [made[4]])
    assert (nothing.total, nothing.users) == (0, [])


def test_the_summary_tells_mfa_lock_invitation_and_last_login(services, account, make_user):
    enrolled_id, _ = make_user(account)
    exempt_id, _ = make_user(account)
    locked_id, locked_name = make_user(account)
    require_mfa(services, account.id)
    enrol(services, enrolled_id)
    with_user(services, exempt_id, lambda s, u: setattr(u, "mfa_exempt", True))
    for _ in range(3):
        refused(lambda: login(services, locked_name, "wrong password"))
    login(services, account.admin_username, STRONG_PASSWORD)  # must enrol: counts no login
    with services.db.session() as session:
        found = {u.id: u for u in directory.search_users(
            session, services.keyring, session.get(Account, account.id)).users}
    assert (found[enrolled_id].mfa, found[exempt_id].mfa, found[locked_id].mfa) == ("enrolled", "exempt", "required")
    assert found[locked_id].locked and not found[enrolled_id].locked
    assert not any(u.invited for u in found.values())
    require_mfa(services, account.id, on=False)
    login(services, account.admin_username, STRONG_PASSWORD)
    with services.db.session() as session:
        admin = directory.user_summary(session, services.keyring, session.get(User, account.admin_id))
    assert admin.mfa == "off" and admin.last_login_at is not None


def test_the_deletion_impact_counts_files_folders_and_granted_shares(services, account, make_user):
    owner_id, owner = make_user(account)
    _, grantee = make_user(account)
    ws = Workspace(services, principal(account, owner_id, owner))
    ws.make_dir("/a")
    ws.make_dir("/a/b")
    upload(ws, "/a/one.txt", b"1")
    upload(ws, "/a/b/two.txt", b"2")
    upload(ws, "/three.txt", b"3")
    share(services, account, owner, "/a", grantee, "read")
    share(services, account, owner, "/a/b", "partner@example.test", "write")
    with services.db.session() as session:
        impact = directory.deletion_impact(session, session.get(User, owner_id))
    assert (impact.files, impact.folders, impact.shares) == (3, 2, 2)


# -- contacts -------------------------------------------------------------------------------------

def contacts_of(services, account_id):
    return with_account(services, account_id, lambda s, a: sharing.list_contacts(s, services.keyring, a))


def test_contacts_are_added_edited_and_deleted_audited(services, account, make_user):
    contact_id = with_account(services, account.id, lambda s, a: sharing.add_contact(
        s, services.keyring, a, email="Ada@Example.test", name="Ada Lovelace").id)
    [listed] = contacts_of(services, account.id)
    assert (listed.id, listed.email, listed.name, listed.shares) == (contact_id, "Ada@Example.test", "Ada Lovelace", 0)
    with pytest.raises(AlreadyExists):
        with_account(services, account.id, lambda s, a: sharing.add_contact(
            s, services.keyring, a, email="ada@example.TEST", name=None))
    with_account(services, account.id, lambda s, a: sharing.update_contact(
        s, services.keyring, a, sharing.find_contact(s, a, contact_id), email="ada@lovelace.test", name=""))
    [listed] = contacts_of(services, account.id)
    assert (listed.email, listed.name) == ("ada@lovelace.test", None)
    owner_id, owner = make_user(account)
    Workspace(services, principal(account, owner_id, owner)).make_dir("/out")
    share_id = share(services, account, owner, "/out", "ada@lovelace.test", "read")
    assert contacts_of(services, account.id)[0].shares == 1
    with_account(services, account.id, lambda s, a: sharing.delete_contact(
        s, services.keyring, a, sharing.find_contact(s, a, contact_id)))
    assert contacts_of(services, account.id) == []
    with services.db.session() as session:
        assert session.get(Share, share_id) is None
    assert [d for d in admin_details(services, account.id) if d.startswith("contact")] == [
        f"contact {contact_id} added", f"contact {contact_id} changed", f"contact {contact_id} deleted"]


def test_a_contact_email_taken_by_another_contact_is_refused(services, account):
    ids = [with_account(services, account.id, lambda s, a: sharing.add_contact(
        s, services.keyring, a, email=email, name=None).id) for email in ("a@example.test", "b@example.test")]
    with pytest.raises(AlreadyExists):
        with_account(services, account.id, lambda s, a: sharing.update_contact(
            s, services.keyring, a, sharing.find_contact(s, a, ids[1]), email="A@example.test", name=None))
    assert [c.email for c in contacts_of(services, account.id)] == ["a@example.test", "b@example.test"]


def test_a_deleted_user_is_listed_among_the_contacts(services, account, make_user):
    user_id, name = make_user(account)
    on_user(services, account.id, user_id, lambda s, a, u: accounts.delete_user(s, services.keyring, a, u))
    assert [c.email for c in contacts_of(services, account.id)] == [f"{name}@example.test"]


def test_another_accounts_contact_is_not_found_and_stays(services, account, make_account):
    stranger = make_account()
    theirs = with_account(services, stranger.id, lambda s, a: sharing.add_contact(
        s, services.keyring, a, email="theirs@example.test", name="Theirs").id)
    with services.db.session() as session:
        mine = session.get(Account, account.id)
        with pytest.raises(NotFound):
            sharing.find_contact(session, mine, theirs)
        for change in (sharing.update_contact, sharing.delete_contact):
            with pytest.raises(NotFound):
                kwargs = {"email": "x@example.test", "name": None} if change is sharing.update_contact else {}
                change(session, services.keyring, mine, session.get(Contact, theirs), **kwargs)
    assert [(c.email, c.name) for c in contacts_of(services, stranger.id)] == [("theirs@example.test", "Theirs")]
