"""The one list of schedules, served by the `clock` process: `rq cron common/cron.py`.

One clock per deployment, run with TZ=UTC (rq's cron expressions follow the process's local
time). The clock only enqueues: the work runs in workers, whose jobs are idempotent, so a
missed or doubled tick does no harm. Loading this file registers the schedules with rq (that
is how `rq cron` reads it); it opens no connection and reads no setting.

- every minute, the sweep fan-out: one sweeper per known spool, on `ingest.<spool id>`, which
  re-queues lost ingests, removes stale temp and orphan spool files and runs the purge
  (deleted files' ciphertext goes within about a minute);
- every hour, fixity: re-verify a bounded batch of stored files, least recently checked first;
- every ten minutes, drop lockout, defender and ban rows whose windows have passed.
"""
from __future__ import annotations

from rq import cron

from common import jobs

SCHEDULES = (
    dict(func=jobs.sweep_all, queue_name=jobs.MAINTENANCE_QUEUE, interval=60,
         job_timeout=120, result_ttl=0, failure_ttl=jobs.FAILURE_TTL, name="sweep-fan-out"),
    dict(func=jobs.fixity, queue_name=jobs.MAINTENANCE_QUEUE, cron="17 * * * *",
         job_timeout=jobs.FIXITY_TIMEOUT, result_ttl=0, failure_ttl=jobs.FAILURE_TTL, name="fixity"),
    dict(func=jobs.prune_login_state, queue_name=jobs.MAINTENANCE_QUEUE, interval=600,
         job_timeout=120, result_ttl=0, failure_ttl=jobs.FAILURE_TTL, name="prune-login-state"),
)

for _schedule in SCHEDULES:
    cron.register(**_schedule)
