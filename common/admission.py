"""Connection slots of a transfer process: how many sessions each client may hold at once.

Every door asks `Admission.admit` when a connection arrives and keeps the `Slot` it gets for
the connection's life: `logged_in()` when it authenticates, `release()` when it ends. A client
(an IPv4 address, or an IPv6 /64: `auth.address_group`) may hold `max_per_client` sessions,
of which at most `max_unauthenticated_per_client` not yet logged in, so that a few addresses
cannot hold every slot of a process before logging in. Counts are per process.
"""
from __future__ import annotations

import threading
from collections import Counter

from common.auth import address_group


class Slot:
    """One admitted connection's place in the counts; release it when the connection ends."""

    def __init__(self, admission: "Admission", client: str):
        self._admission, self.client = admission, client
        self.authenticated = False
        self.released = False

    def logged_in(self) -> None:
        """The connection authenticated: it no longer counts as waiting to log in."""
        self._admission._mark_logged_in(self)

    def release(self) -> None:
        """The connection ended (safe to call more than once)."""
        self._admission._release(self)


class Admission:
    """Thread-safe per-client counts of sessions and of sessions not yet logged in."""

    def __init__(self, *, max_total: int, max_per_client: int, max_unauthenticated_per_client: int):
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.max_unauthenticated_per_client = max_unauthenticated_per_client
        self._lock = threading.Lock()
        self._total = 0
        self._sessions: Counter[str] = Counter()
        self._unauthenticated: Counter[str] = Counter()

    def admit(self, ip: str | None) -> Slot | None:
        """A slot for a new connection from this address, or None when it must be refused."""
        client = address_group(ip) or str(ip)
        with self._lock:
            if (self._total >= self.max_total
                    or self._sessions[client] >= self.max_per_client
                    or self._unauthenticated[client] >= self.max_unauthenticated_per_client):
                return None
            self._total += 1
            self._sessions[client] += 1
            self._unauthenticated[client] += 1
        return Slot(self, client)

    def counts(self, ip: str | None) -> tuple[int, int]:
        """(sessions, sessions not yet logged in) of this address's client now."""
        client = address_group(ip) or str(ip)
        with self._lock:
            return self._sessions[client], self._unauthenticated[client]

    def _mark_logged_in(self, slot: Slot) -> None:
        with self._lock:
            if slot.released or slot.authenticated:
                return
            slot.authenticated = True
            self._drop(self._unauthenticated, slot.client)

    def _release(self, slot: Slot) -> None:
        with self._lock:
            if slot.released:
                return
            slot.released = True
            self._total -= 1
            self._drop(self._sessions, slot.client)
            if not slot.authenticated:
                self._drop(self._unauthenticated, slot.client)

    @staticmethod
    def _drop(counter: Counter, client: str) -> None:
        counter[client] -= 1
        if counter[client] <= 0:
            del counter[client]
