"""Downloads decrypt and check a few chunks ahead of the sender, on a thread of their own."""
from __future__ import annotations

import gc
import os
import threading
import time

import pytest

from common.content import READ_AHEAD_CHUNKS, READ_AHEAD_THREADS, ReadAhead
from common.errors import TransientError
from common.jobs.ingest import ingest_version
from tests.factories import admin_workspace


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "read-ahead"]


def _wait_until_no_read_ahead_thread(seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while _read_ahead_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _read_ahead_threads()


def test_blocks_arrive_in_order_and_a_failure_after_them():
    def source():
        yield from (bytes([n]) * 10 for n in range(20))
        raise TransientError("The object store is not reachable; try again later")

    reader = ReadAhead(source())
    received = []
    with pytest.raises(TransientError):
        for block in reader:
            received.append(block)
    assert received == [bytes([n]) * 10 for n in range(20)]
    _wait_until_no_read_ahead_thread()


def test_the_thread_runs_a_bounded_way_ahead_and_stops_when_the_reader_goes():
    produced, closed = [], threading.Event()

    def source():
        try:
            for n in range(1000):
                produced.append(n)
                yield b"x" * 1024
        finally:
            closed.set()

    reader = ReadAhead(source())
    next(reader)
    time.sleep(0.3)  # ample time to run ahead as far as it may
    assert len(produced) <= READ_AHEAD_CHUNKS + 2  # the queue, the block in hand, the one read
    del reader
    gc.collect()
    assert closed.wait(5), "the source was not closed once the reader went away"
    _wait_until_no_read_ahead_thread()
    assert len(produced) <= READ_AHEAD_CHUNKS + 2


def test_a_reader_closed_before_its_first_block_starts_no_thread():
    reader = ReadAhead(iter([b"never read"]))
    reader.close()
    assert not _read_ahead_threads()
    with pytest.raises(StopIteration):
        next(reader)


def test_a_download_from_the_store_abandoned_midway_leaves_no_thread(services, account):
    services.store.ensure_bucket()
    ws = admin_workspace(services, account, door="sftp")
    data = os.urandom(5 * 1024 * 1024)
    up = ws.open_write("/big.bin")
    up.write(data)
    entry = up.commit()
    assert ingest_version(services, entry.version) == "stored"
    whole = ws.open_read("/big.bin")
    assert b"".join(whole) == data
    partial = iter(ws.open_read("/big.bin"))
    assert len(next(partial)) > 0
    del partial
    gc.collect()
    _wait_until_no_read_ahead_thread()


def test_beyond_the_thread_limit_a_download_reads_on_its_own_thread():
    def endless(mark: bytes):
        while True:
            yield mark

    started = [ReadAhead(endless(b"%d" % n)) for n in range(READ_AHEAD_THREADS)]
    try:
        assert all(next(reader) == b"%d" % n for n, reader in enumerate(started))
        assert len(_read_ahead_threads()) == READ_AHEAD_THREADS
        extra = ReadAhead(endless(b"extra"))
        assert [next(extra) for _ in range(3)] == [b"extra"] * 3
        assert len(_read_ahead_threads()) == READ_AHEAD_THREADS  # no thread more
        extra.close()
    finally:
        for reader in started:
            reader.close()
    _wait_until_no_read_ahead_thread()
    fresh = ReadAhead(iter([b"a", b"b"]))
    assert list(fresh) == [b"a", b"b"]  # the slots came back
