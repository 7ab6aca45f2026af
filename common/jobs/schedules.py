"""The one list of schedules, served by the `clock` process: `rq cron common/jobs/schedules.py`.

One clock per deployment, run with TZ=UTC (rq's cron expressions follow the process's local
time). The clock only enqueues: the work runs in workers, whose jobs are idempotent, so a
missed or doubled tick does no harm. Loading this file registers the schedules with rq (that
is how `rq cron` reads it); it opens no connection and reads no setting. Each job's queue and
timeout are its own (`@job`).

- every minute, the sweep fan-out: one sweeper per known spool, on `ingest.<spool id>`, which
  re-queues lost ingests, removes stale temp and orphan spool files and runs the purge
  (deleted files' ciphertext goes within about a minute);
- every hour, fixity: re-verify a bounded batch of stored files, least recently checked first;
- every minute, mail owners how many files arrived through their share links (batched);
- every minute, the upload digests: one mail per follower whose followed folders got uploads a
  few minutes ago or more;
- every ten minutes, drop lockout, defender and ban rows whose windows have passed;
- at 00:05 UTC, the audit export fan-out: each account's previous day (and any day a missed
  run skipped) written to its /Audit Logs (common.jobs.audit_exports).
"""
from __future__ import annotations

from rq import cron

from common.jobs.arrivals import arrivals_digest
from common.jobs.audit_exports import export_fan_out
from common.jobs.fixity import fixity
from common.jobs.login_state import prune_login_state
from common.jobs.notify import send_digests
from common.jobs.registry import FAILURE_TTL
from common.jobs.sweep import sweep_all

SCHEDULES = (
    dict(func=sweep_all, interval=60, name="sweep-fan-out"),
    dict(func=fixity, cron="17 * * * *", name="fixity"),
    dict(func=prune_login_state, interval=600, name="prune-login-state"),
    dict(func=arrivals_digest, interval=60, name="arrivals-digest"),
    dict(func=send_digests, interval=60, name="upload-digests"),
    dict(func=export_fan_out, cron="5 0 * * *", name="audit-export-fan-out"),
)

for _schedule in SCHEDULES:
    _job = _schedule["func"].job_spec
    cron.register(**_schedule, queue_name=_job.queue, job_timeout=_job.timeout,
                  result_ttl=0, failure_ttl=FAILURE_TTL)
