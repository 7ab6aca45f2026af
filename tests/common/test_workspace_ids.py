"""The Workspace by ref: ids instead of names, re-checked like paths, pages, details and operations."""
from __future__ import annotations

import hashlib
import os
import random
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from sqlalchemy import delete, event, insert, select, update

from common import accounts, audit, refs, sharing
from common.errors import AlreadyExists, InvalidInput, InvalidName, NotFound, PermissionDenied
from common.models import Account, FileVersion, Node, Share, User
from common.vfs import Principal, Workspace
from tests.factories import principal, share, upload as put


def not_found(call) -> NotFound:
    with pytest.raises(NotFound) as caught:
        call()
    return caught.value


def same_error(a: NotFound, b: NotFound) -> bool:
    return (type(a), a.code, a.message, str(a)) == (type(b), b.code, b.message, str(b))


def walk(ws, ref="root"):
    """Every entry reachable from a folder ref, depth first."""
    for entry in ws.list_page(ref, limit=1000).entries:
        yield entry
        if entry.is_folder:
            yield from walk(ws, entry.id)


MISSING = refs.node_ref(refs.MAX_ID)


@pytest.fixture
def crew(services, make_account, make_user):
    """An owner with /projects (plan.txt, sub/deep.txt) and /private.txt, a guest, and the account's admin."""
    services.store.ensure_bucket()
    account = make_account()
    (owner_id, owner), (guest_id, guest) = make_user(account), make_user(account)
    owner_ws, guest_ws, admin_ws = (Workspace(services, principal(account, *who)) for who in (
        (owner_id, owner), (guest_id, guest), (account.admin_id, account.admin_username, "admin")))
    for folder in ("/projects", "/projects/sub"):
        owner_ws.make_dir(folder)
    for path, data in {"/projects/plan.txt": b"the plan", "/projects/sub/deep.txt": b"deep",
                       "/private.txt": b"mine"}.items():
        put(owner_ws, path, data)
    return account, owner, owner_ws, guest, guest_ws, guest_id, owner_id, admin_ws


# -- every kind of ref round-trips ------------------------------------------------------------

def test_every_entry_carries_a_ref_that_leads_back_to_it(services, crew):
    account, owner, owner_ws, guest, guest_ws, _, owner_id, admin_ws = crew
    share(services, account, owner, "/projects", guest, "read")
    for ws in (owner_ws, guest_ws, admin_ws):
        assert ws.stat("/").id == "root" and ws.path_of("root") == "/"
        seen = list(walk(ws))
        assert seen and all(e.id for e in seen)
        for entry in seen:
            assert ws.path_of(entry.id) == entry.path
            assert ws.stat_by_id(entry.id).path == entry.path
            assert ws.stat(entry.path).id == entry.id
    by_path = {e.path: e.id for e in walk(guest_ws)}
    assert by_path["/Shared"] == "shared"
    assert by_path[f"/Shared/{owner}"] == f"shared-{owner_id}"
    with services.db.session() as session:
        folder = sharing.find_folder(session, services.keyring, session.get(User, owner_id), "/projects")
        audit_logs = session.get(Account, account.id).audit_folder_id
        home = session.get(User, owner_id).home_folder_id
    assert by_path[f"/Shared/{owner}/projects"] == f"n{folder.id}"
    assert {e.path: e.id for e in walk(admin_ws)}["/Audit Logs"] == f"n{audit_logs}"
    assert owner_ws.path_of(f"n{home}") == "/"  # one's home by its node id is the root too


