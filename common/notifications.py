"""Notifications: who wants which mails, followed folders, and the events that queue a mail.

Three kinds, each chosen by the user or else by the account's default: `uploads` (a digest of
uploads into the folders a user follows), `alerts` (lockouts and failed integrity checks, to
admins), `exports` (the daily audit export is ready, to admins; off by default). The mails
themselves are jobs on the `mail` queue (common.jobs.notify) and name no file or path.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

from redis.exceptions import RedisError
from sqlalchemy import delete, func, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common import refs
from common.jobs import notify
from common.models import Account, Follow, User
from common.services import Services

KINDS = tuple(notify.PREFERENCES)
CHOICES = {"default": None, "on": True, "off": False}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preference:
    """One kind of mail for one user: their own choice (None: the default) and what applies."""

    kind: str
    choice: bool | None
    default: bool

    @property
    def effective(self) -> bool:
        return self.default if self.choice is None else self.choice


# -- preferences -----------------------------------------------------------------------------

def preferences(session: Session, user_id: int) -> list[Preference]:
    """A user's choice for each kind, beside the account's default."""
    user = session.get(User, user_id)
    account = session.get(Account, user.account_id)
    return [Preference(kind, getattr(user, f"notify_{kind}"), getattr(account, f"notify_{kind}_default"))
            for kind in KINDS]


def set_preferences(session: Session, user_id: int, choices: dict[str, bool | None]) -> None:
    """Store a user's choices (None: follow the account's default)."""
    user = session.get(User, user_id, with_for_update=True)
    for kind, choice in choices.items():
        if kind not in KINDS:
            raise ValueError(f"unknown notification kind {kind!r}")
        setattr(user, f"notify_{kind}", choice)


# -- following folders -----------------------------------------------------------------------

def followable(session: Session, user_id: int, ref: str) -> int | None:
    """The folder id behind a folder page's ref (`root`: the user's home); None for the virtual
    /Shared levels. The caller has checked, through the Workspace, that the user can open it."""
    parsed = refs.parse(ref)
    if parsed.kind == "node":
        return parsed.id
    if parsed.kind == "root":
        return session.get(User, user_id).home_folder_id
    return None


def is_following(session: Session, user_id: int, folder_id: int) -> bool:
    return session.get(Follow, (user_id, folder_id)) is not None


def set_following(session: Session, user_id: int, folder_id: int, follow: bool) -> None:
    """Follow or stop following a folder (the caller has checked that the user can open it)."""
    if follow:
        session.execute(insert(Follow).values(user_id=user_id, folder_id=folder_id).on_conflict_do_nothing())
    else:
        session.execute(delete(Follow).where(Follow.user_id == user_id, Follow.folder_id == folder_id))


def count_upload(session: Session, folder_id: int, uploader_id: int | None) -> None:
    """In the upload's transaction: one more file for the digests of the folder's other followers."""
    query = update(Follow).where(Follow.folder_id == folder_id).values(
        pending=Follow.pending + 1, pending_since=func.coalesce(Follow.pending_since, func.now()))
    if uploader_id is not None:
        query = query.where(Follow.user_id != uploader_id)
    session.execute(query)


# -- events that queue a mail ----------------------------------------------------------------

def export_ready(services: Services, account_id: int, day: date) -> None:
    """Queue "your daily audit export is ready" for the account's admins who opted in."""
    notify.enqueue_export_ready(services, account_id, day)


def lockout(services: Services, account_id: int, user_id: int) -> None:
    """Queue the admins' alert about a user name that froze; a Redis outage loses the mail, not the login reply."""
    try:
        notify.enqueue_lockout_alert(services, account_id, user_id)
    except RedisError:
        log.warning("lockout alert for user %s of account %s not queued: Redis unreachable", user_id, account_id)
