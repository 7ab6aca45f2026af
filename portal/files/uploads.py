"""Uploads: the request body streams part by part into `Workspace.open_write`.

The route checks the session, the CSRF token (header from the script, query string from the
plain form) and write permission before it reads a byte of the body, which is why it is
exempt from the global, form-based CSRF check (that check would parse the body first).
Werkzeug's own stream factory spools large parts into plaintext temp files; ours hands each
file part to an encrypting Workspace upload instead, committed when the part's closing
boundary arrives and aborted when the body is cut, so a file is visible whole or not at all.
A file with the name of an existing one replaces it, as on FTPS and SFTP (the last commit
wins; the old content is purged).
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from flask import current_app, jsonify, render_template, request
from flask_login import login_required
from flask_wtf.csrf import CSRFError, ValidationError, same_origin, validate_csrf
from werkzeug.exceptions import BadRequest
from werkzeug.formparser import FormDataParser

from common.errors import NotAFolder, PermissionDenied, SealdropError
from common.vfs import Workspace
from portal.auth.current import workspace

log = logging.getLogger(__name__)
TOKEN_HEADER = "X-CSRFToken"
UNLIMITED = sys.maxsize


@dataclass
class Outcome:
    """What became of one file part: its entry once committed, or the error to show."""

    name: str
    entry: object | None = None
    error: SealdropError | None = None

    def as_json(self) -> dict:
        if self.entry is None:
            return {"name": self.name, "ok": False, "error": self.error.message}
        return {"name": self.name, "ok": True, "id": self.entry.id, "size": self.entry.size,
                "md5": self.entry.md5.hex(), "sha256": self.entry.sha256.hex()}


class PartSink:
    """The stream Werkzeug writes one file part into: an encrypting upload, or nowhere when
    the part was refused (its error is kept for the reply)."""

    def __init__(self, ws: Workspace, folder_ref: str, name: str, on_clash: str = "replace"):
        self.outcome = Outcome(name)
        self._upload = None
        try:
            self._upload = ws.open_write_by_id(folder_ref, name, on_clash=on_clash)
        except SealdropError as exc:
            self.outcome.error = exc

    def write(self, data: bytes) -> int:
        if self._upload is not None:
            try:
                self._upload.write(data)
            except SealdropError as exc:
                self._fail(exc)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        # Werkzeug rewinds a file part once its closing boundary has arrived: the part is whole.
        if self._upload is not None:
            try:
                self.outcome.entry = self._upload.commit()
            except SealdropError as exc:
                self.outcome.error = exc  # commit has already discarded the upload
            self._upload = None
        return 0

    def close(self) -> None:
        """Discard a part that never ended (a cut body); a no-op once committed."""
        self._fail(None)

    def _fail(self, error: SealdropError | None) -> None:
        if self._upload is not None:
            self._upload.abort("interrupted" if error is None else "failed")
            self._upload = None
        if error is not None and self.outcome.error is None:
            self.outcome.error = error


@login_required
def upload(ref: str):
    check_token()
    return receive(workspace(), ref, "files/uploaded.html")


def receive(ws: Workspace, ref: str, template: str, *, on_clash: str = "replace", **context):
    """Stream the request's files into the folder a ref names; the reply is JSON for the
    script, else the template (given `outcomes` and `folder_ref`). Call check_token first."""
    _check_writable_folder(ws, ref)
    # This one route streams; every other request keeps the app's small limit. (None would mean
    # "the app's limit" in Flask 3.1, so the ceiling is set explicitly.)
    request.max_content_length = UNLIMITED
    sinks = _receive(ws, ref, on_clash)
    outcomes = [sink.outcome for sink in sinks if sink.outcome.name]
    if not outcomes:
        raise BadRequest()
    failed = [o for o in outcomes if o.entry is None]
    status = failed[0].error.http_status if failed else 200
    if request.accept_mimetypes.best == "application/json":
        return jsonify(files=[o.as_json() for o in outcomes]), status
    return render_template(template, outcomes=outcomes, folder_ref=ref, **context), status


def check_token() -> None:
    """The CSRF check of CSRFProtect, with the token taken from a header or the query string."""
    try:
        validate_csrf(request.headers.get(TOKEN_HEADER) or request.args.get("csrf_token"))
    except ValidationError as exc:
        log.info("upload refused: %s", exc.args[0])
        raise CSRFError(exc.args[0]) from None
    strict = request.is_secure and current_app.config["WTF_CSRF_SSL_STRICT"]
    if strict and not (request.referrer and same_origin(request.referrer, f"https://{request.host}/")):
        raise CSRFError("The referrer does not match the host.")


def _check_writable_folder(ws: Workspace, ref: str) -> None:
    folder = ws.stat_by_id(ref)  # NotFound for another account's ref, as for a missing one
    if not folder.is_folder:
        raise NotAFolder()
    if not folder.writable:
        ws.record_refusal("upload")
        raise PermissionDenied()


def _receive(ws: Workspace, ref: str, on_clash: str) -> list[PartSink]:
    """Parse the multipart body, streaming each file part into its upload."""
    sinks: list[PartSink] = []

    def stream_factory(total_content_length, content_type, filename, content_length=None):
        sinks.append(PartSink(ws, ref, filename, on_clash) if filename else _Skipped())
        return sinks[-1]

    parser = FormDataParser(stream_factory, max_form_memory_size=current_app.config["MAX_FORM_MEMORY_SIZE"],
                            max_form_parts=current_app.config["MAX_FORM_PARTS"], silent=False)
    try:
        parser.parse(request.stream, request.mimetype, request.content_length, request.mimetype_params)
    except ValueError:
        raise BadRequest() from None  # a malformed or cut body
    finally:
        for sink in sinks:
            sink.close()
    return sinks


class _Skipped(PartSink):
    """A file input sent with no file chosen: nothing to store, nothing to report."""

    def __init__(self):
        self.outcome, self._upload = Outcome(""), None