def test_a_link_visitor_and_a_service_job_get_refs_of_their_own_view(services, crew):
    account, owner, owner_ws, guest, *_ = crew
    share_id = share(services, account, owner, "/projects", "partner@example.test", "read")
    visitor = Workspace(services, Principal.for_link(share_id, account.id))
    plan = owner_ws.stat("/projects/plan.txt").id
    assert visitor.path_of(plan) == "/plan.txt"
    assert visitor.path_of(owner_ws.stat("/projects").id) == "/"
    assert visitor.trail(owner_ws.stat("/projects/sub/deep.txt").id) == [
        ("root", "/"), (owner_ws.stat("/projects/sub").id, "sub"), (owner_ws.stat("/projects/sub/deep.txt").id, "deep.txt")]
    for outside in (owner_ws.stat("/private.txt").id, "shared"):
        not_found(lambda: visitor.path_of(outside))
    job = Workspace(services, Principal.system(account.id))
    [audit_logs] = job.list_page("root").entries
    assert job.path_of(audit_logs.id) == "/Audit Logs"
    not_found(lambda: job.path_of(plan))


def test_breadcrumbs_go_from_the_root_through_the_shared_levels(services, crew):
    account, owner, owner_ws, guest, guest_ws, _, owner_id, _ = crew
    share(services, account, owner, "/projects", guest, "read")
    deep = guest_ws.stat(f"/Shared/{owner}/projects/sub/deep.txt")
    assert guest_ws.trail(deep.id) == [
        ("root", "/"), ("shared", "Shared"), (f"shared-{owner_id}", owner),
        (guest_ws.stat(f"/Shared/{owner}/projects").id, "projects"),
        (guest_ws.stat(f"/Shared/{owner}/projects/sub").id, "sub"), (deep.id, "deep.txt")]
    assert owner_ws.trail(owner_ws.stat("/projects/sub").id) == [
        ("root", "/"), (owner_ws.stat("/projects").id, "projects"), (owner_ws.stat("/projects/sub").id, "sub")]
    assert owner_ws.trail("root") == [("root", "/")]


@pytest.mark.parametrize("ref", [
    "", "n", "n0", "n01", "N5", " n5", "n5 ", "n5\n", "n-5", "n+5", "n5x", "n 5", "n٥", "n" + "9" * 19,
    f"n{2**63}", "shared-", "shared-0", "shared-x", "Shared", "shared ", "home", "/", "..", "root/..",
    None, 5, b"root", ["root"],
])
def test_anything_but_a_well_formed_ref_is_not_found(services, crew, ref):
    owner_ws = crew[2]
    for call in (owner_ws.path_of, owner_ws.trail, owner_ws.details, owner_ws.stat_by_id,
                 owner_ws.remove_by_id, lambda r: owner_ws.rename_by_id(r, "x")):
        assert same_error(not_found(lambda: call(ref)), not_found(lambda: owner_ws.path_of(MISSING)))
    if not (isinstance(ref, str) and ref.startswith("/")):
        not_found(lambda: owner_ws.list_page(ref))


# -- refs are re-checked like paths -----------------------------------------------------------

def test_refs_of_another_account_are_answered_like_refs_that_do_not_exist(services, crew, make_account):
    account, owner, owner_ws, *_ = crew
    victim = {e.id: e.path for e in walk(owner_ws)}
    with services.db.session() as session:
        roots = [f"n{session.get(Account, account.id).audit_folder_id}",
                 f"n{session.get(User, account.admin_id).home_folder_id}"]
    stranger = make_account()
    attacker = Workspace(services, principal(stranger, stranger.admin_id, stranger.admin_username, "admin"))
    missing = not_found(lambda: attacker.path_of(MISSING))
    for ref in [r for r in victim if r.startswith("n")] + roots:  # "shared" is everybody's own
        for call in (attacker.path_of, attacker.trail, attacker.details, attacker.list_page,
                     attacker.remove_by_id, lambda r: attacker.rename_by_id(r, "stolen"),
                     lambda r: attacker.move_by_id(r, "root"), lambda r: attacker.move_by_id("root", r),
                     lambda r: attacker.make_dir_by_id(r, "planted"),
                     lambda r: attacker.open_write_by_id(r, "planted.txt"), attacker.open_read_by_id):
            assert same_error(not_found(lambda: call(ref)), missing)
    assert {e.id: e.path for e in walk(owner_ws)} == victim
    assert b"".join(owner_ws.open_read("/projects/plan.txt")) == b"the plan"


