"""The session frame both transfer doors share: session caps, the ban check, the logout audit.

Each door keeps only what its protocol makes different: when it asks (FTPS at the first
command, SFTP before the SSH banner) and how it refuses (a 421 reply, a closed socket).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from common import auth, doors
from common.admission import Admission, SharedAdmission
from common.errors import SealdropError
from common.services import Services
from common.vfs import Workspace

# Sessions one transfer process serves at once, every client together, on all its ports.
MAX_SESSIONS = 500


@dataclass(frozen=True)
class SessionLimits:
    """How many sessions a transfer process holds: in all, per client, and before login."""

    max_sessions: int = MAX_SESSIONS
    max_sessions_per_ip: int = 50
    max_unauthenticated_per_ip: int = 10
    auth_timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings):
        return cls(max_sessions_per_ip=settings.max_sessions_per_ip,
                   max_unauthenticated_per_ip=settings.max_unauthenticated_per_ip,
                   auth_timeout=float(settings.login_timeout_seconds))


def admission(door: str, limits: SessionLimits, redis_url: str | None = None) -> Admission:
    """The connection slots of a door's process, capped per client when its door row says so;
    with `redis_url`, the per-client counts are shared by every process of the door."""
    per_client, unauthenticated = limits.max_sessions_per_ip, limits.max_unauthenticated_per_ip
    caps = dict(max_total=limits.max_sessions, max_per_client=per_client,
                max_unauthenticated_per_client=unauthenticated)
    if doors.door(door).session_cap is not doors.SessionCap.PER_CLIENT:
        caps.update(max_per_client=limits.max_sessions, max_unauthenticated_per_client=limits.max_sessions)
        return Admission(**caps)
    return SharedAdmission(redis_url, door, **caps) if redis_url else Admission(**caps)


def address_banned(services: Services, door: str, session_id: str, ip: str) -> bool:
    """Whether the defender bans this client; the door then ends the session at once.

    Asked on the session's own thread, so a slow database never stalls the accept loop."""
    if not auth.is_banned(services, ip):
        return False
    _door_log(door).info("%s session %s: address banned, disconnected", door, session_id)
    return True


class LogoutAudit:
    """The `logout` event of one session: armed at login, recorded once however the session ends
    (QUIT, a dropped connection, a timeout, shutdown)."""

    def __init__(self, door: str, session_id: str):
        self.door, self.session_id = door, session_id
        self._workspace: Workspace | None = None
        self._since = 0.0

    def logged_in(self, workspace: Workspace) -> None:
        self._workspace, self._since = workspace, time.monotonic()

    def record(self) -> None:
        workspace, self._workspace = self._workspace, None
        if workspace is None:
            return
        try:
            workspace.record_logout(self._since)
        except SealdropError as exc:  # the session is over either way: its slot must still go
            _door_log(self.door).warning("%s session %s: could not record its end (%s)",
                                         self.door, self.session_id, exc.code)


def _door_log(door: str) -> logging.Logger:
    # Under the door's own logger, as every other line of its sessions.
    return logging.getLogger(f"transfer.{door}")
