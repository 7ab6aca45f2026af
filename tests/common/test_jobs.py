"""The job registry: each job's queue, timeout and retries come from its `@job` declaration,
and every job RQ may find in Redis is importable by the dotted path it was queued under."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import secrets
import uuid

import pytest
from rq import Queue
from rq.job import Job
from rq.utils import import_attribute

import common.jobs
from common.jobs.alerts import integrity_alert
from common.jobs.ingest import enqueue_ingest, ingest, ingest_job_id
from common.jobs.invitations import share_invitation
from common.jobs.purge import enqueue_purge, purge
from common.jobs.registry import (
    FAILURE_TTL, JOBS, MAIL_QUEUE, MAINTENANCE_QUEUE, ingest_queue_name, queue_name,
)
from common.jobs.sweep import sweep_all
from common.services import Services

# The names jobs wait under in Redis: renaming one strands the jobs already queued.
QUEUED_NAMES = {
    "common.jobs.ingest.ingest", "common.jobs.purge.purge", "common.jobs.sweep.sweep",
    "common.jobs.sweep.sweep_all", "common.jobs.fixity.fixity", "common.jobs.alerts.integrity_alert",
    "common.jobs.invitations.share_invitation", "common.jobs.login_state.prune_login_state",
    "common.jobs.invitations.password_link", "common.jobs.arrivals.arrivals_digest",
    "common.jobs.notify.lockout_alert", "common.jobs.notify.export_ready", "common.jobs.notify.send_digests",
    "common.jobs.chain.verify_chain", "common.jobs.audit_exports.export_audit_day",
    "common.jobs.audit_exports.export_fan_out",
}


def test_every_job_is_found_by_the_name_it_is_queued_under():
    for module in pkgutil.iter_modules(common.jobs.__path__):
        importlib.import_module(f"common.jobs.{module.name}")
    assert set(JOBS) == QUEUED_NAMES
    for name, spec in JOBS.items():
        assert import_attribute(name).job_spec is spec


@pytest.fixture
def spool_services(settings):
    """Services of a spool no worker serves, so the queued jobs stay where they were put."""
    svc = Services(dataclasses.replace(settings, spool_id="jb" + secrets.token_hex(5)))
    yield svc
    Queue(ingest_queue_name(svc.settings.spool_id), connection=svc.redis).delete(delete_jobs=True)
    svc.close()


def test_enqueue_takes_queue_timeout_and_retries_from_the_job(spool_services):
    svc, version_id = spool_services, uuid.uuid4()
    assert enqueue_ingest(svc, version_id, 50 * 1024 * 1024)
    job = Job.fetch(ingest_job_id(version_id), connection=svc.redis)
    assert job.func_name == "common.jobs.ingest.ingest"
    assert job.origin == ingest_queue_name(svc.settings.spool_id)
    assert job.timeout == ingest.job_spec.timeout + 10  # 50 MiB at 5 MiB/s on top
    assert job.retries_left == ingest.job_spec.retry.max
    assert job.failure_ttl == FAILURE_TTL


def test_a_purge_goes_to_the_queue_of_the_spool_it_names(spool_services):
    svc = spool_services
    enqueue_purge(svc)
    job = Job.fetch(f"purge-{svc.settings.spool_id}", connection=svc.redis)
    assert job.func_name == "common.jobs.purge.purge"
    assert job.origin == ingest_queue_name(svc.settings.spool_id)
    assert (job.timeout, job.retries_left) == (purge.job_spec.timeout, purge.job_spec.retry.max)


def test_shared_jobs_name_their_shared_queues(spool_services):
    assert queue_name(spool_services, integrity_alert) == MAIL_QUEUE
    assert queue_name(spool_services, share_invitation) == MAIL_QUEUE
    assert queue_name(spool_services, sweep_all) == MAINTENANCE_QUEUE
