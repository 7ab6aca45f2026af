"""Downloads: always an attachment, streamed from the Workspace, with single `Range` requests.

A whole-file download is checked against its fingerprints by the Workspace as it streams;
when that check fails the generator raises, the server cuts the connection, and the client
sees fewer bytes than `Content-Length` promised: an error, never a truncated success.
"""
from __future__ import annotations

import unicodedata
from typing import Callable
from urllib.parse import quote

from flask import Response, request
from flask_login import login_required

from common.errors import IsAFolder
from common.vfs import Workspace
from portal.auth.current import workspace

# RFC 5987 attr-char beyond letters and digits, which stay unescaped in `filename*`.
_ATTR_CHARS = "!#$&+-.^_`|~"


def content_disposition(name: str) -> str:
    """`attachment` with an ASCII fallback and the exact UTF-8 name (RFC 6266), for any name."""
    return f"attachment; filename=\"{ascii_fallback(name)}\"; filename*=UTF-8''{quote(name, safe=_ATTR_CHARS)}"


def ascii_fallback(name: str) -> str:
    """A printable-ASCII stand-in for old clients: accents dropped, anything risky as `_`."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    safe = "".join(c if " " <= c <= "~" and c not in '"\\;%' else "_" for c in plain).strip()
    return safe or "download"


@login_required
def download(ref: str):
    return send_download(workspace(), ref)


def send_download(ws: Workspace, ref: str, *, on_start: Callable[[int], None] | None = None) -> Response:
    """The file a ref names as an attachment, whole or one requested range; `on_start(first
    byte)` runs before anything is read (a link counts its downloads there)."""
    entry = ws.stat_by_id(ref)
    if entry.is_folder:
        raise IsAFolder()
    etag = f'"{entry.version}"'
    span = _requested_span(entry.size, etag)
    if span is None:
        return _unsatisfiable(entry.size)
    start, stop = span
    if on_start is not None:
        on_start(start)
    blocks = ws.open_read_by_id(ref, start, stop - start, version=entry.version)
    partial = (start, stop) != (0, entry.size)
    response = Response(_stream(blocks), status=206 if partial else 200,
                        mimetype="application/octet-stream", direct_passthrough=True)
    response.headers.update({
        "Content-Length": str(stop - start), "Content-Disposition": content_disposition(entry.name),
        "Accept-Ranges": "bytes", "ETag": etag, "X-Content-Type-Options": "nosniff",
    })
    if partial:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{entry.size}"
    return response


def _requested_span(size: int, etag: str) -> tuple[int, int] | None:
    """The [start, stop) to send: the whole file unless one satisfiable byte range is asked
    for (and If-Range, when sent, still names this version); None when it cannot be met."""
    requested = request.range  # None for a missing or malformed header: the whole file
    if_range = request.headers.get("If-Range")
    if requested is None or requested.units != "bytes" or len(requested.ranges) != 1 \
            or (if_range is not None and if_range != etag):
        return 0, size
    return requested.range_for_length(size)


def _unsatisfiable(size: int) -> Response:
    response = Response("Requested range not satisfiable", status=416, mimetype="text/plain")
    response.headers["Content-Range"] = f"bytes */{size}"
    return response


def _stream(download):
    # A client that goes away closes this generator: the download is audited as interrupted.
    try:
        yield from download
    finally:
        download.close()
