"""The Workspace: the one virtual filesystem that every door (web, FTPS, SFTP) speaks through.

A user's view is their home folder at `/`, plus `/Shared/<owner>/<folder>` for each folder
shared with them and, for admins, the account's `/Audit Logs` (read-only). Callers with no
user login reach what their door's row in common.doors says: a share-link visitor sees only
that share's folder at `/`, with the share's permission; a job of the service sees the
account's `/Audit Logs`, and may write there. Every operation
runs the same sequence: normalise the path, resolve it inside the caller's account only,
check the permission, go through crypto and storage, and record the audit event in the same
transaction as the change. Adapters never touch storage or crypto themselves.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Iterator

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common import audit, doors, notifications, paths, refs
from common.content import ContentReader, ContentWriter, StoredContent
from common.crypto import DataKeys, random_key
from common.errors import (
    AlreadyExists, IntegrityFailure, InvalidInput, InvalidName, IsAFolder, NotAFolder, NotEmpty, NotFound,
    FileReplaced, PermissionDenied, SealdropError, Unsupported,
)
from common.jobs.alerts import enqueue_integrity_alert
from common.jobs.ingest import enqueue_ingest
from common.jobs.purge import enqueue_purge, purge_pending
from common.models import Account, FileVersion, Node, PendingPurge, Share, User
from common.purging import lock_subtree, lock_tree, purge_record
from common.sharing import record_arrival
from common.services import Services
from common.storage import upload_verified

SHARED = "Shared"
AUDIT_LOGS = "Audit Logs"
RESERVED_ROOT_NAMES = (SHARED, AUDIT_LOGS)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

MAX_PAGE = 1000  # entries in one page of a folder
MAX_DEPTH = 10_000  # folders above a node, far beyond any real tree (a guard, not a limit of use)
# {path: node id} while an operation by ref runs: its path must still lead to that node.
_EXPECTED_NODES: ContextVar[dict[str, int] | None] = ContextVar("expected_nodes", default=None)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    """The party a Workspace acts for: a logged-in user, a share-link visitor, or a service job.

    `protocol` names its door (common.doors), whose `reach` says what it may see.
    """

    user_id: int | None
    account_id: int
    username: str | None
    role: str
    protocol: str
    ip: str | None = None
    share_id: int | None = None  # a link visitor's share
    link_id: int | None = None  # and the link it came through, named in its audit events

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def door(self) -> doors.Door:
        return doors.door(self.protocol)

    @classmethod
    def for_link(cls, share_id: int, account_id: int, *, ip: str | None = None,
                 link_id: int | None = None) -> "Principal":
        """A visitor holding a link to this share: only inside its folder, with the share's permission.

        A request link's visitor may only upload into the folder itself, seeing nothing in it.
        """
        return cls(None, account_id, None, "visitor", doors.LINK.name, ip, share_id=share_id, link_id=link_id)

    @classmethod
    def system(cls, account_id: int) -> "Principal":
        """A job of the service in this account, such as the audit export writing into /Audit Logs."""
        return cls(None, account_id, None, "system", doors.SYSTEM.name)

    @classmethod
    def from_login(cls, result) -> "Principal":
        """The principal of a completed `common.auth` login (an AuthResult)."""
        return cls(result.user_id, result.account_id, result.username, result.role, result.protocol,
                   result.ip)


@dataclass(frozen=True)
class Entry:
    """What a door needs to show one file or folder."""

    name: str
    path: str
    kind: str  # "folder" or "file"
    size: int = 0
    mtime: datetime = EPOCH
    writable: bool = False
    md5: bytes | None = None
    sha256: bytes | None = None
    version: uuid.UUID | None = None  # a file's current content; pass to open_read to pin it
    id: str | None = None  # its ref (common.refs), what a URL carries instead of the path

    @property
    def is_folder(self) -> bool:
        return self.kind == "folder"


@dataclass
class _Place:
    """A resolved path: a virtual folder, or a node under a root with a permission."""

    path: str
    node: Node | None = None
    permission: str = "read"  # of the root this node is under
    share: Share | None = None  # when under a shared folder
    share_root: bool = False  # the shared folder itself (never renamed or removed)
    virtual: str | None = None  # "shared" or "shared-owner" for the /Shared levels, "service-root"
    children: dict = field(default_factory=dict)

    @property
    def writable(self) -> bool:
        return self.node is not None and self.permission in ("write", "request")

    @property
    def ref(self) -> str:
        if self.path == "/":
            return refs.ROOT
        if self.virtual == "shared":
            return refs.SHARED
        if self.virtual == "shared-owner":
            return refs.owner_ref(next(iter(self.children.values())).owner_id)
        return refs.node_ref(self.node.id)


def _audits_refusals(operation: str):
    """Record a `denied` event whenever the permission check refuses this operation."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, path, *args, **kwargs):
            try:
                return method(self, path, *args, **kwargs)
            except PermissionDenied:
                self.record_refusal(operation, path)
                raise
        return wrapper

    return decorate


