"""The start-up both transfer doors share: logging, settings, one config-error line, signals.

A door's `main` loads its settings and builds its listeners under one `except ConfigError`,
which `refuse_to_start` turns into one log line (`<door> cannot start: <reason>`) and exit
status 78, then serves until `stop_requested()` is set. Their sessions share
`transfer.sessions` (caps, ban check, logout audit).
"""
from __future__ import annotations

import logging
import signal
import threading

from common.config import settings_from_environment
from common.errors import ConfigError
from common.jobs.sweep import prepare_spool_host
from common.services import Services

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def load_settings():
    return settings_from_environment()


def start_services(settings) -> Services:
    """The process handles, and a spool ready for uploads."""
    services = Services(settings)
    prepare_spool_host(services)
    return services


def refuse_to_start(log: logging.Logger, door: str, exc: ConfigError) -> int:
    """The one line a door logs when its configuration is unusable; its exit status."""
    log.error("%s cannot start: %s", door, exc.message)
    return exc.exit_code


def listen_host(settings) -> str:
    """Development binds loopback only; a deployment listens on every interface."""
    return "0.0.0.0" if settings.app_env == "production" else "127.0.0.1"


def stop_requested() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop
