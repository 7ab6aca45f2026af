"""Network faults for tests: a TCP relay that can cut or stall a connection to a real service."""
from __future__ import annotations

import socket
import threading
import time


class TcpProxy:
    """A threaded TCP relay on 127.0.0.1 that a test can cut, restore or slow down."""

    def __init__(self, target: str):
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.cut = False
        self.upload_rate: int | None = None  # bytes/s towards the store, None for full speed
        self.forwarded = 0  # bytes sent towards the store
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut_all(self) -> None:
        """Refuse new connections and break every open one, as a store outage would."""
        self.cut = True
        with self._lock:
            for sock in self._sockets:
                quiet_close(sock)
            self._sockets.clear()

    def restore(self) -> None:
        self.cut = False

    def close(self) -> None:
        self._stop.set()
        self.cut_all()
        self._thread.join(timeout=5)
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.cut:
                quiet_close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                quiet_close(client)
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, towards_store: bool) -> None:
        try:
            while not self.cut:
                data = source.recv(64 * 1024 if not (towards_store and self.upload_rate) else 16 * 1024)
                if not data or self.cut:
                    break
                if towards_store and self.upload_rate:
                    time.sleep(len(data) / self.upload_rate)
                sink.sendall(data)
                if towards_store:
                    self.forwarded += len(data)
        except OSError:
            pass
        finally:
            quiet_close(source)
            quiet_close(sink)


def quiet_close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