class Workspace:
    """One principal's view of their files, the same for every protocol."""

    def __init__(self, services: Services, principal: Principal):
        self.services = services
        self.me = principal

    # -- reading the tree ------------------------------------------------------------------
    def stat(self, path: str) -> Entry:
        """Metadata of one file or folder."""
        with self._session() as session:
            place = self._resolve(session, path)
            return self._entry(session, place)

    def list_dir(self, path: str) -> list[Entry]:
        """The entries of a folder, sorted by name (names are decrypted here, then sorted)."""
        with self._session() as session:
            entries = self._listing(session, self._resolve(session, path))
        return sorted(entries, key=lambda e: e.name)

    def fingerprint(self, path: str) -> Entry:
        """A file's recorded size, MD5 and SHA-256 (verified on every whole read)."""
        entry = self.stat(path)
        if entry.is_folder:
            raise IsAFolder()
        return entry

    # -- changing the tree -----------------------------------------------------------------
    @_audits_refusals("mkdir")
    def make_dir(self, path: str) -> Entry:
        """Create a folder."""
        with self._session() as session:
            parent, name = self._writable_parent(session, path)
            if parent.permission == "request":
                raise PermissionDenied()  # a request link only sends files
            keys = self._keys(session)
            node = Node(account_id=self.me.account_id, owner_id=parent.node.owner_id,
                        parent_id=parent.node.id, kind="folder",
                        name_sealed=keys.seal_text(name, "node-name"),
                        name_index=keys.index(f"node:{parent.node.id}", name))
            if self._child(session, parent.node, name) is not None:
                raise AlreadyExists()
            session.add(node)
            self._audit(session, "mkdir", path=paths.join(parent.path, name))
            session.flush()
            return self._node_entry(paths.join(parent.path, name), node, None, parent.permission)

    @_audits_refusals("delete")
    def remove(self, path: str, *, recursive: bool = True) -> None:
        """Delete a file or folder permanently: rows and keys now, ciphertext by the purge job."""
        with self._session() as session:
            self._lock_tree(session)
            place = self._resolve(session, path)
            self._check_changeable(place)
            lock_subtree(session, place.node)  # uploads committing below wait, or finish first
            if place.node.kind == "folder" and not recursive and self._has_children(session, place.node):
                raise NotEmpty()
            self._purge_subtree(session, place.node)
            self._audit(session, "delete", path=place.path)
        self._purge_soon()

    @_audits_refusals("rename")
    def rename(self, source: str, target: str, *, overwrite: bool = True) -> Entry:
        """Move or rename within one root (metadata only: objects are keyed by id)."""
        with self._session() as session:
            self._lock_tree(session)  # two crossing moves must not make a cycle
            src = self._resolve(session, source)
            self._check_changeable(src)
            parent, name = self._writable_parent(session, target)
            if parent.node.id != src.node.parent_id and _root_of(session, parent.node) != _root_of(session, src.node):
                raise Unsupported("Moving between your files and a shared folder is not supported; copy instead")
            if src.node.kind == "folder" and _is_within(session, parent.node, src.node):
                raise InvalidName("A folder cannot be moved into itself")
            existing = self._child(session, parent.node, name)
            if existing is not None and existing.id != src.node.id:
                if not overwrite or existing.kind == "folder" or src.node.kind == "folder":
                    raise AlreadyExists()
                self._purge_subtree(session, existing)
            keys = self._keys(session)
            src.node.parent_id = parent.node.id
            src.node.name_sealed = keys.seal_text(name, "node-name")
            src.node.name_index = keys.index(f"node:{parent.node.id}", name)
            new_path = paths.join(parent.path, name)
            self._audit(session, "rename", path=f"{src.path} -> {new_path}")
            session.flush()
            version = session.get(FileVersion, src.node.current_version_id) if src.node.current_version_id else None
            entry = self._node_entry(new_path, src.node, version, parent.permission)
        if existing is not None:
            self._purge_soon()
        return entry

    @_audits_refusals("set_mtime")
    def set_mtime(self, path: str, mtime: datetime) -> None:
        """Keep a client-supplied modification time (FTP MFMT, SFTP setstat)."""
        with self._session() as session:
            place = self._resolve(session, path)
            self._check_changeable(place)
            place.node.mtime = mtime

    # -- content ---------------------------------------------------------------------------
    @_audits_refusals("upload")
    def open_write(self, path: str, *, mtime: datetime | None = None, on_clash: str = "replace") -> "Upload":
        """Start an upload; nothing is visible until `commit()`; `abort()` leaves no trace.

        On a name clash, "replace" makes a new version of the file; "rename" stores the upload
        as `name (2).ext` (or the next free number), chosen at commit. Link visitors never replace.
        """
        if on_clash not in ("replace", "rename"):
            raise ValueError(f"unknown on_clash {on_clash!r}")
        if self.me.door.reach is doors.Reach.SHARE:
            on_clash = "rename"  # a visitor learns nothing of, and changes nothing in, what is there
        with self._session() as session:
            parent, name = self._writable_parent(session, path)
            existing = self._child(session, parent.node, name) if on_clash == "replace" else None
            if existing is not None and existing.kind == "folder":
                raise IsAFolder()
            key_version = self.services.keyring.active_file_key_version(session, self.me.account_id)
        file_key = random_key()
        writer = ContentWriter(self.services.spool, file_key, uuid.uuid4(), key_version)
        return Upload(self, parent.node.id, parent.node.owner_id, paths.join(parent.path, name), name,
                      writer, file_key, mtime, rename_on_clash=on_clash == "rename")

    @_audits_refusals("download")
    def open_read(self, path: str, offset: int = 0, length: int | None = None, *,
                  version: uuid.UUID | None = None) -> "Download":
        """Stream a file's plaintext from `offset`; a whole read re-proves its fingerprints.

        With `version` (from an Entry), a file replaced since is refused rather than mixed.
        """
        for attempt in (1, 2):
            with self._session() as session:
                place = self._resolve(session, path)
                if place.virtual or place.node.kind == "folder":
                    raise IsAFolder()
                current = session.get(FileVersion, place.node.current_version_id)
                if current is None:
                    raise NotFound()
                if version is not None and current.id != version:
                    raise FileReplaced()
                version = current
                try:
                    file_key = self.services.keyring.unwrap_file_key(
                        session, self.me.account_id, version.wrapped_key, version.key_version, version.id.bytes)
                except IntegrityFailure:
                    if attempt == 2:
                        raise
                    continue  # a key rotation re-wrapped this file between our two reads: read again
                content = StoredContent(version.id, version.storage_key, version.size, version.md5,
                                        version.sha256, version.state, version.spool_id)
                break
        try:
            reader = ContentReader(content, file_key, self.services.spool, self.services.store,
                                   refresh_state=lambda: self._version_state(content.version_id))
        except IntegrityFailure:
            # Content known lost: the admins were alerted when it was marked failed.
            self.record_transfer("download", place.path, status="failed", nbytes=0,
                                 started=time.monotonic(), detail="integrity failure")
            raise
        return Download(self, place.path, content.size, reader.read(offset, length), offset)

    # -- by ref: what the web's URLs carry (common.refs) -----------------------------------
    def path_of(self, ref: str) -> str:
        """The path of a ref as this principal sees it; NotFound when they cannot reach it."""
        with self._session() as session:
            return self._place_of_ref(session, ref).path

    def stat_by_id(self, ref: str) -> Entry:
        """Metadata of the file or folder a ref names."""
        with self._session() as session:
            return self._entry(session, self._place_of_ref(session, ref))

    def trail(self, ref: str) -> list[tuple[str, str]]:
        """The breadcrumbs of a ref: (ref, name) pairs from the root ("root", "/") down to it."""
        with self._session() as session:
            return self._trail(session, self._place_of_ref(session, ref))

    def list_page(self, ref_or_path: str, *, sort: str = "name", descending: bool = False,
                  offset: int = 0, limit: int = 50) -> refs.Page:
        """One page of a folder (a ref, or a path starting with "/"): folders first, then files."""
        if sort not in refs.SORT_KEYS or not 0 <= offset or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"Sort by {', '.join(refs.SORT_KEYS)}, with 1 to {MAX_PAGE} entries a page")
        with self._session() as session:
            place = self._resolve(session, ref_or_path) if _is_path(ref_or_path) else \
                self._place_of_ref(session, ref_or_path)
            entries = self._listing(session, place)
        ordered = refs.sort_entries(entries, sort, descending)
        folders = sum(1 for e in entries if e.is_folder)
        return refs.Page(ordered[offset:offset + limit], len(entries), folders, len(entries) - folders,
                         offset, limit)

    def details(self, ref: str) -> refs.Details:
        """A file's or folder's details: dates, fingerprints, and who uploaded it through which door."""
        with self._session() as session:
            place = self._place_of_ref(session, ref)
            entry = self._entry(session, place)
            node = place.node
            version = session.get(FileVersion, node.current_version_id) if node and node.current_version_id else None
            return refs.Details(
                id=entry.id, name=entry.name, kind=entry.kind, size=entry.size, mtime=entry.mtime,
                created=node.created_at if node else None, uploaded=version.created_at if version else None,
                md5=version.md5.hex() if version else None, sha256=version.sha256.hex() if version else None,
                uploaded_by=self._username_of(session, version.created_by_id) if version else None,
                door=version.door if version else None, writable=entry.writable,
                version=version.id if version else None)

    def make_dir_by_id(self, parent_ref: str, name: str) -> Entry:
        """Create the folder `name` in the folder a ref names."""
        parent = self._locate(parent_ref, "mkdir")
        with _expecting(parent):
            return self.make_dir(paths.join(parent[0], name))

    def rename_by_id(self, ref: str, new_name: str) -> Entry:
        """Rename in place; an existing entry of that name is never replaced (AlreadyExists)."""
        source = self._locate(ref, "rename")
        folder = paths.parent_and_name(source[0])[0] if source[0] != "/" else "/"
        with _expecting(source):
            return self.rename(source[0], paths.join(folder, new_name), overwrite=False)

    def move_by_id(self, ref: str, folder_ref: str) -> Entry:
        """Move into the folder `folder_ref` names, keeping the name; nothing is replaced."""
        source, folder = self._locate(ref, "rename"), self._locate(folder_ref, "rename")
        name = paths.parts(source[0])[-1] if source[0] != "/" else "root"  # the root: rename refuses it
        with _expecting(source, folder):
            return self.rename(source[0], paths.join(folder[0], name), overwrite=False)

    def remove_by_id(self, ref: str) -> None:
        """Delete permanently the file or folder (with all it holds) a ref names."""
        target = self._locate(ref, "delete")
        with _expecting(target):
            self.remove(target[0])

    def open_read_by_id(self, ref: str, offset: int = 0, length: int | None = None, *,
                        version: uuid.UUID | None = None) -> "Download":
        """Stream the file a ref names (see open_read)."""
        target = self._locate(ref, "download")
        with _expecting(target):
            return self.open_read(target[0], offset, length, version=version)

    def open_write_by_id(self, parent_ref: str, name: str, *, mtime: datetime | None = None,
                         on_clash: str = "replace") -> "Upload":
        """Start an upload of `name` into the folder a ref names (see open_write)."""
        parent = self._locate(parent_ref, "upload")
        with _expecting(parent):
            return self.open_write(paths.join(parent[0], name), mtime=mtime, on_clash=on_clash)

    def _locate(self, ref: str, operation: str) -> tuple[str, int | None]:
        """A ref's path and node id, for an operation that resolves the path again."""
        try:
            with self._session() as session:
                place = self._place_of_ref(session, ref)
                return place.path, place.node.id if place.node else None
        except PermissionDenied:
            self.record_refusal(operation)
            raise

    def _place_of_ref(self, session: Session, ref: str) -> _Place:
        """Resolve a ref through its path, so that exactly the rules of paths apply."""
        parsed = refs.parse(ref)
        if self.me.door.reach is doors.Reach.USER:
            self._user(session)  # a disabled user is refused before anything is looked up
        path = self._path_of_ref(session, parsed)
        place = self._resolve(session, path)
        found = place.node.id if parsed.kind == "node" and place.node else place.ref
        if found != (parsed.id if parsed.kind == "node" else ref):
            raise NotFound()
        return place

    def _path_of_ref(self, session: Session, ref: refs.Ref) -> str:
        if ref.kind == "root":
            return "/"
        if ref.kind == "node":
            return self._path_of_node(session, ref.id)
        if self.me.door.reach is not doors.Reach.USER:
            raise NotFound()
        if ref.kind == "shared":
            return "/" + SHARED
        for owner, folders in self._shared_with_me(session).items():
            if next(iter(folders.values())).owner_id == ref.id:
                return paths.join("/" + SHARED, owner)
        raise NotFound()

    def _path_of_node(self, session: Session, node_id: int) -> str:
        """Where a node of this account shows in the principal's view, or NotFound."""
        chain = self._ancestry(session, node_id)
        ids = [row.id for row in chain]
        if not ids:
            raise NotFound()
        reach = self.me.door.reach
        if reach is doors.Reach.SHARE:
            return self._path_below(session, "/", chain, ids, self._link_root(session).node.id)
        audit_logs_id = session.get(Account, self.me.account_id).audit_folder_id
        if ids[0] == audit_logs_id:
            return self._path_below(session, "/" + AUDIT_LOGS, chain, ids, audit_logs_id)
        if reach is doors.Reach.AUDIT_LOGS:
            raise NotFound()
        home_id = self._user(session).home_folder_id
        if ids[0] == home_id:
            return self._path_below(session, "/", chain, ids, home_id)
        return self._path_through_share(session, chain, ids)

    def _path_through_share(self, session: Session, chain: list, ids: list[int]) -> str:
        """A node of another user, through a share to me that holds it.

        Shares may nest (a folder and one inside it both shared with me): the route is the
        one with write permission if any, else the outermost, so one node has one path.
        """
        routes = [(share.permission != "write", ids.index(share.folder_id), share.id, owner, name)
                  for owner, folders in self._shared_with_me(session).items()
                  for name, share in folders.items() if share.folder_id in ids]
        if not routes:
            raise NotFound()
        *_, owner, name = min(routes)
        shared_root = paths.join(paths.join("/" + SHARED, owner), name)
        return self._path_below(session, shared_root, chain, ids, ids[min(routes)[1]])

    def _path_below(self, session: Session, root_path: str, chain: list, ids: list[int], root_id: int) -> str:
        if root_id not in ids:
            raise NotFound()
        keys = self._keys(session)
        path = root_path
        for row in chain[ids.index(root_id) + 1:]:
            path = paths.join(path, keys.open_text(row.name_sealed, "node-name"))
        return path

    def _ancestry(self, session: Session, node_id: int) -> list:
        """The node and its ancestors in this account, from its root down (empty: no such node)."""
        return session.execute(text("""
            WITH RECURSIVE up(id, parent_id, name_sealed, depth) AS (
                SELECT id, parent_id, name_sealed, 0 FROM nodes WHERE id = :id AND account_id = :account
                UNION ALL SELECT n.id, n.parent_id, n.name_sealed, up.depth + 1
                FROM nodes n JOIN up ON n.id = up.parent_id WHERE up.depth < :limit)
            SELECT id, name_sealed FROM up ORDER BY depth DESC
        """), {"id": node_id, "account": self.me.account_id, "limit": MAX_DEPTH}).all()

    def _trail(self, session: Session, place: _Place) -> list[tuple[str, str]]:
        names = paths.parts(place.path)
        crumbs = [(refs.ROOT, "/")]
        for depth in range(1, len(names) + 1):  # the virtual levels above the first node
            level = self._resolve(session, "/" + "/".join(names[:depth]))
            if level.node is not None:
                chain = self._ancestry(session, place.node.id)[depth - 1 - len(names):]
                return crumbs + [(refs.node_ref(row.id), name) for row, name in zip(chain, names[depth - 1:])]
            crumbs.append((level.ref, names[depth - 1]))
        return crumbs

    def _username_of(self, session: Session, user_id: int | None) -> str | None:
        user = session.get(User, user_id) if user_id else None
        if user is None or user.account_id != self.me.account_id:
            return None
        return self.services.keyring.service(session).open_text(user.username_sealed, "username")

    # -- internals: resolution -------------------------------------------------------------
    def _session(self):
        return self.services.db.session()

    def _keys(self, session: Session) -> DataKeys:
        return self.services.keyring.account(session, self.me.account_id)

    def _resolve(self, session: Session, path: str) -> _Place:
        place = self._resolve_path(session, path)
        expected = (_EXPECTED_NODES.get() or {}).get(place.path)
        if expected is not None and (place.node is None or place.node.id != expected):
            raise NotFound()  # the node a ref named moved away before the operation resolved its path
        return place

    def _resolve_path(self, session: Session, path: str) -> _Place:
        parts = paths.parts(paths.normalise(path))
        reach = self.me.door.reach
        if reach is doors.Reach.SHARE:
            return self._walk(session, self._link_root(session), parts)
        if reach is doors.Reach.AUDIT_LOGS:
            return self._resolve_for_service(session, parts)
        user = self._user(session)
        if parts[:1] == (SHARED,):
            return self._resolve_shared(session, parts)
        if parts[:1] == (AUDIT_LOGS,):
            if not user.is_admin:
                raise NotFound()
            return self._walk(session, self._audit_logs(session, "read"), parts[1:])
        home = _Place("/", session.get(Node, user.home_folder_id), "write")
        return self._walk(session, home, parts)

    def _link_root(self, session: Session) -> _Place:
        """The link's share folder as `/`; a share since removed shows nothing."""
        share = session.get(Share, self.me.share_id)
        if share is None or share.account_id != self.me.account_id:
            raise NotFound()
        return _Place("/", session.get(Node, share.folder_id), share.permission, share=share, share_root=True)

    def _resolve_for_service(self, session: Session, parts: tuple[str, ...]) -> _Place:
        """A service job sees `/` holding only the account's `/Audit Logs`, which it may write."""
        if not parts:
            return _Place("/", virtual="service-root", children={AUDIT_LOGS: None})
        if parts[0] != AUDIT_LOGS:
            raise NotFound()
        return self._walk(session, self._audit_logs(session, "write"), parts[1:])

    def _audit_logs(self, session: Session, permission: str) -> _Place:
        account = session.get(Account, self.me.account_id)
        return _Place("/" + AUDIT_LOGS, session.get(Node, account.audit_folder_id), permission)

    def _user(self, session: Session) -> User:
        """The caller as the database knows them now (disabled, moved or demoted users lose access)."""
        user = session.get(User, self.me.user_id)
        if user is None or user.account_id != self.me.account_id or user.status != "active":
            raise PermissionDenied()
        return user

    def _lock_tree(self, session: Session) -> None:
        lock_tree(session, self.me.account_id)

    def _purge_soon(self) -> None:
        if self.services.settings.ingest_mode == "inline":
            purge = purge_pending  # no worker serves this host's spool queue
        else:
            purge = enqueue_purge
        _after_commit_quietly(f"purge after a change in account {self.me.account_id}", purge, self.services)

    def _resolve_shared(self, session: Session, parts: tuple[str, ...]) -> _Place:
        owners = self._shared_with_me(session)
        if len(parts) == 1:
            return _Place("/" + SHARED, virtual="shared", children=owners)
        folders = owners.get(parts[1])
        if folders is None:
            raise NotFound()
        owner_path = paths.join("/" + SHARED, parts[1])
        if len(parts) == 2:
            return _Place(owner_path, virtual="shared-owner", children=folders)
        share = folders.get(parts[2])
        if share is None:
            raise NotFound()
        root = _Place(paths.join(owner_path, parts[2]), session.get(Node, share.folder_id),
                      share.permission, share=share, share_root=True)
        return self._walk(session, root, parts[3:])

    def _walk(self, session: Session, place: _Place, names: tuple[str, ...]) -> _Place:
        node = place.node
        if node is None or node.account_id != self.me.account_id:
            raise NotFound()
        if names and place.permission == "request":
            raise NotFound()  # a request link sees nothing inside its folder, not even what exists
        for name in names:
            if node.kind != "folder":
                raise NotAFolder()
            node = self._child(session, node, name)
            if node is None:
                raise NotFound()
            place = _Place(paths.join(place.path, name), node, place.permission, share=place.share)
        return place

    def _child(self, session: Session, folder: Node, name: str) -> Node | None:
        index = self._keys(session).index(f"node:{folder.id}", name)
        return session.scalar(select(Node).where(Node.parent_id == folder.id, Node.name_index == index))

    def _shared_with_me(self, session: Session) -> dict[str, dict[str, Share]]:
        """{owner name: {folder name (with ' (2)' on clashes): share}} for shares to me."""
        rows = session.execute(
            select(Share, Node.name_sealed, User.username_sealed)
            .join(Node, Node.id == Share.folder_id).join(User, User.id == Share.owner_id)
            .where(Share.grantee_user_id == self.me.user_id, Share.account_id == self.me.account_id)
            .order_by(Share.id)).all()
        service, keys = self.services.keyring.service(session), self._keys(session)
        owners: dict[str, dict[str, Share]] = {}
        for share, folder_sealed, owner_sealed in rows:
            folders = owners.setdefault(service.open_text(owner_sealed, "username"), {})
            folders[_unique_name(keys.open_text(folder_sealed, "node-name"), folders)] = share
        return owners

    def _writable_parent(self, session: Session, path: str) -> tuple[_Place, str]:
        parent_path, name = paths.parent_and_name(paths.normalise(path))
        parent = self._resolve(session, parent_path)
        if parent.virtual or not parent.writable:
            raise PermissionDenied()
        if parent.node.kind != "folder":
            raise NotAFolder()
        if parent.path == "/" and parent.share is None and name in RESERVED_ROOT_NAMES:
            raise InvalidName(f"'{name}' is reserved at the top of every workspace")
        return parent, name

    def _check_changeable(self, place: _Place) -> None:
        if place.virtual or place.node.parent_id is None or place.share_root:
            raise PermissionDenied()
        if self.me.door.reach is doors.Reach.SHARE:
            raise PermissionDenied()  # a link never deletes, renames or retouches
        if not place.writable:
            raise PermissionDenied()

    # -- internals: entries ----------------------------------------------------------------
    def _entry(self, session: Session, place: _Place) -> Entry:
        if place.virtual:
            return Entry((paths.parts(place.path) or ("/",))[-1], place.path, "folder", id=place.ref)
        version = None
        if place.node.current_version_id:
            version = session.get(FileVersion, place.node.current_version_id)
        name = paths.parts(place.path)[-1] if place.path != "/" else "/"
        entry = self._node_entry(place.path, place.node, version, place.permission, name=name)
        return replace(entry, id=place.ref)  # "/" is "root" whatever its node

    def _children(self, session: Session, place: _Place) -> list[Entry]:
        """One query for the children and their current versions, as plain columns (fast on big folders)."""
        keys = self._keys(session)
        rows = session.execute(
            select(Node.id, Node.kind, Node.name_sealed, Node.mtime, FileVersion.id, FileVersion.size,
                   FileVersion.md5, FileVersion.sha256)
            .outerjoin(FileVersion, FileVersion.id == Node.current_version_id)
            .where(Node.parent_id == place.node.id)).all()
        prefix, writable = place.path.rstrip("/") + "/", place.permission == "write"
        entries = []
        for node_id, kind, name_sealed, mtime, version_id, size, md5, sha256 in rows:
            name = keys.open_text(name_sealed, "node-name")  # validated when it was stored
            entries.append(Entry(name, prefix + name, kind, size or 0, mtime, writable, md5, sha256,
                                 version_id, refs.node_ref(node_id)))
        return entries

    def _listing(self, session: Session, place: _Place) -> list[Entry]:
        """The entries of a folder, unsorted."""
        if place.virtual:
            return [Entry(name, paths.join(place.path, name), "folder", id=self._virtual_child_ref(session, value))
                    for name, value in place.children.items()]
        if place.node.kind != "folder":
            raise NotAFolder()
        if place.permission == "request":
            raise PermissionDenied()  # a request link never shows the folder's contents
        entries = self._children(session, place)
        if place.path == "/" and place.share is None:
            entries += self._root_extras(session, self._user(session))
        return entries

    def _virtual_child_ref(self, session: Session, value) -> str:
        if isinstance(value, dict):  # an owner under /Shared: {folder name: share}
            return refs.owner_ref(next(iter(value.values())).owner_id)
        if isinstance(value, Share):  # a shared folder under /Shared/<owner>
            return refs.node_ref(value.folder_id)
        return refs.node_ref(self._audit_logs(session, "read").node.id)  # the service's /Audit Logs

    def _root_extras(self, session: Session, user: User) -> list[Entry]:
        extras = [Entry(SHARED, "/" + SHARED, "folder", id=refs.SHARED)]
        if user.is_admin:
            audit_logs = self._audit_logs(session, "read").node
            extras.append(Entry(AUDIT_LOGS, "/" + AUDIT_LOGS, "folder", mtime=audit_logs.mtime,
                                id=refs.node_ref(audit_logs.id)))
        return extras

    @staticmethod
    def _node_entry(path: str, node: Node, version: FileVersion | None, permission: str,
                    name: str | None = None) -> Entry:
        name = name or paths.parts(path)[-1]
        if node.kind == "folder":  # a request link's folder takes uploads too
            return Entry(name, path, "folder", mtime=node.mtime, writable=permission in ("write", "request"),
                         id=refs.node_ref(node.id))
        return Entry(name, path, "file", size=version.size if version else 0, mtime=node.mtime,
                     writable=permission == "write", md5=version.md5 if version else None,
                     sha256=version.sha256 if version else None, version=version.id if version else None,
                     id=refs.node_ref(node.id))

    def _has_children(self, session: Session, node: Node) -> bool:
        return session.scalar(select(func.count()).where(Node.parent_id == node.id)) > 0

    # -- internals: deletion, audit, versions ---------------------------------------------
    def _purge_subtree(self, session: Session, node: Node) -> None:
        """Delete a node and everything below it; queue their ciphertext for erasure."""
        versions = session.execute(text("""
            WITH RECURSIVE tree(id) AS (
                SELECT id FROM nodes WHERE id = :root
                UNION ALL SELECT n.id FROM nodes n JOIN tree t ON n.parent_id = t.id)
            SELECT v.storage_key, CASE WHEN v.state = 'stored' THEN NULL ELSE v.spool_id END
            FROM file_versions v JOIN tree t ON v.node_id = t.id
        """), {"root": node.id}).all()
        for storage_key, spool_id in versions:
            session.add(PendingPurge(storage_key=storage_key, spool_id=spool_id))
        session.delete(node)  # cascades to descendants, versions (and their wrapped keys), shares
        session.flush()

    def _audit(self, session: Session, action: str, *, status: str = "ok", path: str | None = None,
               direction: str | None = None, nbytes: int | None = None, duration_ms: int | None = None,
               detail: str | None = None) -> None:
        if self.me.link_id is not None:
            detail = "; ".join(filter(None, (f"link {self.me.link_id}", detail)))
        audit.record(session, self.services.keyring, audit.Event(
            action=action, protocol=self.me.door.audit_protocol, status=status, account_id=self.me.account_id,
            user_id=self.me.user_id, username=self.me.username, ip=self.me.ip, direction=direction,
            path=path, bytes=nbytes, duration_ms=duration_ms, detail=detail))

    def record_transfer(self, action: str, path: str, *, status: str, nbytes: int, started: float,
                        detail: str | None = None) -> None:
        """Audit a finished or failed transfer in its own transaction."""
        with self._session() as session:
            self._audit(session, action, status=status, path=path, nbytes=nbytes,
                        direction="in" if action == "upload" else "out",
                        duration_ms=int((time.monotonic() - started) * 1000), detail=detail)

    def record_logout(self, started: float) -> None:
        """Audit the end of a logged-in session (`started` from time.monotonic())."""
        with self._session() as session:
            self._audit(session, "logout", duration_ms=int((time.monotonic() - started) * 1000))

    def record_refusal(self, operation: str, path: str | None = None) -> None:
        """Audit an operation the door refused (exec, shell, forwarding, an unsupported command)."""
        with self._session() as session:
            self._audit(session, "denied", status="refused", path=path, detail=operation)

    def report_integrity_failure(self, path: str) -> None:
        """Audit a failed integrity check and alert the account's admins."""
        with self._session() as session:
            self._audit(session, "integrity_failure", status="failed", path=path)
        enqueue_integrity_alert(self.services, self.me.account_id)

    def _version_state(self, version_id: uuid.UUID) -> str | None:
        with self._session() as session:
            version = session.get(FileVersion, version_id)
            return version.state if version else None


