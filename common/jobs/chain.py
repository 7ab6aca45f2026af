"""Verifying an account's audit chain as a job (the portal's "verify the chain" button): the
result is kept as a ChainCheck row, which the audit and compliance pages show."""
from __future__ import annotations

import logging

from sqlalchemy import select

from common import audit
from common.jobs.registry import MAINTENANCE_QUEUE, enqueue_once, is_waiting, job, worker_services
from common.models import Account, ChainCheck
from common.services import Services

log = logging.getLogger(__name__)


def chain_check_job_id(account_id: int) -> str:
    return f"verify-chain-{int(account_id)}"


def enqueue_chain_check(services: Services, account_id: int) -> bool:
    """Queue a verification of the account's chain; False if one is already waiting."""
    return enqueue_once(services, verify_chain, int(account_id), job_id=chain_check_job_id(account_id))


def is_check_waiting(services: Services, account_id: int) -> bool:
    return is_waiting(services, chain_check_job_id(account_id))


@job(MAINTENANCE_QUEUE, timeout=3600)
def verify_chain(account_id: int) -> bool:
    return check_chain(worker_services(), int(account_id)).ok


def check_chain(services: Services, account_id: int) -> ChainCheck:
    """Walk the account's chain and record the outcome (events checked, the head, the problem)."""
    with services.db.session() as session:
        if session.get(Account, account_id) is None:
            raise LookupError(f"account {account_id} does not exist")
        report = audit.verify_chain(session, account_id)
        head = session.get(Account, account_id).audit_head if report.ok else None
        check = ChainCheck(account_id=account_id, ok=report.ok, events=report.count, head=head,
                           detail=report.problem)
        session.add(check)
        session.flush()
        session.expunge(check)
    log.info("audit chain of account %s checked: %s, %d events", account_id, "ok" if report.ok else "BROKEN",
             report.count)
    return check


def last_check(services: Services, account_id: int) -> ChainCheck | None:
    """The account's latest chain verification, if any."""
    with services.db.session() as session:
        check = session.scalar(select(ChainCheck).where(ChainCheck.account_id == account_id)
                               .order_by(ChainCheck.checked_at.desc(), ChainCheck.id.desc()).limit(1))
        if check is not None:
            session.expunge(check)
        return check
