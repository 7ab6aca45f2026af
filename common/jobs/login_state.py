"""Pruning of login state: lockout, defender and ban rows whose windows have passed, ended portal sessions."""
from __future__ import annotations

from common import auth
from common.jobs.registry import MAINTENANCE_QUEUE, job, worker_services


@job(MAINTENANCE_QUEUE, timeout=120)
def prune_login_state() -> int:
    """Drop lockout, defender and ban rows that can no longer matter (a periodic job)."""
    services = worker_services()
    with services.db.session() as session:
        return auth.prune_login_state(session, services.settings)
