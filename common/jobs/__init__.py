"""Background jobs (RQ). Jobs take only ids, open their own session, are idempotent, and
let exceptions reach RQ so its retries apply. Job arguments never carry names or keys.

- `registry`: the `@job(queue, timeout)` decorator, the queues, and `enqueue_once` (job ids are
  deterministic, so a job is never queued twice and the sweeper can tell whether one is alive);
- one module per family: `ingest`, `purge`, `sweep` (the spool sweeper and its fan-out),
  `fixity`, `audit_exports` (the nightly audit files), `alerts` (mail to admins), `invitations` (share links by mail), `login_state`;
- `schedules`: the one list of periodic jobs, served by `rq cron common/jobs/schedules.py`;
- `worker`: the worker entry point, `python -m common.jobs.worker`.

Each job function has two faces: `ingest(version_id)` is what RQ runs in a worker (it builds
the worker's services from the environment once), `ingest_version(services, version_id)` is
the same work for callers that already hold services (INGEST_MODE=inline, tests).

This package imports nothing itself: import the module of the family you need.
"""
