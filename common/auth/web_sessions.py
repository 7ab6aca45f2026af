"""Rows of portal sessions that ended: deleted by the login-state pruning job.

The portal (portal.sessions) decides when a session ends (idle, absolute, sign-out, a new
session version); a row is kept a day longer, so the profile can still tell recent ones apart.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import delete
from sqlalchemy.orm import Session

from common.models import WebSession

KEEP_ENDED = timedelta(days=1)


def prune(session: Session) -> int:
    """Delete session rows that ended (expired, revoked or idle) more than a day ago."""
    cutoff = datetime.now(timezone.utc) - KEEP_ENDED
    result = session.execute(delete(WebSession).where(
        (WebSession.expires_at < cutoff) | (WebSession.revoked_at < cutoff) | (WebSession.last_seen_at < cutoff)))
    return result.rowcount
