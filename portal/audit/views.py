"""The audit page (admins): the account's events, filtered and paged by keyset (by seq, so a
page costs the same at a million events), downloads of the filtered view in the nightly
files' format, the daily exports in /Audit Logs, and the chain verification.

User names and paths are sealed: the user filter is by id (chosen from a list), and a path
search unseals candidate events in the core, a bounded number per page (common.audit).
"""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, stream_with_context, url_for
from flask_login import current_user

from common import audit, audit_download
from common.jobs import chain
from portal.audit.forms import FilterForm, VerifyForm
from portal.auth.current import admin_required, services

bp = Blueprint("audit", __name__, url_prefix="/audit")

PAGE_SIZE = 50
DOWNLOADS = {
    "csv": (audit_download.csv_chunks, "text/csv; charset=utf-8"),
    "xlsx": (audit_download.xlsx_chunks, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
}


def _filters() -> FilterForm:
    form = FilterForm(request.args)
    svc = services()
    with svc.db.session() as db:
        users = audit.user_choices(db, svc.keyring, current_user.account_id)
    form.user.choices = [("", "Any user")] + [(str(user_id), name) for user_id, name in users]
    return form


def _bound(name: str) -> int | None:
    value = request.args.get(name, type=int)
    return value if value is not None and value >= 0 else None


@bp.get("/")
@admin_required
def index():
    form = _filters()
    valid = form.validate()
    svc, account_id = services(), current_user.account_id
    page = None
    with svc.db.session() as db:
        if valid:
            page = audit.page_events(db, svc.keyring, account_id, form.event_filter(), limit=PAGE_SIZE,
                                     before_seq=_bound("before"), after_seq=_bound("after"))
        exports = audit.recent_exports(db, account_id)
    return render_template("audit/index.html", form=form, page=page, args=form.args(), exports=exports,
                           check=chain.last_check(svc, account_id),
                           check_waiting=chain.is_check_waiting(svc, account_id),
                           verify_form=VerifyForm(), utc=timezone.utc), 200 if valid else 400


@bp.get("/download.<fmt>")
@admin_required
def download(fmt: str):
    if fmt not in DOWNLOADS:
        abort(404)
    form = _filters()
    if not form.validate():
        abort(400)
    chunks, mimetype = DOWNLOADS[fmt]
    name = f"audit-{datetime.now(timezone.utc):%Y-%m-%dT%H%M%SZ}.{fmt}"
    body = chunks(services(), current_user.account_id, form.event_filter())
    return Response(stream_with_context(body), mimetype=mimetype,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.post("/verify")
@admin_required
def verify():
    if not VerifyForm().validate_on_submit():
        abort(400)
    if chain.enqueue_chain_check(services(), current_user.account_id):
        flash("The chain check is queued. Reload this page in a moment to see its result.", "success")
    else:
        flash("A chain check is already waiting to run; its result will show here.", "info")
    return redirect(url_for("audit.index", _anchor="chain"))