def test_another_users_files_need_a_share(services, crew):
    account, owner, owner_ws, guest, guest_ws, _, owner_id, admin_ws = crew
    plan, private = owner_ws.stat("/projects/plan.txt").id, owner_ws.stat("/private.txt").id
    missing = not_found(lambda: guest_ws.path_of(MISSING))
    for ref in (plan, private, owner_ws.stat("/projects").id, f"shared-{owner_id}"):
        assert same_error(not_found(lambda: guest_ws.path_of(ref)), missing)
        assert same_error(not_found(lambda: admin_ws.path_of(ref)), missing)  # nor do admins see other homes
    share(services, account, owner, "/projects", guest, "read")
    assert guest_ws.path_of(plan) == f"/Shared/{owner}/projects/plan.txt"
    assert same_error(not_found(lambda: guest_ws.path_of(private)), missing)
    audit_logs = admin_ws.stat("/Audit Logs").id
    assert same_error(not_found(lambda: guest_ws.path_of(audit_logs)), missing)


def test_a_revoked_share_takes_its_refs_away(services, crew):
    account, owner, owner_ws, guest, guest_ws, _, owner_id, _ = crew
    share_id = share(services, account, owner, "/projects", guest, "write")
    refs_seen = [e.id for e in walk(guest_ws)]
    assert f"shared-{owner_id}" in refs_seen
    with services.db.session() as session:
        session.delete(session.get(Share, share_id))
    missing = not_found(lambda: guest_ws.path_of(MISSING))
    for ref in refs_seen:
        if ref == "shared":
            assert guest_ws.list_page(ref).total == 0
            continue
        assert same_error(not_found(lambda: guest_ws.path_of(ref)), missing)
        assert same_error(not_found(lambda: guest_ws.open_write_by_id(ref, "x.txt")), missing)


def test_a_node_moved_out_of_a_share_is_no_longer_reachable_through_it(services, crew):
    account, owner, owner_ws, guest, guest_ws, *_ = crew
    share(services, account, owner, "/projects", guest, "read")
    sub = guest_ws.stat(f"/Shared/{owner}/projects/sub").id
    deep = guest_ws.stat(f"/Shared/{owner}/projects/sub/deep.txt").id
    owner_ws.rename("/projects/sub", "/sub-kept-private")
    for ref in (sub, deep):
        not_found(lambda: guest_ws.path_of(ref))
    assert owner_ws.path_of(deep) == "/sub-kept-private/deep.txt"


def test_nested_shares_give_one_route_the_writable_one_first(services, crew, make_user):
    account, owner, owner_ws, guest, guest_ws, *_ = crew
    share(services, account, owner, "/projects", guest, "read")
    share(services, account, owner, "/projects/sub", guest, "write")
    deep = owner_ws.stat("/projects/sub/deep.txt").id
    plan = owner_ws.stat("/projects/plan.txt").id
    for _ in range(3):
        assert guest_ws.path_of(deep) == f"/Shared/{owner}/sub/deep.txt"
        assert guest_ws.path_of(plan) == f"/Shared/{owner}/projects/plan.txt"
    assert guest_ws.stat_by_id(deep).writable
    # With equal permissions the outermost share is the route.
    third_id, third = make_user(account)
    third_ws = Workspace(services, principal(account, third_id, third))
    share(services, account, owner, "/projects/sub", third, "read")
    assert third_ws.path_of(deep) == f"/Shared/{owner}/sub/deep.txt"
    share(services, account, owner, "/projects", third, "read")
    assert third_ws.path_of(deep) == f"/Shared/{owner}/projects/sub/deep.txt"


def test_a_disabled_user_is_refused_whatever_the_ref(services, crew):
    account, owner, owner_ws, guest, guest_ws, guest_id, *_ = crew
    with services.db.session() as session:
        session.get(User, guest_id).status = "disabled"
    for ref in ("root", MISSING, owner_ws.stat("/private.txt").id):
        with pytest.raises(PermissionDenied):
            guest_ws.path_of(ref)


