"""The start-up both transfer doors share: logging, settings, one config-error line, signals.

A door's `main` loads its settings and builds its listeners under one `except ConfigError`,
which `refuse_to_start` turns into one log line (`<door> cannot start: <reason>`) and exit
status 78, then serves until `stop_requested()` is set. Their sessions share
`transfer.sessions` (caps, ban check, logout audit).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import signal
import threading

from common.config import settings_from_environment
from common.errors import ConfigError
from common.jobs.sweep import prepare_spool_host
from common.services import Services

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# glibc's mallopt parameter for the number of memory arenas (malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas, before any session thread exists.

    glibc gives threads up to 8 arenas per core, each keeping its own freed memory: a door
    serving 200 sessions (a thread or two each) peaked above 900 MiB, almost all of it idle
    arenas; with two it stayed near 300 MiB. Elsewhere than glibc this does nothing.
    """
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)


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
