"""Writing private files: secrets, keys and `KEY=value` environment files, mode 0600 from birth."""
from __future__ import annotations

import os
import re
import shlex
import tempfile
from pathlib import Path
from typing import Mapping

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def write_private(path: Path, data: bytes | str) -> None:
    """Atomically replace path with data, readable by the owner only (never briefly wider)."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    # mkstemp creates the file 0600, so the content is never readable by others.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def format_env(values: Mapping[str, str]) -> str:
    """`KEY=value` lines that both a shell (`. file`) and a dotenv reader parse the same way."""
    lines = []
    for key, value in values.items():
        if not _KEY.match(key):
            raise ValueError(f"not an environment variable name: {key!r}")
        if "'" in value or "\n" in value:
            # Shell and dotenv readers disagree on escapes inside quotes; refuse rather than guess.
            raise ValueError(f"{key} holds a quote or newline, which the env file cannot carry")
        quoted = shlex.quote(value) if value else ""
        lines.append(f"{key}={quoted}")
    return "\n".join(lines) + "\n"


def write_env_file(path: Path, values: Mapping[str, str], *, header: str = "") -> None:
    """Write values as a shell-sourceable env file with mode 0600."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    write_private(path, comment + format_env(values))