# -- no ref reaches another account (property) ------------------------------------------------

@pytest.fixture
def two_tenants(services, crew, make_account):
    account, owner, owner_ws, guest, guest_ws, guest_id, owner_id, admin_ws = crew
    share(services, account, owner, "/projects", guest, "write")
    stranger = make_account()
    attacker = Workspace(services, principal(stranger, stranger.admin_id, stranger.admin_username, "admin"))
    attacker.make_dir("/mine")
    with services.db.session() as session:
        victim_nodes = sorted(session.scalars(select(Node.id).where(Node.account_id == account.id)))
        own_nodes = set(session.scalars(select(Node.id).where(Node.account_id == stranger.id)))
    victim_refs = [refs.node_ref(i) for i in victim_nodes] + [
        f"shared-{i}" for i in (owner_id, guest_id, account.admin_id)]
    return attacker, victim_refs, own_nodes, max(victim_nodes + list(own_nodes))


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_no_ref_reaches_another_account(two_tenants, data):
    attacker, victim_refs, own_nodes, top = two_tenants
    ref = data.draw(st.one_of(
        st.sampled_from(victim_refs),
        st.integers(1, top + 50).map(refs.node_ref),
        st.integers(1, top + 50).map(refs.owner_ref)))
    if ref in victim_refs:
        not_found(lambda: attacker.path_of(ref))
        not_found(lambda: attacker.list_page(ref))
        return
    try:
        attacker.path_of(ref)
    except NotFound:
        return
    assert refs.parse(ref).kind == "node" and refs.parse(ref).id in own_nodes


# -- pages ------------------------------------------------------------------------------------

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def fill(services):
    """Create entries directly in the database: (name, kind, size, mtime) each, in one transaction.

    Their versions have no content: marked `failed` (no job scans those) and deleted afterwards."""
    filled = []

    def make(ws, folder_path, specs):
        folder = ws.stat(folder_path).id
        with services.db.session() as session:
            parent = session.get(Node, refs.parse(folder).id)
            keys = services.keyring.account(session, ws.me.account_id)
            rows = [dict(account_id=parent.account_id, owner_id=parent.owner_id, parent_id=parent.id, kind=kind,
                         name_sealed=keys.seal_text(name, "node-name"),
                         name_index=keys.index(f"node:{parent.id}", name), mtime=mtime)
                    for name, kind, _, mtime in specs]
            ids = session.scalars(insert(Node).returning(Node.id, sort_by_parameter_order=True), rows).all()
            versions = [dict(id=uuid.uuid4(), node_id=node_id, account_id=parent.account_id,
                             storage_key=uuid.uuid4().hex, size=size, md5=b"\0" * 16, sha256=b"\0" * 32,
                             cipher_size=size, cipher_sha256=b"\0" * 32, wrapped_key=b"\0", key_version=1,
                             spool_id="fill", state="failed")
                        for node_id, (_, kind, size, _) in zip(ids, specs) if kind == "file"]
            if versions:
                session.execute(insert(FileVersion), versions)
                session.execute(update(Node), [dict(id=v["node_id"], current_version_id=v["id"]) for v in versions])
            filled.append(parent.id)
        return folder

    yield make
    with services.db.session() as session:
        for parent_id in filled:
            session.execute(delete(Node).where(Node.parent_id == parent_id))


def expected(specs, sort, descending):
    key = {"name": lambda s: (s[0].casefold(), s[0]), "size": lambda s: s[2] if s[1] == "file" else 0, "mtime": lambda s: s[3]}[sort]
    ordered = sorted(specs, key=lambda s: (s[0].casefold(), s[0]))
    ordered.sort(key=key, reverse=descending)
    return [s[0] for s in ordered if s[1] == "folder"] + [s[0] for s in ordered if s[1] == "file"]


