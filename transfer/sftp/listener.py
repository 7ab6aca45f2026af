"""The listener: socket, a thread per connection, session caps, auth and idle timeouts; `main`."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from pathlib import Path

import paramiko
from paramiko.ssh_exception import SSHException

from common import auth, door_keys
from common.errors import ConfigError, SealdropError
from common.services import Services
from transfer import process, sessions
from transfer.sftp.limits import Limits
from transfer.sftp.session import SshSession
from transfer.sftp.subsystem import WorkspaceSFTPServer
from transfer.sftp.transport import HardenedTransport

# One logger for the whole door, named after the package.
log = logging.getLogger(__package__)


class SftpServer:
    """Accepts connections and runs each SSH session in its own thread, within the caps."""

    def __init__(self, services: Services, host_key: paramiko.PKey, *, host: str = "127.0.0.1",
                 port: int = 0, limits: Limits = Limits(), shared: bool = False):
        self.services, self.host_key, self.limits = services, host_key, limits
        self.address, self.shared = (host, port), shared  # shared: the door's other processes listen too
        self.port: int | None = None
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sessions: dict[threading.Thread, tuple[str, HardenedTransport | None]] = {}
        self._acceptor: threading.Thread | None = None
        self.admission = sessions.admission("sftp", limits, services.settings.redis_url)

    def start(self) -> "SftpServer":
        # Published before the first connection, so the portal never shows a key not served.
        door_keys.publish(self.services, "sftp", self.host_key.get_name(),
                          door_keys.ssh_fingerprint(self.host_key.asbytes()))
        listener = process.listener(*self.address, shared=self.shared)
        listener.settimeout(0.5)  # so stop() is noticed without closing under accept()
        self._listener, self.port = listener, listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="sftp-accept", daemon=True)
        self._acceptor.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, close every session (uploads in flight are aborted), wait for them."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        with self._lock:
            sessions = list(self._sessions.items())
        for _, (_, transport) in sessions:
            if transport is not None:
                transport.close()
        for thread, _ in sessions:
            thread.join(timeout)
        if self._listener is not None:
            self._listener.close()

    def transports(self) -> list[HardenedTransport]:
        """The server transports of the sessions held now."""
        with self._lock:
            return [transport for _, transport in self._sessions.values() if transport is not None]

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.1)  # e.g. out of file descriptors: do not spin
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK waits
            self._admit(sock, auth.client_ip(address[0]) or address[0])

    def _admit(self, sock: socket.socket, ip: str) -> None:
        slot = self.admission.admit(ip)
        if slot is None:
            log.warning("sftp: connection from %s refused: too many sessions", ip)
            sock.close()
            return
        with self._lock:
            thread = threading.Thread(target=self._serve, args=(sock, ip, slot), name="sftp-session", daemon=True)
            self._sessions[thread] = (ip, None)
        thread.start()

    def _serve(self, sock: socket.socket, ip: str, slot) -> None:
        session = SshSession(self.services, ip, secrets.token_hex(4))
        transport = HardenedTransport(sock)
        transport.set_log_channel(f"{__package__}.ssh")  # apart from paramiko clients in the same process
        transport.add_server_key(self.host_key)
        transport.set_subsystem_handler("sftp", WorkspaceSFTPServer)
        with self._lock:
            self._sessions[threading.current_thread()] = (ip, transport)
        try:
            if sessions.address_banned(self.services, "sftp", session.id, ip):
                return
            negotiated = threading.Event()
            transport.start_server(event=negotiated, server=session)
            self._watch(transport, session, negotiated, slot)
        except SealdropError as exc:
            log.warning("sftp session %s: ended by %s", session.id, exc.code)
        finally:
            slot.release()
            self._close_session(transport, session)

    def _watch(self, transport: HardenedTransport, session: SshSession, negotiated: threading.Event,
               slot) -> None:
        started, channels, reported = time.monotonic(), [], False
        while transport.is_active() and not self._stopping.is_set():
            if negotiated.is_set() and not reported:
                reported = True
                log.info("sftp session %s from %s: %s, %s", session.id, session.ip,
                         transport.remote_cipher, transport.remote_mac)
            channel = transport.accept(timeout=0.5)
            if channel is not None:
                # paramiko holds channels weakly: an unreferenced one is closed by the garbage
                # collector before its subsystem request arrives. At most MAX_SESSION_CHANNELS.
                channels.append(channel)
            now = time.monotonic()
            # The auth timeout runs from the TCP accept: a silent client, a slow handshake and
            # a stalled login all count against it.
            if not transport.is_authenticated() and now - started > self.limits.auth_timeout:
                log.info("sftp session %s: authentication timed out", session.id)
                return
            if transport.is_authenticated():
                slot.logged_in()  # no longer counts against MAX_UNAUTHENTICATED_PER_IP
            if transport.is_authenticated() and session.is_idle(now, self.limits.idle_timeout):
                log.info("sftp session %s: idle timeout", session.id)
                return
        if not negotiated.is_set():
            failure = transport.get_exception()
            log.info("sftp session %s: negotiation failed (%s)", session.id, type(failure).__name__)

    def _close_session(self, transport: HardenedTransport, session: SshSession) -> None:
        transport.close()
        transport.sock.close()  # close() does nothing for a transport that never started
        for subsystem in list(session.subsystems):
            subsystem.join(10)  # let session_ended() abort unfinished uploads first
        try:
            session.ended()
        except SealdropError as exc:
            log.warning("sftp session %s: could not record its end (%s)", session.id, exc.code)
        finally:
            with self._lock:
                self._sessions.pop(threading.current_thread(), None)


# -- the process ----------------------------------------------------------------------------

def load_host_key(path: Path | None) -> paramiko.PKey:
    """The one persistent host key shared by every SFTP host; refused if others can read it."""
    if path is None:
        raise ConfigError("SFTP_HOST_KEY_FILE is not set")
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        raise ConfigError("SFTP_HOST_KEY_FILE does not name a readable file") from None
    if mode & 0o077:
        raise ConfigError("SFTP_HOST_KEY_FILE must be readable by its owner only (chmod 600)")
    try:
        return paramiko.PKey.from_path(Path(path))
    except (SSHException, OSError, ValueError) as exc:
        raise ConfigError(f"SFTP_HOST_KEY_FILE is not a usable private key ({type(exc).__name__})") from None


def main() -> int:
    """`python -m transfer.sftp`: serve SFTP on SFTP_PORT until SIGTERM or SIGINT."""
    process.limit_malloc_arenas()
    process.configure_logging()
    try:
        settings = process.load_settings()
        host_key = load_host_key(settings.sftp_host_key_file)
    except ConfigError as exc:
        return process.refuse_to_start(log, "sftp", exc)
    count = settings.sftp_processes
    return process.serve_in_processes(log, "sftp", count,
                                      lambda index: serve_process(settings, host_key, index, count))


def serve_process(settings, host_key: paramiko.PKey, index: int, count: int) -> int:
    """One process of the door: its services and its listener on the door's port."""
    try:
        services = process.start_services(settings)
    except ConfigError as exc:
        return process.refuse_to_start(log, "sftp", exc)
    host = process.listen_host(settings)
    server = SftpServer(services, host_key, host=host, port=settings.sftp_port,
                        limits=Limits.from_settings(settings), shared=count > 1)
    stop = process.stop_requested()
    server.start()
    log.info("sftp listening on %s:%d, host key %s %s, process %d of %d", host, server.port,
             host_key.get_name(), host_key.fingerprint, index + 1, count)
    while not stop.wait(1.0):
        pass
    server.stop()
    services.close()
    log.info("sftp stopped (process %d of %d)", index + 1, count)
    return 0
