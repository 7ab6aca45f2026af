"""The worker entry point (`python -m common.jobs.worker`): `rq worker` on this host's queues.

The queue names come from the settings (the spool id is cleaned there once), the spool is
registered so the clock sweeps it, and then the process becomes `rq worker` itself. The Redis
URL travels in the environment, never in argv, so `ps` does not show its password.
"""
from __future__ import annotations

import os
import shutil
import sys

from common.config import settings_from_environment
from common.errors import ConfigError
from common.jobs.registry import MAIL_QUEUE, MAINTENANCE_QUEUE, ingest_queue_name
from common.jobs.sweep import prepare_spool_host
from common.services import Services


def queue_names(spool_id: str) -> list[str]:
    """This host's ingest queue first (its spool), then the shared ones."""
    return [ingest_queue_name(spool_id), MAINTENANCE_QUEUE, MAIL_QUEUE]


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
    os.execv(rq, [rq, "worker", "--with-scheduler", *queue_names(settings.spool_id)])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
