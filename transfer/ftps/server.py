"""The FTPS servers: listeners, connection admission, handler options, `main`."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import ThreadedFTPServer

from common import door_keys
from common.errors import ConfigError
from common.services import Services
from transfer import process, sessions
from transfer.ftps.control import FTPSHandler, ImplicitFTPSHandler
from transfer.ftps.tls import TLSSessions

# One logger for the whole door, named after the package.
log = logging.getLogger(__package__)


class FTPSServer(ThreadedFTPServer):
    """A thread per session, so blocking database and store calls stall only their own session."""

    def __init__(self, address, handler, ioloop=None, backlog=100):
        # pyftpdlib keeps the stop flag and its lock on ThreadedFTPServer itself, shared by every
        # server in the process; each of ours gets its own.
        self._exit = threading.Event()
        self._lock = threading.Lock()
        super().__init__(address, handler, ioloop=ioloop, backlog=backlog)
        limits = sessions.SessionLimits.from_settings(handler.services.settings)
        # pyftpdlib's own checks agree with our slots (common.admission), which refuse first.
        self.max_cons, self.max_cons_per_ip = limits.max_sessions, limits.max_sessions_per_ip
        self.admission = sessions.admission("ftps", limits, handler.services.settings.redis_url)


def handler_class(services: Services, *, implicit: bool = False, passive_ports: range | None = None) -> type[FTPSHandler]:
    """A handler subclass carrying this process's settings as class options."""
    settings = services.settings
    check_tls_settings(settings)
    base = ImplicitFTPSHandler if implicit else FTPSHandler
    return type(f"Configured{base.__name__}", (base,), {
        "services": services,
        "certfile": str(settings.tls_cert_file),
        "keyfile": str(settings.tls_key_file),
        "tls_sessions": TLSSessions(str(settings.tls_cert_file), str(settings.tls_key_file)),
        "passive_ports": list(passive_ports or settings.ftps_passive_ports),
        "masquerade_address": settings.ftps_masquerade_address,
        "require_session_reuse": settings.ftps_require_session_reuse,
        # pyftpdlib's per-connection limit agrees with the shared lockout threshold.
        "max_login_attempts": settings.lockout_threshold,
        "login_timeout": settings.login_timeout_seconds,
    })


def check_tls_settings(settings) -> None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise ConfigError("TLS_CERT_FILE and TLS_KEY_FILE must be set for FTPS")


def build_servers(services: Services, host: str, *, passive_ports: range | None = None,
                  shared: bool = False) -> list[FTPSServer]:
    """The explicit server and, when FTPS_IMPLICIT_PORT is set, the implicit one, on one IO loop.
    `shared`: other processes of the door listen on the same ports, each with its own passive ports."""
    settings, ioloop = services.settings, IOLoop()

    def address(port: int):
        return process.listener(host, port, shared=True) if shared else (host, port)

    servers = [FTPSServer(address(settings.ftps_port), handler_class(services, passive_ports=passive_ports),
                          ioloop=ioloop)]
    if settings.ftps_implicit_port is not None:
        servers.append(FTPSServer(address(settings.ftps_implicit_port),
                                  handler_class(services, implicit=True, passive_ports=passive_ports),
                                  ioloop=ioloop))
        servers[1].admission = servers[0].admission  # one process, one count for both ports
    publish_certificate(services)
    return servers


def publish_certificate(services: Services) -> None:
    """Publish the certificate's fingerprint for the portal, which never reads the key files."""
    pem = Path(services.settings.tls_cert_file).read_bytes()
    door_keys.publish(services, "ftps", door_keys.TLS_CERTIFICATE, door_keys.certificate_fingerprint(pem))


def serve(servers: list[FTPSServer], stop: threading.Event, poll_seconds: float = 0.25) -> None:
    """Accept connections until `stop` is set, then close every session and listener."""
    try:
        while not stop.is_set():
            # The servers share one IO loop: polling through the first serves them all.
            servers[0].serve_forever(timeout=poll_seconds, blocking=False, handle_exit=False)
    finally:
        for server in servers:
            server.close_all()


def main() -> int:
    process.limit_malloc_arenas()
    process.configure_logging()
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    try:
        settings = process.load_settings()
        check_tls_settings(settings)  # here, so that several processes do not each say it
        passive = process.split_range(settings.ftps_passive_ports, settings.ftps_processes)
    except ConfigError as exc:
        return process.refuse_to_start(log, "ftps", exc)
    count = settings.ftps_processes
    return process.serve_in_processes(log, "ftps", count,
                                      lambda index: serve_process(settings, index, count, passive[index]))


def serve_process(settings, index: int, count: int, passive: range) -> int:
    """One process of the door: its services, its listeners, its passive ports."""
    try:
        services = process.start_services(settings)
        host = process.listen_host(settings)
        servers = build_servers(services, host, passive_ports=passive, shared=count > 1)
    except ConfigError as exc:
        return process.refuse_to_start(log, "ftps", exc)
    stop = process.stop_requested()
    ports = ", ".join(f"{s.address[1]}" for s in servers)
    log.info("ftps serving on %s port(s) %s (passive %s-%s), process %d of %d", host, ports,
             passive.start, passive.stop - 1, index + 1, count)
    serve(servers, stop)
    services.close()
    log.info("ftps stopped (process %d of %d)", index + 1, count)
    return 0
