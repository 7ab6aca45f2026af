"""Ingest, purge and the spool sweeper against real Postgres, Redis, S3 and `rq worker` processes.

Each test has a spool (and so an ingest queue) of its own, so no other test's worker takes its
jobs. Store outages go through a TCP proxy in front of the shared store that the test cuts or
slows; the shared store itself is never stopped.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.errors import IntegrityFailure, NotFound, TransientError
from common.jobs.fixity import fixity
from common.jobs.ingest import LOST_CIPHERTEXT_TRIES, mark_stored, enqueue_ingest, ingest_job_id, ingest_version
from common.jobs.purge import purge_pending
from common.jobs.registry import MAIL_QUEUE, MAINTENANCE_QUEUE, ingest_queue_name
from common.jobs.sweep import ORPHAN_READY_SECONDS, STALE_TEMP_SECONDS, fan_out_sweeps, register_spool, requeue_lost_ingests, sweep_all, sweep_spool
from common.models import AuditEvent, FileVersion, PendingPurge, Spool
from common.services import Services
from tests.netfaults import TcpProxy
from tests.factories import (
    MiB, admin_workspace, assert_stored_once, current_version, download, upload, wait_for,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def proxy(settings):
    relay = TcpProxy(settings.s3_endpoint)
    yield relay
    relay.close()


@pytest.fixture
def own_settings(settings, migrated, tmp_path, proxy):
    """Settings with a spool and queue of this test's own, reaching the store through the proxy."""
    return dataclasses.replace(settings, spool_id="ing" + secrets.token_hex(5),
                               spool_dir=tmp_path / "spool", s3_endpoint=proxy.endpoint)


@pytest.fixture
def own(own_settings):
    svc = Services(own_settings)
    svc.store.ensure_bucket()
    yield svc
    _clear_queue(svc)
    svc.close()


def _clear_queue(svc: Services) -> None:
    q = Queue(ingest_queue_name(svc.settings.spool_id), connection=svc.redis)
    for registry in (q, q.scheduled_job_registry, q.started_job_registry, q.failed_job_registry):
        for job_id in registry.get_job_ids():
            try:
                Job.fetch(job_id, connection=svc.redis).delete()
            except Exception:
                pass
    q.delete(delete_jobs=True)


@pytest.fixture
def workspace(own, account):
    return admin_workspace(own, account, door="sftp")


def run_worker(svc: Services, test_env: dict, *, wait: bool = True, **popen) -> subprocess.Popen:
    """A real `rq worker --burst` on the test's own queue, configured like a deployment."""
    env = {**os.environ, **test_env, "SPOOL_ID": svc.settings.spool_id,
           "SPOOL_DIR": str(svc.settings.spool_dir), "S3_ENDPOINT": svc.settings.s3_endpoint,
           "DATABASE_URL": svc.settings.database_url, "PYTHONPATH": str(REPO_ROOT)}
    command = [str(Path(sys.executable).with_name("rq")), "worker", "--burst", "-q",
               "-u", svc.settings.redis_url, ingest_queue_name(svc.settings.spool_id)]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, **popen)
    if wait:
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, output.decode(errors="replace")
    return proc


