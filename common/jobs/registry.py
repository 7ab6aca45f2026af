"""The job registry and queue plumbing: each job declares its queue and timeout where it is
defined (`@job(queue, timeout)`), and `enqueue_once` reads them.

Queues: `ingest.<spool id>` (SPOOL_QUEUE: ingest, purge and the spool sweeper; only that host's
worker sees its spool), `mail` (alerts, invitations), `default` (the clock's fan-out, fixity,
login-state pruning). RQ finds a queued job by its dotted path (`common.jobs.ingest.ingest`), so
moving a job function renames the jobs already waiting in Redis.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from rq import Queue, Retry, Worker
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus

from common.config import settings_from_environment
from common.services import Services

SPOOL_QUEUE = "ingest"  # stands for `ingest.<spool id>`, the queue of one spool's host
MAINTENANCE_QUEUE = "default"
MAIL_QUEUE = "mail"
FAILURE_TTL = 7 * 24 * 3600  # failed jobs hold only ids, but need not linger for a year
# A job in one of these states will still run (or is running): do not queue it again.
WAITING = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED)


@dataclass(frozen=True)
class JobSpec:
    queue: str
    timeout: int
    retry: Retry | None = None


JOBS: dict[str, JobSpec] = {}  # dotted path (as RQ stores it) -> spec


def job(queue: str, timeout: int, retry: Retry | None = None):
    """Declare a function an RQ job on `queue`, stopped after `timeout` seconds."""

    def register(func: Callable) -> Callable:
        func.job_spec = JobSpec(queue, timeout, retry)
        JOBS[f"{func.__module__}.{func.__qualname__}"] = func.job_spec
        return func

    return register


def spec(func: Callable) -> JobSpec:
    return func.job_spec


def ingest_queue_name(spool_id: str) -> str:
    """The queue served only by the workers of the host that holds this spool."""
    return f"ingest.{spool_id}"


def queue_name(services: Services, func: Callable, spool_id: str | None = None) -> str:
    """The queue a job goes to: its declared one, or a spool's (this host's by default)."""
    declared = spec(func).queue
    if declared != SPOOL_QUEUE:
        return declared
    return ingest_queue_name(spool_id or services.settings.spool_id)


@lru_cache(maxsize=1)
def worker_services() -> Services:
    """The services of a worker process, built from its environment on first use."""
    return Services(settings_from_environment())


def queue(services: Services, name: str) -> Queue:
    """An RQ queue on the service's Redis."""
    return Queue(name, connection=services.redis)


def enqueue_once(services: Services, func: Callable, *args, job_id: str, spool_id: str | None = None,
                 timeout: int | None = None) -> bool:
    """Queue a job under a fixed id unless one with that id will still run; True if queued.

    The queue, timeout and retries are the job's own (`timeout` overrides for this run). A
    finished, failed or stopped job of that id, or one whose worker died, is replaced.
    """
    try:
        existing = Job.fetch(job_id, connection=services.redis)
    except NoSuchJobError:
        existing = None
    if existing is not None:
        if is_alive(services, existing):
            return False
        existing.delete()
    declared = spec(func)
    try:
        queue(services, queue_name(services, func, spool_id)).enqueue(
            func, *args, job_id=job_id, unique=True, job_timeout=timeout or declared.timeout,
            retry=declared.retry, failure_ttl=FAILURE_TTL, result_ttl=0)
    except DuplicateJobError:
        return False  # someone queued it between our check and our enqueue
    return True


def is_waiting(services: Services, job_id: str) -> bool:
    """Whether the job of this id waits in a queue (not yet started)."""
    try:
        return Job.fetch(job_id, connection=services.redis).get_status() in WAITING
    except NoSuchJobError:
        return False


def is_alive(services: Services, job: Job) -> bool:
    """Whether a job will still run: waiting in a queue, or started by a worker still alive."""
    status = job.get_status(refresh=True)
    if status in WAITING:
        return True
    if status != JobStatus.STARTED:
        return False
    return _worker_alive(services, job.worker_name)


def _worker_alive(services: Services, worker_name: str | None) -> bool:
    if not worker_name:
        return True  # being handed to a worker right now
    worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + worker_name,
                                connection=services.redis)
    if worker is None:
        return False  # its heartbeat lapsed: the worker is gone
    if worker.hostname != socket.gethostname() or not worker.pid:
        # Another host's worker: its own maintenance (StartedJobRegistry.cleanup) decides.
        return True
    try:
        os.kill(worker.pid, 0)
    except ProcessLookupError:
        return False  # killed (SIGKILL, OOM) without a word: its job is abandoned
    except PermissionError:
        return True
    return True
