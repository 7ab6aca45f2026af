"""Refs: the ids a URL carries instead of a name, and the pages and details the file views show.

A ref names one place of a principal's Workspace without naming it:

- `root`: `/` of the principal's view (a user's home, a link's shared folder);
- `shared`: the virtual `/Shared` folder;
- `shared-<user id>`: the virtual `/Shared/<owner>` folder of that owner;
- `n<node id>`: a file or folder (a shared folder, `/Audit Logs` and everything below).

A ref is only a handle: the Workspace resolves it for the principal again on every call,
with the same ownership and share checks as a path. Anything that is not exactly one of
these forms is NotFound, as is a ref the principal cannot reach.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from common.errors import NotFound

ROOT = "root"
SHARED = "shared"
MAX_ID = 2**63 - 1  # BIGINT

_NODE = re.compile(r"n([1-9][0-9]{0,18})")
_SHARED_OWNER = re.compile(r"shared-([1-9][0-9]{0,18})")
SORT_KEYS = ("name", "size", "mtime")


@dataclass(frozen=True)
class Ref:
    """A parsed ref: `kind` is "root", "shared", "shared-owner" or "node"; `id` the number."""

    kind: str
    id: int | None = None


def node_ref(node_id: int) -> str:
    return f"n{node_id}"


def owner_ref(user_id: int) -> str:
    return f"shared-{user_id}"


def parse(ref) -> Ref:
    """The parsed form of a ref, or NotFound for anything else (never a partial match)."""
    if not isinstance(ref, str):
        raise NotFound()
    if ref == ROOT:
        return Ref("root")
    if ref == SHARED:
        return Ref("shared")
    for kind, pattern in (("node", _NODE), ("shared-owner", _SHARED_OWNER)):
        match = pattern.fullmatch(ref)
        if match and int(match.group(1)) <= MAX_ID:
            return Ref(kind, int(match.group(1)))
    raise NotFound()


@dataclass(frozen=True)
class Page:
    """One page of a folder: folders first, then files, in the order asked for."""

    entries: list  # of common.vfs.Entry
    total: int  # entries in the folder
    folders: int
    files: int
    offset: int
    limit: int


@dataclass(frozen=True)
class Details:
    """What the file details view shows; fingerprints in hex, uploader and door of the current version."""

    id: str
    name: str
    kind: str
    size: int
    mtime: datetime
    created: datetime | None  # when the file or folder was first made
    uploaded: datetime | None  # when its current content arrived
    md5: str | None
    sha256: str | None
    uploaded_by: str | None  # None once that user is gone
    door: str | None  # the door the current content came through
    writable: bool
    version: uuid.UUID | None


def sort_entries(entries: list, sort: str, descending: bool) -> list:
    """Folders first, then files, each by `sort`; equal sizes or dates in name order."""
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort {sort!r}")
    by_name = sorted(entries, key=lambda e: (e.name.casefold(), e.name, e.id or ""))
    if sort != "name":
        # Python's sort is stable, also with reverse=True: ties keep the name order above.
        by_name.sort(key=lambda e: e.size if sort == "size" else e.mtime, reverse=descending)
    elif descending:
        by_name.reverse()
    folders = [e for e in by_name if e.is_folder]
    return folders + [e for e in by_name if not e.is_folder]
