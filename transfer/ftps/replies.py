"""The FTP reply for a `common` failure: one translation, applied by the control channel."""

from __future__ import annotations

from common.errors import SealdropError


def reply_for(exc: SealdropError) -> str:
    """The FTP reply for a `common` failure: the one translation of errors for this door."""
    return f"{exc.ftp_code} {exc.message}"
