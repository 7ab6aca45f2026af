"""The start-up both transfer doors share: logging, settings, one config-error line, signals,
and a process per core.

A door's `main` loads its settings and builds its listeners under one `except ConfigError`,
which `refuse_to_start` turns into one log line (`<door> cannot start: <reason>`) and exit
status 78, then serves until `stop_requested()` is set. Their sessions share
`transfer.sessions` (caps, ban check, logout audit).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import threading
from typing import Callable

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


def serve_in_processes(log: logging.Logger, door: str, count: int, serve: Callable[[int], int]) -> int:
    """Run `serve(index)` in `count` processes of the door, forked before any thread exists,
    each with its own listeners on the door's ports (SO_REUSEPORT: the kernel spreads new
    connections over them); this process only forwards SIGTERM and SIGINT and waits. One
    process: `serve(0)` runs here. A process that ends on its own stops the others, and the
    door exits with its status, for the supervisor to restart it whole; a child whose first
    process is gone is stopped by the kernel (PR_SET_PDEATHSIG), so none outlives the door."""
    if count == 1:
        return serve(0)
    children: dict[int, int] = {}
    stopping = threading.Event()
    # Held back while forking: a stop request then reaches every child once the handler is in.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    parent = os.getpid()
    try:
        for index in range(count):
            pid = os.fork()
            if pid == 0:
                _run_child(log, door, index, serve, parent)
            children[pid] = index
    except OSError:
        log.exception("%s could not start its processes", door)
        _signal_all(children, signal.SIGTERM)
        stopping.set()
    finally:
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda signum, _frame: (stopping.set(), _signal_all(children, signum)))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return _supervise(log, door, children, stopping)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG = 1


def _run_child(log: logging.Logger, door: str, index: int, serve: Callable[[int], int], parent: int) -> None:
    status = 1
    try:
        _stop_with_parent(parent)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        status = serve(index)
    except BaseException:  # noqa: BLE001 (a child must never return into the parent's loop)
        log.exception("%s process %d failed", door, index + 1)
    finally:
        logging.shutdown()
        os._exit(status)


def _stop_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM when the first process goes (Linux)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name, use_errno=True) if name else None
    if libc is not None and hasattr(libc, "prctl"):
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent went before prctl took effect
        os._exit(1)


def _signal_all(children: dict[int, int], signum: int) -> None:
    for pid in list(children):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _supervise(log: logging.Logger, door: str, children: dict[int, int], stopping: threading.Event) -> int:
    status = 0
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if not stopping.is_set():
            log.error("%s process %d ended on its own (status %s); stopping the door", door, index + 1, code)
            stopping.set()
            _signal_all(children, signal.SIGTERM)
        if code != 0 and not status:
            status = code if code > 0 else 1
    return status


def listener(host: str, port: int, *, shared: bool) -> socket.socket:
    """A listening socket; `shared` lets the door's other processes listen on the same port."""
    return socket.create_server((host, port), backlog=128, reuse_port=shared)


def split_range(ports: range, parts: int) -> list[range]:
    """FTPS passive ports, a disjoint run of them per process: a data connection then reaches
    the process that gave its port out."""
    if len(ports) < parts:
        raise ConfigError(f"FTPS_PASSIVE_PORTS has {len(ports)} ports, fewer than the {parts} FTPS processes")
    size = len(ports) // parts
    return [range(ports.start + i * size, ports.stop if i == parts - 1 else ports.start + (i + 1) * size)
            for i in range(parts)]