def children_of(pid: int) -> list[int]:
    """Direct child processes of `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


# -- store outage -------------------------------------------------------------------------

def test_store_outage_keeps_accepting_and_ingest_catches_up(own, workspace, proxy, test_env):
    proxy.cut_all()
    data = os.urandom(3 * MiB + 17)
    upload(workspace, "/during-outage.bin", data)
    assert download(workspace, "/during-outage.bin") == data  # served from the spool
    version = current_version(own, workspace, "/during-outage.bin")
    with pytest.raises(TransientError):
        ingest_version(own, version.id)
    assert current_version(own, workspace, "/during-outage.bin").state == "spooled"
    assert own.spool.has(version.storage_key)

    proxy.restore()
    run_worker(own, test_env)  # the job queued at commit, run by a real worker
    assert_stored_once(own, version, data)
    assert download(workspace, "/during-outage.bin") == data  # now from the store
    assert ingest_version(own, version.id) == "already stored"  # idempotent


def test_inline_ingest_stores_before_the_reply(own_settings, account):
    inline = Services(dataclasses.replace(own_settings, ingest_mode="inline"))
    try:
        ws = admin_workspace(inline, account)
        data = os.urandom(MiB + 5)
        upload(ws, "/inline.bin", data)
        version = current_version(inline, ws, "/inline.bin")
        assert version.state == "stored" and not inline.spool.has(version.storage_key)
        assert download(ws, "/inline.bin") == data
        assert_stored_once(inline, version, data)
    finally:
        inline.close()


def test_inline_ingest_in_an_outage_fails_the_upload_and_leaves_nothing(own_settings, proxy, account):
    inline = Services(dataclasses.replace(own_settings, ingest_mode="inline"))
    try:
        ws = admin_workspace(inline, account)
        proxy.cut_all()
        with pytest.raises(TransientError):
            upload(ws, "/lost.bin", os.urandom(MiB))
        with pytest.raises(NotFound):
            ws.stat("/lost.bin")
        assert inline.spool.ready_keys() == [] and list(inline.spool.tmp.iterdir()) == []
    finally:
        inline.close()


# -- a worker killed mid-upload ------------------------------------------------------------

def test_worker_killed_mid_ingest_is_rerun_and_stores_once(own, workspace, proxy, test_env):
    data = os.urandom(24 * MiB)
    upload(workspace, "/big.bin", data)
    version = current_version(own, workspace, "/big.bin")
    job_id = ingest_job_id(version.id)
    proxy.upload_rate = 3 * MiB  # about eight seconds of upload: room to kill it halfway
    before = proxy.forwarded
    worker = run_worker(own, test_env, wait=False, start_new_session=True)
    try:
        wait_for(lambda: proxy.forwarded - before > 6 * MiB, timeout=90)
        assert Job.fetch(job_id, connection=own.redis).get_status() == JobStatus.STARTED
    finally:
        # The work-horse runs in a process group of its own (rq calls setpgrp): kill both.
        for pid in [*children_of(worker.pid), worker.pid]:
            os.killpg(pid, signal.SIGKILL)
        worker.communicate(timeout=30)
    assert current_version(own, workspace, "/big.bin").state == "spooled"
    job = Job.fetch(job_id, connection=own.redis)
    assert job.get_status() == JobStatus.STARTED  # abandoned: nobody will finish it

    proxy.upload_rate = None
    assert requeue_lost_ingests(own) == 1  # the sweeper sees the dead worker
    assert requeue_lost_ingests(own) == 0  # and queues it only once
    run_worker(own, test_env)
    assert_stored_once(own, version, data)
    assert download(workspace, "/big.bin") == data


# -- two versions in a row -----------------------------------------------------------------

@pytest.mark.parametrize("order", ["earlier-first", "later-first", "earlier-before-replace"])
def test_later_version_stays_current_whatever_the_ingest_order(own, workspace, order):
    first, second = b"first " * 50_000, b"second " * 60_000
    upload(workspace, "/report.csv", first)
    v1 = current_version(own, workspace, "/report.csv")
    if order == "earlier-before-replace":
        assert ingest_version(own, v1.id) == "stored"
    upload(workspace, "/report.csv", second)
    v2 = current_version(own, workspace, "/report.csv")
    ingests = {"earlier-first": [v1, v2], "later-first": [v2, v1], "earlier-before-replace": [v2]}[order]
    results = [ingest_version(own, v.id) for v in ingests]
    # The earlier version's row went at the later commit: its ingest finds nothing to do.
    assert results == {"earlier-first": ["gone", "stored"], "later-first": ["stored", "gone"],
                       "earlier-before-replace": ["stored"]}[order]
    purge_pending(own)

    assert current_version(own, workspace, "/report.csv").id == v2.id
    assert download(workspace, "/report.csv") == second
    assert_stored_once(own, v2, second)
    assert own.store.stat(v1.storage_key) is None
    assert not own.spool.has(v1.storage_key)
    with own.db.session() as session:
        assert session.get(FileVersion, v1.id) is None
        assert session.scalar(select(PendingPurge).where(PendingPurge.storage_key == v1.storage_key)) is None


def test_version_deleted_during_upload_leaves_no_object(own, workspace):
    upload(workspace, "/gone.bin", os.urandom(200_000))
    version = current_version(own, workspace, "/gone.bin")
    # The upload finished but the file was deleted (and purged) before it could be marked.
    own.store.put(version.storage_key, open(own.spool.path(version.storage_key), "rb"), version.cipher_size)
    workspace.remove("/gone.bin")
    assert mark_stored(own, version.id, version.storage_key) == "gone"
    assert own.store.stat(version.storage_key) is None
    assert ingest_version(own, version.id) == "gone"


# -- the sweeper ---------------------------------------------------------------------------

def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_sweeper_requeues_cleans_and_purges(own, workspace):
    data = os.urandom(100_000)
    upload(workspace, "/lost.bin", data)
    lost = current_version(own, workspace, "/lost.bin")
    Job.fetch(ingest_job_id(lost.id), connection=own.redis).delete()  # as if Redis lost it
    upload(workspace, "/kept.bin", data)
    kept = current_version(own, workspace, "/kept.bin")
    assert enqueue_ingest(own, kept.id, kept.cipher_size) is False  # already queued

    stale_path, handle = own.spool.create_temp()
    handle.close()
    _age(stale_path, STALE_TEMP_SECONDS + 60)
    fresh_path, handle = own.spool.create_temp()  # an upload in progress
    handle.close()
    orphan, young_orphan = secrets.token_hex(16), secrets.token_hex(16)
    for key in (orphan, young_orphan):
        own.spool.path(key).write_bytes(b"ciphertext")
    _age(own.spool.path(orphan), ORPHAN_READY_SECONDS + 60)
    _age(own.spool.path(lost.storage_key), ORPHAN_READY_SECONDS + 60)  # old, but awaited
    workspace.remove("/kept.bin")  # its ciphertext is now a pending purge

    report = sweep_spool(own)
    assert report.requeued == 1 and report.temps_removed == 1 and report.orphans_removed == 1
    assert report.purged >= 1
    assert not stale_path.exists() and fresh_path.exists()
    assert not own.spool.has(orphan) and own.spool.has(young_orphan)
    assert own.spool.has(lost.storage_key) and not own.spool.has(kept.storage_key)
    assert Job.fetch(ingest_job_id(lost.id), connection=own.redis).get_status() == JobStatus.QUEUED
    assert sweep_spool(own).requeued == 0  # a second sweep finds nothing to do

    ingest_version(own, lost.id)
    assert_stored_once(own, lost, data)


def test_cron_file_is_valid_for_rq_cron(own):
    from rq.cron import CronScheduler
    scheduler = CronScheduler(connection=own.redis)
    scheduler.load_config_from_file("common/jobs/schedules.py")
    registered = {job.name: job for job in scheduler.get_jobs()}
    assert set(registered) == {"sweep-fan-out", "fixity", "prune-login-state", "arrivals-digest", "upload-digests",
                               "audit-export-fan-out"}
    assert registered["sweep-fan-out"].func is sweep_all
    assert registered["sweep-fan-out"].queue_name == MAINTENANCE_QUEUE
    assert registered["fixity"].job_options["job_timeout"] == fixity.job_spec.timeout
    assert registered["upload-digests"].queue_name == MAIL_QUEUE and registered["upload-digests"].interval == 60


def test_clock_fans_the_sweeper_out_to_every_known_spool(fresh_settings, test_env):
    # A database of its own: the shared one lists other tests' spools, whose queues are theirs.
    svc = Services(fresh_settings)
    try:
        register_spool(svc)
        with svc.db.session() as session:
            first_seen = session.get(Spool, svc.settings.spool_id).last_seen_at
        register_spool(svc)  # a restart: the same row, seen again
        with svc.db.session() as session:
            assert [s.id for s in session.scalars(select(Spool))] == [svc.settings.spool_id]
            assert session.get(Spool, svc.settings.spool_id).last_seen_at >= first_seen
        assert fan_out_sweeps(svc) == 1
        assert fan_out_sweeps(svc) == 0  # one waiting sweep per spool is enough
        job = Job.fetch(f"sweep-{svc.settings.spool_id}", connection=svc.redis)
        assert job.origin == ingest_queue_name(svc.settings.spool_id)
        run_worker(svc, test_env)  # the spool's own worker runs it
        with pytest.raises(NoSuchJobError):
            Job.fetch(f"sweep-{svc.settings.spool_id}", connection=svc.redis)  # done, not kept
        assert fan_out_sweeps(svc) == 1
    finally:
        _clear_queue(svc)
        svc.close()


def test_the_procfile_worker_serves_this_hosts_queue_and_stops_on_sigterm(own, workspace, test_env):
    """`python -m common.jobs.worker` (the Procfile's worker) ingests from ingest.<SPOOL_ID>."""
    data = os.urandom(MiB)
    upload(workspace, "/by-worker.bin", data)
    version = current_version(own, workspace, "/by-worker.bin")
    env = {**os.environ, **test_env, "SPOOL_ID": own.settings.spool_id,
           "SPOOL_DIR": str(own.settings.spool_dir), "S3_ENDPOINT": own.settings.s3_endpoint,
           "PYTHONPATH": str(REPO_ROOT)}
    worker = subprocess.Popen([sys.executable, "-m", "common.jobs.worker"], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: current_version(own, workspace, "/by-worker.bin").state == "stored", timeout=60)
        assert_stored_once(own, version, data)
        command = Path(f"/proc/{worker.pid}/cmdline").read_text()
        assert str(own.settings.redis_url) not in command
        assert "common.jobs.worker.PreloadingWorker" in command.split("\0")
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output.decode(errors="replace")[-2000:]
    with own.db.session() as session:
        assert session.get(Spool, own.settings.spool_id) is not None  # registered for the sweeps


def test_the_worker_loads_every_job_module_before_its_first_fork(own):
    """rq runs each job in a fork of the worker: with the modules loaded before, no job pays
    for importing them again."""
    probe = (
        "import sys, pkgutil, common.jobs\n"
        "from redis import Redis\n"
        "from common.jobs.worker import PreloadingWorker\n"
        "jobs = [f'common.jobs.{m.name}' for m in pkgutil.iter_modules(common.jobs.__path__)]\n"
        "before = [name for name in jobs if name in sys.modules]\n"
        f"PreloadingWorker(['nothing'], connection=Redis.from_url({str(own.settings.redis_url)!r}))\n"
        "print(len(jobs), len(before), all(name in sys.modules for name in jobs))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    count, loaded_before, all_after = result.stdout.split()
    assert int(loaded_before) < int(count) and all_after == "True"


# -- a commit whose reply is lost ----------------------------------------------------------

class LostCommitReply(Session):
    """A session whose COMMIT of a new file version raises as if the connection dropped.

    No real fault drops a connection between PostgreSQL applying a COMMIT and our reading its
    reply, so this wraps SQLAlchemy's Session: with `applied`, the real COMMIT runs and only
    its reply is lost; without, the transaction is rolled back, as when the COMMIT never
    reached the server. Other sessions commit normally.
    """

    applied = True
    _has_new_version = False

    def flush(self, objects=None):
        self._has_new_version |= any(isinstance(o, FileVersion) for o in self.new)
        super().flush(objects)

    def commit(self):
        if not self._has_new_version:
            return super().commit()
        if self.applied:
            super().commit()
        else:
            self.rollback()
        raise sa_exc.OperationalError("COMMIT", None, Exception("server closed the connection unexpectedly"))


def losing_commit_replies(svc: Services, *, applied: bool) -> None:
    session_class = type("Faulty", (LostCommitReply,), {"applied": applied})
    svc.db.sessionmaker = sessionmaker(svc.db.engine, expire_on_commit=False, class_=session_class)


@pytest.fixture(params=["worker", "inline"])
def mode_services(request, own_settings):
    svc = Services(dataclasses.replace(own_settings, ingest_mode=request.param))
    svc.store.ensure_bucket()
    yield svc
    _clear_queue(svc)
    svc.close()


def test_a_commit_applied_but_unconfirmed_keeps_its_ciphertext(mode_services, account):
    svc = mode_services
    ws = admin_workspace(svc, account, door="sftp")
    first, second = os.urandom(300_000), os.urandom(400_000)
    upload(ws, "/report.bin", first)
    losing_commit_replies(svc, applied=True)
    upload(ws, "/report.bin", second)  # the version exists, so the upload is reported done
    version = current_version(svc, ws, "/report.bin")
    assert download(ws, "/report.bin") == second
    for path in svc.spool.ready_keys():
        _age(svc.spool.path(path), ORPHAN_READY_SECONDS + 60)
    sweep_spool(svc)  # the sweeper sees the row and keeps what it names
    assert download(ws, "/report.bin") == second
    if version.state == "spooled":
        assert ingest_version(svc, version.id) == "stored"
    assert_stored_once(svc, version, second)


def test_a_commit_that_failed_leaves_its_ciphertext_to_the_sweeper(mode_services, account):
    svc = mode_services
    ws = admin_workspace(svc, account, door="sftp")
    losing_commit_replies(svc, applied=False)
    up = ws.open_write("/never.bin")
    up.write(os.urandom(200_000))
    with pytest.raises(TransientError):
        up.commit()
    with pytest.raises(NotFound):
        ws.stat("/never.bin")
    [key] = svc.spool.ready_keys()  # kept: the commit might have been applied
    assert svc.store.stat(key) is not None or svc.settings.ingest_mode == "worker"
    _age(svc.spool.path(key), ORPHAN_READY_SECONDS + 60)
    assert sweep_spool(svc).orphans_removed == 1
    assert not svc.spool.has(key) and svc.store.stat(key) is None


# -- Redis down after a commit -------------------------------------------------------------

def test_an_upload_committed_while_redis_is_down_succeeds_and_the_sweeper_queues_it(own, account):
    """Redis unreachable for the enqueue: a closed port, so the connection is really refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    no_redis = Services(dataclasses.replace(own.settings, redis_url=f"redis://127.0.0.1:{closed_port}/0"))
    try:
        ws = admin_workspace(no_redis, account, door="sftp")
        first, second = os.urandom(100_000), os.urandom(150_000)
        upload(ws, "/notes.bin", first)
        replaced = current_version(own, ws, "/notes.bin")
        upload(ws, "/notes.bin", second)  # replacing also queues a purge: neither may fail the upload
        assert download(ws, "/notes.bin") == second
    finally:
        no_redis.close()
    version = current_version(own, ws, "/notes.bin")
    assert version.state == "spooled" and own.spool.has(replaced.storage_key)
    with pytest.raises(NoSuchJobError):
        Job.fetch(ingest_job_id(version.id), connection=own.redis)

    report = sweep_spool(own)  # Redis is back
    assert report.requeued == 1 and report.purged >= 1
    assert Job.fetch(ingest_job_id(version.id), connection=own.redis).get_status() == JobStatus.QUEUED
    assert not own.spool.has(replaced.storage_key)
    assert ingest_version(own, version.id) == "stored"
    assert download(admin_workspace(own, account, door="sftp"), "/notes.bin") == second


# -- ciphertext lost before ingest ---------------------------------------------------------

def test_a_version_whose_spooled_ciphertext_is_lost_is_failed_and_alerted(own, workspace, account):
    upload(workspace, "/lost.bin", os.urandom(120_000))
    version = current_version(own, workspace, "/lost.bin")
    own.spool.remove(version.storage_key)  # the spool volume lost it before ingest
    Job.fetch(ingest_job_id(version.id), connection=own.redis).delete()
    for _ in range(LOST_CIPHERTEXT_TRIES - 1):
        with pytest.raises(IntegrityFailure):  # RQ retries these
            ingest_version(own, version.id)
        assert requeue_lost_ingests(own) == 1  # the sweeper keeps trying meanwhile
        Job.fetch(ingest_job_id(version.id), connection=own.redis).delete()
    assert ingest_version(own, version.id) == "failed: ciphertext lost"
    assert current_version(own, workspace, "/lost.bin").state == "failed"
    assert requeue_lost_ingests(own) == 0  # no more re-queueing, every minute, for ever
    # The existing integrity alert to the account's admins is queued.
    alert = Job.fetch(f"integrity-alert-{account.id}", connection=own.redis)
    assert alert.get_status() == JobStatus.QUEUED
    alert.delete()
    with own.db.session() as session:
        failures = session.scalars(select(AuditEvent).where(
            AuditEvent.account_id == account.id, AuditEvent.action == "integrity_failure")).all()
    assert len(failures) == 1

    started = time.monotonic()
    with pytest.raises(IntegrityFailure):
        download(workspace, "/lost.bin")
    assert time.monotonic() - started < 5  # at once, not after the 30 s wait for an ingest


def test_a_download_missing_from_its_own_spool_does_not_wait(own, workspace):
    upload(workspace, "/gone-here.bin", os.urandom(50_000))
    version = current_version(own, workspace, "/gone-here.bin")
    own.spool.remove(version.storage_key)
    started = time.monotonic()
    with pytest.raises(TransientError):
        download(workspace, "/gone-here.bin")
    assert time.monotonic() - started < 5
