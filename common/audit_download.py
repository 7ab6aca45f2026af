"""An admin's download of a filtered view of the audit events: the nightly files' format
(common.audit_export), streamed as chunks of bytes while the events are read.

The download is pinned to the chain as it stood when it began: it holds the events up to that
head, and ends with that head, so it can be checked against `audit verify`. The XLSX is made in
memory-backed temp storage (its rows are decrypted) and sent from there as it is read back.
"""
from __future__ import annotations

import dataclasses
import tempfile
from typing import Iterator

from common import audit
from common.audit_export import CsvExport, Summary, memory_tmpdir, write_xlsx
from common.models import Account
from common.services import Services

CHUNK = 64 * 1024


class _Chunks:
    """A write target that hands back what was written since the last `take`."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def _pinned(session, account_id: int, flt: audit.EventFilter) -> tuple[audit.EventFilter, bytes]:
    account = session.get(Account, account_id)
    return dataclasses.replace(flt, max_seq=account.audit_count), account.audit_head


def csv_chunks(services: Services, account_id: int, flt: audit.EventFilter) -> Iterator[bytes]:
    """The filtered events as CSV, oldest first, ending with the chain head: yielded as made."""
    with services.db.session() as session:
        flt, head = _pinned(session, account_id, flt)
        out = _Chunks()
        export = CsvExport(out)
        for event in audit.iter_events(session, services.keyring, account_id, flt):
            export.add(event)
            if out.parts:
                yield out.take()
        export.close(head)
        yield out.take()


def xlsx_chunks(services: Services, account_id: int, flt: audit.EventFilter) -> Iterator[bytes]:
    """The filtered events as XLSX (with the per-user summary and the chain head), in chunks."""
    folder = memory_tmpdir(services.settings.export_tmpdir)  # refused before any row is read unless tmpfs
    with tempfile.TemporaryFile(dir=folder) as spooled:
        with services.db.session() as session:
            flt, head = _pinned(session, account_id, flt)
            write_xlsx(audit.iter_events(session, services.keyring, account_id, flt), spooled,
                       summary=Summary(), chain_head=head, tmpdir=folder)
        spooled.seek(0)
        while chunk := spooled.read(CHUNK):
            yield chunk