def test_a_page_sorts_folders_first_with_ties_in_name_order(services, crew, fill):
    owner_ws = crew[2]
    owner_ws.make_dir("/sorting")
    specs = [("b.txt", "file", 10, T0), ("A.txt", "file", 10, T0), ("c.txt", "file", 5, T0 + timedelta(1)),
             ("a.txt", "file", 99, T0 - timedelta(1)), ("Zed", "folder", 0, T0), ("alpha", "folder", 0, T0),
             ("mid", "folder", 0, T0 + timedelta(2)), ("é.txt", "file", 10, T0)]
    folder = fill(owner_ws, "/sorting", specs)
    for sort in refs.SORT_KEYS:
        for descending in (False, True):
            want = expected(specs, sort, descending)
            page = owner_ws.list_page(folder, sort=sort, descending=descending, limit=1000)
            assert [e.name for e in page.entries] == want, (sort, descending)
            pieces = [owner_ws.list_page(folder, sort=sort, descending=descending, offset=o, limit=3)
                      for o in range(0, len(specs), 3)]
            assert [e.name for p in pieces for e in p.entries] == want
    assert [e.name for e in owner_ws.list_page(folder, sort="size").entries][3:6] == ["c.txt", "A.txt", "b.txt"]
    page = owner_ws.list_page("/sorting", offset=100)
    assert (page.entries, page.total, page.folders, page.files) == ([], 8, 3, 5)
    for bad in (dict(sort="owner"), dict(offset=-1), dict(limit=0), dict(limit=100_000)):
        with pytest.raises(InvalidInput):
            owner_ws.list_page(folder, **bad)


def test_the_root_page_counts_the_virtual_folders(services, crew):
    account, owner, owner_ws, *_, admin_ws = crew
    page = owner_ws.list_page("root")
    assert [e.name for e in page.entries] == ["projects", "Shared", "private.txt"]
    assert (page.total, page.folders, page.files) == (3, 2, 1)
    assert "Audit Logs" in [e.name for e in admin_ws.list_page("root").entries]


