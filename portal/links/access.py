"""The link a request came through, and what its visitor's server-side session knows of it.

The anonymous web session (portal.sessions) keeps, per link id: whether its password was
given, whether the visit was audited, and which files it counted as downloads (those may be
resumed with a Range once the link's download limit is reached).
"""
from __future__ import annotations

from dataclasses import dataclass

from flask import g, render_template, session

from common import sharing
from common.errors import NotFound
from common.models import ShareLink
from common.vfs import Principal, Workspace
from portal.auth.current import services
from portal.security import client_address


class DeadLink(NotFound):
    """A link that does not work, whatever the reason (shown as one page)."""


@dataclass(frozen=True)
class OpenLink:
    """What a request needs of its link, read once per request."""

    id: int
    share_id: int
    account_id: int
    permission: str
    needs_password: bool
    spent: bool


def open_link(token: str, *, spent_ok: bool) -> OpenLink:
    """The live link of a token, or DeadLink."""
    with services().db.session() as db:
        link = sharing.live_link(db, token, spent_ok=spent_ok)
        if link is None:
            raise DeadLink()
        return OpenLink(link.id, link.share_id, link.account_id, link.permission, link.password_hash is not None,
                        link.max_uses is not None and link.use_count >= link.max_uses)


def dead_page():
    # One page, one status, for a guessed, expired, revoked, spent or deleted link alike.
    return render_template("links/dead.html"), 404


def state(link: OpenLink) -> dict:
    return dict((session.get("links") or {}).get(str(link.id), {}))


def remember(link: OpenLink, **changes) -> None:
    links = dict(session.get("links") or {})  # reassigned whole: the session sees the change
    links[str(link.id)] = {**state(link), **changes}
    session["links"] = links


def is_unlocked(link: OpenLink) -> bool:
    return not link.needs_password or bool(state(link).get("unlocked"))


def unlock(link: OpenLink, password: str) -> bool:
    """Check a visitor's password (rate-limited per link and per address); True opens the link."""
    svc = services()
    with svc.db.session() as db:
        row = db.get(ShareLink, link.id)
        if sharing.check_link_password(svc.redis, row, password, client_address()):
            session.rotate = True  # a new session token once the password is given (no fixation)
            remember(link, unlocked=True)
            return True
        sharing.record_link_visit(db, svc.keyring, row, client_address(), status="refused", detail="wrong password")
    return False


def count_visit(link: OpenLink) -> None:
    """One `link_access` event per link session, when its visitor is let in."""
    if state(link).get("visited"):
        return
    svc = services()
    with svc.db.session() as db:
        sharing.record_link_visit(db, svc.keyring, db.get(ShareLink, link.id), client_address())
    remember(link, visited=True)


def count_download(link: OpenLink, ref: str, first_byte: int) -> None:
    """Count a download: every request that starts at the file's first byte, and the first
    request for a file in this link session wherever it starts (so ranges that skip byte 0 are
    no way around the limit); only a resume of a file this session counted is free."""
    if first_byte != 0 and ref in state(link).get("counted", []):
        return
    with services().db.session() as db:
        if not sharing.count_download(db, link.id):
            raise DeadLink()
    remember(link, counted=sorted({*state(link).get("counted", []), ref}))


def link_workspace() -> Workspace:
    link: OpenLink = g.link
    return Workspace(services(), Principal.for_link(link.share_id, link.account_id, ip=client_address(),
                                                    link_id=link.id))