class Upload:
    """An upload in progress: `write` chunks, then exactly one of `commit` or `abort`."""

    def __init__(self, workspace: Workspace, parent_id: int, owner_id: int | None, path: str, name: str,
                 writer: ContentWriter, file_key: bytes, mtime: datetime | None, *, rename_on_clash: bool = False):
        self.workspace, self.path, self.name = workspace, path, name
        self._rename_on_clash = rename_on_clash
        self._parent_id, self._owner_id = parent_id, owner_id
        self._writer, self._file_key = writer, file_key
        self._mtime = mtime
        self._started = time.monotonic()
        self.state = "open"

    @property
    def size(self) -> int:
        return self._writer.size

    @property
    def storage_key(self) -> str:
        """Where the ciphertext is spooled and will be stored (what a purge must erase)."""
        return self._writer.storage_key

    def set_mtime(self, mtime: datetime) -> None:
        """The modification time to commit with the file (a client may send it before closing)."""
        self._mtime = mtime

    def write(self, data: bytes) -> int:
        return self._writer.write(data)

    def commit(self) -> Entry:
        """Make the upload durable and current, audited, then queue its ingest."""
        if self.state != "open":
            raise ValueError(f"upload already {self.state}")
        ws = self.workspace
        inline = ws.services.settings.ingest_mode == "inline"
        committing = False
        try:
            prints = self._writer.finish()
            if inline:  # this host's spool is not durable: the store must hold it before the reply
                upload_verified(ws.services.store, ws.services.spool, self._writer.storage_key,
                                cipher_size=prints.cipher_size, cipher_sha256=prints.cipher_sha256)
            with ws._session() as session:
                entry, replaced = self._commit_version(session, prints, stored=inline)
                ws._audit(session, "upload", path=self.path, direction="in", nbytes=prints.size,
                          duration_ms=int((time.monotonic() - self._started) * 1000))
                notifications.count_upload(session, self._parent_id, ws.me.user_id)
                session.flush()
                committing = True  # past this point only COMMIT itself can fail
        except BaseException as exc:
            if not (committing and self._committed_after_all(exc)):
                self._fail(keep_ciphertext=committing, inline=inline)
                raise
        self.state = "committed"
        self._after_commit(replaced, prints.cipher_size, inline)
        return entry

    def _committed_after_all(self, exc: BaseException) -> bool:
        """Whether a COMMIT that raised was applied anyway (its reply lost with the connection)."""
        try:
            with self.workspace._session() as session:
                found = session.get(FileVersion, self._writer.version_id) is not None
        except SealdropError:
            return False  # still unreachable: the sweeper decides later, from the rows
        if found:
            log.warning("upload of version %s committed although the commit reported %s",
                        self._writer.version_id, type(exc).__name__)
        return found

    def _fail(self, *, keep_ciphertext: bool, inline: bool) -> None:
        ws = self.workspace
        self.state = "aborted"
        if keep_ciphertext:
            # The commit may have been applied without our hearing it: removing published
            # ciphertext could leave a committed version pointing at nothing. The sweeper
            # removes it once the rows show that no version uses it.
            log.warning("commit of version %s failed or was not confirmed; ciphertext left to the sweeper",
                        self._writer.version_id)
        else:
            self._writer.abort()
            if inline:
                _remove_quietly(ws.services.store, self._writer.storage_key)
        ws.record_transfer("upload", self.path, status="failed", nbytes=self.size, started=self._started)

    def abort(self, reason: str = "aborted") -> None:
        """Discard the upload: no file appears, no ciphertext stays."""
        if self.state != "open":
            return
        self.state = "aborted"
        self._writer.abort()
        self.workspace.record_transfer("upload", self.path, status="failed", nbytes=self.size,
                                       started=self._started, detail=reason)

    def _commit_version(self, session: Session, prints, *, stored: bool) -> tuple[Entry, bool]:
        ws = self.workspace
        keys = ws._keys(session)
        index = keys.index(f"node:{self._parent_id}", self.name)
        now = datetime.now(timezone.utc)
        # The grant is checked again at commit: a share revoked or a user disabled meanwhile wins.
        place, _ = ws._writable_parent(session, self.path)
        if place.node.id != self._parent_id:
            raise NotFound("The folder changed during the upload")
        parent = session.get(Node, self._parent_id, with_for_update=True)
        if parent is None:
            raise NotFound("The folder was deleted during the upload")
        if self._rename_on_clash:  # the parent's lock makes the free name ours until COMMIT
            self.name = self._free_name(session, parent)
            self.path = paths.join(paths.parent_and_name(self.path)[0], self.name)
            index = keys.index(f"node:{self._parent_id}", self.name)
        if ws.me.share_id is not None:
            record_arrival(session, ws.me.share_id)
        session.execute(insert(Node).values(
            account_id=ws.me.account_id, owner_id=self._owner_id, parent_id=self._parent_id,
            kind="file", name_sealed=keys.seal_text(self.name, "node-name"), name_index=index,
        ).on_conflict_do_nothing())
        node = session.scalar(select(Node).where(Node.parent_id == self._parent_id, Node.name_index == index)
                              .with_for_update())
        if node.kind == "folder":
            raise IsAFolder()
        # Wrapped in the commit transaction, so a key rotation cannot retire the wrapping key
        # between the upload's start and its commit.
        wrapped, key_version = ws.services.keyring.wrap_file_key(
            session, ws.me.account_id, self._file_key, self._writer.version_id.bytes)
        version = FileVersion(
            id=self._writer.version_id, node_id=node.id, account_id=ws.me.account_id,
            storage_key=self._writer.storage_key, size=prints.size, md5=prints.md5, sha256=prints.sha256,
            cipher_size=prints.cipher_size, cipher_sha256=prints.cipher_sha256,
            wrapped_key=wrapped, key_version=key_version, state="stored" if stored else "spooled",
            stored_at=now if stored else None,
            spool_id=ws.services.settings.spool_id, mtime=self._mtime or now, created_by_id=ws.me.user_id,
            door=ws.me.door.name)
        session.add(version)
        session.flush()
        previous = session.get(FileVersion, node.current_version_id) if node.current_version_id else None
        node.current_version_id, node.mtime = version.id, self._mtime or now
        if previous is not None:
            # Last commit wins: the replaced version's key goes now, its ciphertext soon.
            session.add(purge_record(previous))
            session.delete(previous)
        return Workspace._node_entry(self.path, node, version, "write", name=self.name), previous is not None

    def _free_name(self, session: Session, parent: Node) -> str:
        """The upload's name, or `stem (n).ext` with the first n from 2 that no entry has."""
        stem, dot, ext = self.name.rpartition(".")
        if not stem:  # no extension (or a leading dot only): number the whole name
            stem, dot, ext = self.name, "", ""
        candidate, n = self.name, 2
        while self.workspace._child(session, parent, candidate) is not None:
            candidate, n = f"{stem} ({n}){dot}{ext}", n + 1
        return candidate

    def _after_commit(self, replaced: bool, cipher_size: int, inline: bool) -> None:
        services = self.workspace.services
        if replaced:
            self.workspace._purge_soon()
        if inline:
            services.spool.remove(self._writer.storage_key)
        else:
            _after_commit_quietly(f"ingest of version {self._writer.version_id}", enqueue_ingest,
                                  services, self._writer.version_id, cipher_size)