def test_a_ten_thousand_entry_folder_pages_correctly_in_a_fixed_number_of_queries(services, crew, fill):
    owner_ws = crew[2]
    rng = random.Random(11)
    owner_ws.make_dir("/big")
    owner_ws.make_dir("/small")
    names = {f"entry-{rng.getrandbits(40):010x}" for _ in range(10_000)}
    specs = [(name, "folder" if i % 20 == 0 else "file", rng.randrange(50), T0 + timedelta(seconds=rng.randrange(500)))
             for i, name in enumerate(sorted(names))]
    big = fill(owner_ws, "/big", specs)
    small = fill(owner_ws, "/small", specs[:10])
    want = expected(specs, "size", True)
    page = owner_ws.list_page(big, sort="size", descending=True, offset=495, limit=50)
    assert [e.name for e in page.entries] == want[495:545]
    assert (page.total, page.folders, page.files) == (len(specs), len(specs) // 20, len(specs) - len(specs) // 20)
    assert [e.name for e in owner_ws.list_page(big, offset=9_990).entries] == expected(specs, "name", False)[9_990:]
    assert statements(services, lambda: owner_ws.list_page(big)) == statements(
        services, lambda: owner_ws.list_page(small))


def statements(services, call) -> int:
    count = []

    def counted(*_):
        count.append(1)
    event.listen(services.db.engine, "before_cursor_execute", counted)
    try:
        call()
    finally:
        event.remove(services.db.engine, "before_cursor_execute", counted)
    return len(count)


# -- details ----------------------------------------------------------------------------------

@pytest.mark.parametrize("door", ["sftp", "web", "ftps"])
def test_details_tell_the_fingerprints_the_uploader_and_the_door(services, crew, door):
    account, owner, owner_ws, guest, guest_ws, guest_id, *_ = crew
    share(services, account, owner, "/projects", guest, "write")
    through = Workspace(services, principal(account, guest_id, guest, protocol=door))
    data = os.urandom(70_000)
    before = datetime.now(timezone.utc)
    put(through, f"/Shared/{owner}/projects/in.bin", data)
    details = owner_ws.details(owner_ws.stat("/projects/in.bin").id)
    assert (details.name, details.kind, details.size, details.door, details.uploaded_by) == (
        "in.bin", "file", len(data), door, guest)
    assert details.md5 == hashlib.md5(data).hexdigest() and details.sha256 == hashlib.sha256(data).hexdigest()
    assert before - timedelta(seconds=5) <= details.created <= details.uploaded <= datetime.now(timezone.utc)
    assert details.version == owner_ws.stat("/projects/in.bin").version and details.writable
    with services.db.session() as session:
        acct = session.get(Account, account.id)
        accounts.delete_user(session, services.keyring, acct, session.get(User, guest_id))
    assert owner_ws.details(details.id).uploaded_by is None  # the file stays, its uploader is gone


def test_details_of_a_folder_have_no_fingerprints(services, crew):
    owner_ws = crew[2]
    details = owner_ws.details(owner_ws.stat("/projects").id)
    assert (details.kind, details.md5, details.sha256, details.door, details.uploaded_by) == (
        "folder", None, None, None, None)


# -- operations by ref ------------------------------------------------------------------------

def events(services, account_id, since_seq):
    with services.db.session() as session:
        return [(e.action, e.path, e.status, e.detail)
                for e in audit.iter_events(session, services.keyring, account_id) if e.seq > since_seq]


def last_seq(services, account_id):
    with services.db.session() as session:
        return session.get(Account, account_id).audit_count


def test_operations_by_ref_work_and_are_audited_like_path_ones(services, crew):
    account, owner, owner_ws, *_ = crew
    start = last_seq(services, account.id)
    projects = owner_ws.stat("/projects").id
    made = owner_ws.make_dir_by_id(projects, "reports")
    assert made.path == "/projects/reports" and owner_ws.path_of(made.id) == made.path
    up = owner_ws.open_write_by_id(made.id, "q1.csv")
    up.write(b"1,2,3")
    entry = up.commit()
    assert b"".join(owner_ws.open_read_by_id(entry.id)) == b"1,2,3"
    assert b"".join(owner_ws.open_read_by_id(entry.id, 2, 2)) == b"2,"
    renamed = owner_ws.rename_by_id(entry.id, "q2.csv")
    assert (renamed.id, renamed.path) == (entry.id, "/projects/reports/q2.csv")
    moved = owner_ws.move_by_id(entry.id, "root")
    assert (moved.id, moved.path) == (entry.id, "/q2.csv")
    owner_ws.remove_by_id(made.id)
    owner_ws.remove_by_id(entry.id)
    not_found(lambda: owner_ws.path_of(entry.id))
    got = [(action, path, status) for action, path, status, _ in events(services, account.id, start)]
    assert got == [
        ("mkdir", "/projects/reports", "ok"), ("upload", "/projects/reports/q1.csv", "ok"),
        ("download", "/projects/reports/q1.csv", "ok"), ("download", "/projects/reports/q1.csv", "ok"),
        ("rename", "/projects/reports/q1.csv -> /projects/reports/q2.csv", "ok"),
        ("rename", "/projects/reports/q2.csv -> /q2.csv", "ok"),
        ("delete", "/projects/reports", "ok"), ("delete", "/q2.csv", "ok")]


def test_refusals_by_ref_keep_their_errors_and_their_audit(services, crew):
    account, owner, owner_ws, guest, guest_ws, _, owner_id, admin_ws = crew
    share(services, account, owner, "/projects", guest, "read")
    base = f"/Shared/{owner}/projects"
    folder, plan = guest_ws.stat(base).id, guest_ws.stat(base + "/plan.txt").id
    start = last_seq(services, account.id)
    for attempt in (lambda: guest_ws.make_dir_by_id(folder, "d"), lambda: guest_ws.open_write_by_id(folder, "x"),
                    lambda: guest_ws.remove_by_id(plan), lambda: guest_ws.rename_by_id(plan, "x.txt"),
                    lambda: guest_ws.move_by_id(plan, "root"), lambda: guest_ws.remove_by_id(folder),
                    lambda: guest_ws.rename_by_id(folder, "mine"), lambda: guest_ws.make_dir_by_id("shared", "d"),
                    lambda: guest_ws.make_dir_by_id(f"shared-{owner_id}", "d"), lambda: guest_ws.remove_by_id("root"),
                    lambda: admin_ws.open_write_by_id(admin_ws.stat("/Audit Logs").id, "forged.csv")):
        with pytest.raises(PermissionDenied):
            attempt()
    refused = events(services, account.id, start)
    assert [detail for *_, detail in refused] == [
        "mkdir", "upload", "delete", "rename", "rename", "delete", "rename", "mkdir", "mkdir", "delete", "upload"]
    assert {status for _, _, status, _ in refused} == {"refused"}
    assert refused[0][1] == base + "/d"  # audited with the path, as the path operation does
    with pytest.raises(InvalidName):
        owner_ws.make_dir_by_id("root", "Shared")
    with pytest.raises(InvalidName):
        owner_ws.rename_by_id(owner_ws.stat("/private.txt").id, "a/b")


def test_renaming_or_moving_by_ref_never_replaces_an_entry(services, crew):
    owner_ws = crew[2]
    put(owner_ws, "/projects/other.txt", b"other")
    plan = owner_ws.stat("/projects/plan.txt").id
    with pytest.raises(AlreadyExists):
        owner_ws.rename_by_id(plan, "other.txt")
    put(owner_ws, "/plan.txt", b"top")
    with pytest.raises(AlreadyExists):
        owner_ws.move_by_id(plan, "root")
    assert b"".join(owner_ws.open_read("/projects/other.txt")) == b"other"
    assert b"".join(owner_ws.open_read("/plan.txt")) == b"top"
    with pytest.raises(InvalidName):
        owner_ws.move_by_id(owner_ws.stat("/projects").id, owner_ws.stat("/projects/sub").id)


def test_an_operation_by_ref_never_acts_on_what_took_the_nodes_place(services, crew, monkeypatch):
    """The path of a ref is resolved again inside the operation: if another node now has that
    path (renamed away, a new one made under the old name), the operation is NotFound."""
    owner_ws = crew[2]
    plan = owner_ws.stat("/projects/plan.txt").id
    located = Workspace._locate

    def swapped_meanwhile(ws, ref, operation):  # another session's rename lands between the two steps
        found = located(ws, ref, operation)
        owner_ws.rename("/projects/plan.txt", "/projects/plan-old.txt")
        put(owner_ws, "/projects/plan.txt", b"a newer plan")
        monkeypatch.setattr(Workspace, "_locate", located)
        return found

    for operation in (lambda: owner_ws.remove_by_id(plan), lambda: owner_ws.open_read_by_id(plan),
                      lambda: owner_ws.rename_by_id(plan, "renamed.txt")):
        monkeypatch.setattr(Workspace, "_locate", swapped_meanwhile)
        not_found(operation)
        assert b"".join(owner_ws.open_read("/projects/plan.txt")) == b"a newer plan"
        owner_ws.remove("/projects/plan.txt")
        owner_ws.rename("/projects/plan-old.txt", "/projects/plan.txt")


def test_a_ref_is_read_whole_or_not_at_all(services, crew):
    owner_ws = crew[2]
    node_id = refs.parse(owner_ws.stat("/projects/plan.txt").id).id
    assert owner_ws.path_of(f"n{node_id}") == "/projects/plan.txt"
    for near in (f"n{node_id}x", f" n{node_id}", f"n{node_id}\n", f"n0{node_id}", f"N{node_id}",
                 f"n+{node_id}", f"n{node_id}/..", f"n{node_id}.0", str(node_id), f"n{node_id:_}"):
        not_found(lambda: owner_ws.path_of(near))
