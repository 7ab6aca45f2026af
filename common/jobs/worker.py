"""The worker entry point (`python -m common.jobs.worker`): `rq worker` on this host's queues.

The queue names come from the settings (the spool id is cleaned there once), the spool is
registered so the clock sweeps it, and then the process becomes `rq worker` itself. The Redis
URL travels in the environment, never in argv, so `ps` does not show its password.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import sys

from rq import Worker

from common.config import settings_from_environment
from common.errors import ConfigError
from common.jobs.registry import MAIL_QUEUE, MAINTENANCE_QUEUE, ingest_queue_name
from common.jobs.sweep import prepare_spool_host
from common.services import Services


def queue_names(spool_id: str) -> list[str]:
    """This host's ingest queue first (its spool), then the shared ones."""
    return [ingest_queue_name(spool_id), MAINTENANCE_QUEUE, MAIL_QUEUE]


class PreloadingWorker(Worker):
    """rq's worker, which runs each job in a fork of itself, with every job module imported
    before the first fork: a job's fork then starts with its code loaded instead of importing
    it again (a third of a second per job, longer than a 16 MiB ingest itself takes)."""

    def __init__(self, *args, **kwargs):
        import_job_modules()
        super().__init__(*args, **kwargs)


def import_job_modules() -> None:
    package = importlib.import_module("common.jobs")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"common.jobs.{module.name}")


def main() -> int:
    try:
        settings = settings_from_environment()
        services = Services(settings)
        try:
            prepare_spool_host(services)
        finally:
            services.close()
    except ConfigError as exc:
        print(f"worker cannot start: {exc.message}", file=sys.stderr)
        return exc.exit_code
    rq = shutil.which("rq") or os.path.join(os.path.dirname(sys.executable), "rq")
    os.environ["RQ_REDIS_URL"] = settings.redis_url
    os.execv(rq, [rq, "worker", "--with-scheduler", "--worker-class", "common.jobs.worker.PreloadingWorker",
                  *queue_names(settings.spool_id)])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
