"""Finding plaintext where it must not be: a marker's encodings, streamed content carrying it,
and a scanner over files and byte streams (shared by the no-plaintext tests of every door)."""
from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

MiB = 1024 * 1024


def needles_for(marker: str) -> list[bytes]:
    forms = [marker.encode("utf-8"), marker.encode("utf-16-le"), marker.encode("utf-16-be")]
    return forms + [form.hex().encode() for form in forms]


def content(marker: bytes, total: int) -> Iterator[bytes]:
    """`total` bytes, 1 MiB at a time, the marker repeated among varying filler."""
    block_no = 0
    while total > 0:
        unit = marker + b" %08d " % block_no + secrets.token_bytes(32)
        block = (unit * (MiB // len(unit) + 1))[:min(MiB, total)]
        total -= len(block)
        block_no += 1
        yield block


class Scanner:
    """Searches byte streams for any needle, across block boundaries."""

    def __init__(self, needles: list[bytes]):
        self.needles = needles
        self.overlap = max(len(n) for n in needles) - 1
        self.scanned = 0

    def hits(self, blocks: Iterable[bytes]) -> bool:
        tail = b""
        for block in blocks:
            window = tail + block
            if any(n in window for n in self.needles):
                return True
            tail = window[-self.overlap:]
            self.scanned += len(block)
        return False


def file_blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while block := handle.read(4 * MiB):
            yield block


def files_under(root: Path, changed_since: float | None = None) -> Iterator[Path]:
    for path in root.rglob("*"):
        try:
            if not path.is_file() or path.is_symlink():
                continue
            if changed_since is not None and path.stat().st_mtime < changed_since:
                continue
        except OSError:
            continue
        yield path


def leaking_files(scanner: Scanner, paths: Iterable[Path]) -> list[str]:
    leaks = []
    for path in paths:
        try:
            if scanner.hits(file_blocks(path)):
                leaks.append(str(path))
        except OSError:
            continue  # another process's file, gone or unreadable: not ours
    return leaks
