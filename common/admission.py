"""Connection slots of a transfer process: how many sessions each client may hold at once.

Every door asks `Admission.admit` when a connection arrives and keeps the `Slot` it gets for
the connection's life: `logged_in()` when it authenticates, `release()` when it ends. A client
(an IPv4 address, or an IPv6 /64: `auth.address_group`) may hold `max_per_client` sessions,
of which at most `max_unauthenticated_per_client` not yet logged in, so that a few addresses
cannot hold every slot of a process before logging in.

`Admission` counts in this process. `SharedAdmission` keeps the per-client counts in Redis, so
every process and host of a door shares them (a door runs a process per core): each slot is a
lease its process renews while it lives, so a killed process's slots lapse by themselves.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter

from redis import Redis
from redis.exceptions import RedisError

from common.auth import address_group

log = logging.getLogger(__name__)


class Slot:
    """One admitted connection's place in the counts; release it when the connection ends."""

    def __init__(self, admission: "Admission", client: str):
        self._admission, self.client = admission, client
        self.id = secrets.token_hex(8)
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


# Under the keys of one client: take lapsed leases out, then the slot if both counts allow.
# Redis's own clock, so the hosts' clocks never matter. KEYS: sessions, not yet logged in;
# ARGV: slot id, per-client cap, not-logged-in cap, lease seconds.
_ADMIT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
for _, key in ipairs(KEYS) do redis.call('ZREMRANGEBYSCORE', key, '-inf', now) end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) or redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  return 0
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + tonumber(ARGV[4]), ARGV[1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[4])) * 2)
end
return 1
"""

# Extend the leases of live slots: KEYS[i] holds ARGV[i + 1]; ARGV[1] is the lease in seconds.
# A slot missing (a Redis restart, an outage longer than a lease, one admitted while Redis was
# away) is counted again.
_RENEW = """
local clock = redis.call('TIME')
local expiry = tonumber(clock[1]) + tonumber(clock[2]) / 1000000 + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, expiry, ARGV[i + 1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[1])) * 2)
end
return 1
"""


class SharedAdmission(Admission):
    """Per-client counts shared in Redis by every process of a door; the total stays this
    process's own. Each admission is one round trip. When Redis cannot be reached, this
    process's own counts decide, with a warning: never unlimited, never everyone refused."""

    lease_seconds = 30.0
    # After a failure Redis is left alone this long: a Redis that hangs must not hold up every
    # new connection for its timeout.
    retry_seconds = 10.0

    def __init__(self, redis_url: str, door: str, **caps):
        super().__init__(**caps)
        self.door = door
        self._redis = Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._admit_script = self._redis.register_script(_ADMIT)
        self._renew_script = self._redis.register_script(_RENEW)
        self._live: dict[str, Slot] = {}
        self._renewer: threading.Thread | None = None
        self._away_until: float | None = None  # while Redis is away: when to try it again

    def _keys(self, client: str) -> tuple[str, str]:
        return f"sealdrop:slots:{self.door}:{client}", f"sealdrop:slots-waiting:{self.door}:{client}"

    def admit(self, ip: str | None) -> Slot | None:
        slot = super().admit(ip)  # this process's total, and its counts should Redis fail
        if slot is None:
            return None
        admitted = self._call(lambda: self._admit_script(keys=self._keys(slot.client), args=[
            slot.id, self.max_per_client, self.max_unauthenticated_per_client, self.lease_seconds]))
        if admitted == 0:
            super()._release(slot)
            return None
        with self._lock:  # renewed from now on, so Redis counts it once it is back
            self._live[slot.id] = slot
        self._ensure_renewer()
        return slot

    def _mark_logged_in(self, slot: Slot) -> None:
        super()._mark_logged_in(slot)
        self._call(lambda: self._redis.zrem(self._keys(slot.client)[1], slot.id))

    def _release(self, slot: Slot) -> None:
        super()._release(slot)
        with self._lock:
            shared = self._live.pop(slot.id, None) is not None
        if shared:
            sessions, waiting = self._keys(slot.client)
            self._call(lambda: self._redis.pipeline().zrem(sessions, slot.id).zrem(waiting, slot.id).execute())

    def renew(self) -> None:
        """Extend the leases of this process's live slots (the renewer does it every third of one)."""
        with self._lock:
            slots = list(self._live.values())
        keys, members = [], []
        for slot in slots:
            sessions, waiting = self._keys(slot.client)
            keys += [sessions] if slot.authenticated else [sessions, waiting]
            members += [slot.id] if slot.authenticated else [slot.id, slot.id]
        if keys:
            self._call(lambda: self._renew_script(keys=keys, args=[self.lease_seconds, *members]))

    def _ensure_renewer(self) -> None:
        with self._lock:
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._renew_forever, name="slot-leases", daemon=True)
                self._renewer.start()

    def _renew_forever(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.lease_seconds / 3):
            self.renew()

    def _call(self, call):
        """Redis's answer, or None while it is away (this process's own counts decide then)."""
        if self._away_until is not None and time.monotonic() < self._away_until:
            return None
        try:
            answer = call()
        except RedisError as exc:
            if self._away_until is None:
                log.warning("%s: shared session counts unavailable (%s); this process's own counts "
                            "decide", self.door, type(exc).__name__)
            self._away_until = time.monotonic() + self.retry_seconds
            return None
        if self._away_until is not None:
            self._away_until = None
            log.warning("%s: shared session counts are back", self.door)
        return answer