class Download:
    """A file's plaintext as an iterator of blocks; the transfer is audited when it ends."""

    def __init__(self, workspace: Workspace, path: str, size: int, blocks: Iterator[bytes], offset: int):
        self.workspace, self.path, self.size, self.offset = workspace, path, size, offset
        self._blocks = blocks
        self._started = time.monotonic()
        self.sent = 0
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for block in self._blocks:
                self.sent += len(block)
                yield block
        except IntegrityFailure:
            self._finish("failed", "integrity failure")
            self.workspace.report_integrity_failure(self.path)
            raise
        except SealdropError:
            self._finish("failed", "store unavailable")
            raise
        self._finish("ok")

    def close(self, status: str = "failed", detail: str | None = "interrupted") -> None:
        """End the download early (client gone, ABOR); audited once as incomplete. The
        stream stops reading ahead and gives its store connection back."""
        self._finish(status, detail)
        getattr(self._blocks, "close", lambda: None)()

    def _finish(self, status: str, detail: str | None = None) -> None:
        if self._done:
            return
        self._done = True
        self.workspace.record_transfer("download", self.path, status=status, nbytes=self.sent,
                                       started=self._started, detail=detail)


def _after_commit_quietly(what: str, func, *args) -> None:
    """Run a follow-up of a committed change; its failure must not undo the client's success.

    The change is durable already; the spool sweeper re-queues lost ingests and runs the
    pending purges, so a Redis or store outage here only delays the follow-up.
    """
    try:
        func(*args)
    except Exception as exc:  # noqa: BLE001 (any failure here is recovered by the sweeper)
        log.warning("%s not queued (%s); the spool sweeper will recover it", what, type(exc).__name__)


def _remove_quietly(store, storage_key: str) -> None:
    # Best effort after a failed inline upload; the object's key never reached the database.
    try:
        store.remove(storage_key)
    except SealdropError:
        pass


def _is_path(ref_or_path) -> bool:
    return isinstance(ref_or_path, str) and ref_or_path.startswith("/")


@contextlib.contextmanager
def _expecting(*located: tuple[str, int | None]):
    """Hold the paths of located refs to their nodes while a path operation resolves them again."""
    token = _EXPECTED_NODES.set({path: node_id for path, node_id in located if node_id is not None})
    try:
        yield
    finally:
        _EXPECTED_NODES.reset(token)


def _unique_name(name: str, taken: dict) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name} ({n})" in taken:
        n += 1
    return f"{name} ({n})"


def _root_of(session: Session, node: Node) -> int:
    while node.parent_id is not None:
        node = session.get(Node, node.parent_id)
    return node.id


def _is_within(session: Session, node: Node, ancestor: Node) -> bool:
    while node is not None:
        if node.id == ancestor.id:
            return True
        node = session.get(Node, node.parent_id) if node.parent_id else None
    return False
