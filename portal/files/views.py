"""The file browser: folders, details, new folder, rename, move and delete, all by ref.

URLs carry refs (common.refs), never names; the Workspace resolves them for the signed-in
user on every request, so another account's ref is NotFound (404) like a missing one.
"""
from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from common import notifications, refs
from common.errors import AlreadyExists, InvalidInput, NotAFolder, NotEmpty, Unsupported
from portal.auth.current import services, workspace
from portal.files import downloads, uploads
from portal.files.forms import DeleteForm, FollowForm, MoveForm, NewFolderForm, RenameForm

bp = Blueprint("files", __name__, url_prefix="/files")
bp.add_url_rule("/item/<ref>/download", "download", downloads.download)
bp.add_url_rule("/folder/<ref>/upload", "upload", uploads.upload, methods=["POST"])
# The upload route checks its token itself, before the body is read (portal.files.uploads).
bp.record_once(lambda state: state.app.extensions["csrf"].exempt(uploads.upload))

PAGE_SIZE = 50
# Errors a user can fix by changing what they typed or chose: shown on the form again.
FIXABLE = (InvalidInput, AlreadyExists, NotEmpty, NotAFolder, Unsupported)


@bp.get("/")
@login_required
def home():
    return _folder_page(refs.ROOT)


@bp.get("/folder/<ref>")
@login_required
def folder(ref: str):
    return _folder_page(ref)


def _folder_page(ref: str):
    sort = request.args.get("sort", "name")
    sort = sort if sort in refs.SORT_KEYS else "name"
    descending = request.args.get("order") == "desc"
    page_no = max(request.args.get("page", 1, type=int) or 1, 1)
    ws = workspace()
    here = ws.stat_by_id(ref)
    if not here.is_folder:
        return redirect(url_for("files.details", ref=ref))
    page = ws.list_page(ref, sort=sort, descending=descending, offset=(page_no - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    pages = max((page.total + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    return render_template("files/folder.html", here=here, trail=ws.trail(ref), page=page, page_no=page_no,
                           pages=pages, sort=sort, descending=descending, new_folder=NewFolderForm(),
                           following=_following(ref), follow_form=FollowForm())


def _following(ref: str) -> bool | None:
    """Whether I follow this folder; None where there is nothing to follow (the /Shared levels)."""
    with services().db.session() as db:
        folder_id = notifications.followable(db, current_user.id, ref)
        return None if folder_id is None else notifications.is_following(db, current_user.id, folder_id)


@bp.post("/folder/<ref>/follow")
@login_required
def follow(ref: str):
    form = FollowForm()
    if not form.validate_on_submit() or not workspace().stat_by_id(ref).is_folder:
        abort(400)
    wanted = form.follow.data == "on"
    with services().db.session() as db:
        folder_id = notifications.followable(db, current_user.id, ref)
        if folder_id is None:
            abort(400)
        notifications.set_following(db, current_user.id, folder_id, wanted)
    flash("You follow this folder: new files here reach you as one mail every few minutes, naming no file."
          if wanted else "You no longer follow this folder.", "success")
    return redirect(url_for("files.folder", ref=ref))


@bp.get("/item/<ref>")
@login_required
def details(ref: str):
    ws = workspace()
    return render_template("files/details.html", item=ws.details(ref), trail=ws.trail(ref))


@bp.post("/folder/<ref>/new")
@login_required
def new_folder(ref: str):
    ws = workspace()
    return _apply(NewFolderForm(), lambda name: ws.make_dir_by_id(ref, name), "Folder created.",
                  lambda: url_for("files.folder", ref=ref), "files/new_folder.html", ref=ref, trail=ws.trail(ref))


@bp.route("/item/<ref>/rename", methods=["GET", "POST"])
@login_required
def rename(ref: str):
    ws = workspace()
    item = ws.stat_by_id(ref)
    form = RenameForm(data=None if request.method == "POST" else {"name": item.name})
    return _apply(form, lambda name: ws.rename_by_id(ref, name), "Renamed.", lambda: _parent_url(ws, ref),
                  "files/rename.html", item=item, trail=ws.trail(ref))


def _apply(form, change, done: str, next_url, template: str, **context):
    """Make a change named in a form; a fixable error shows the form again, saying what went wrong."""
    if form.validate_on_submit():
        try:
            change(form.name.data)
        except FIXABLE as exc:
            return _form_again(template, form, exc, **context)
        flash(done, "success")
        return redirect(next_url())
    return _form_again(template, form, None, **context)


@bp.route("/item/<ref>/move", methods=["GET", "POST"])
@login_required
def move(ref: str):
    ws = workspace()
    item = ws.stat_by_id(ref)
    form = MoveForm()
    if form.validate_on_submit():
        try:
            ws.move_by_id(ref, form.target.data)
        except FIXABLE as exc:
            return _move_page(ws, item, form, exc, form.target.data)
        flash("Moved.", "success")
        return redirect(url_for("files.folder", ref=form.target.data))
    return _move_page(ws, item, form, None, request.args.get("at", refs.ROOT))


def _move_page(ws, item, form, error, at: str):
    """The folder chooser: the folders inside `at`, with a button to move the item there."""
    place = ws.stat_by_id(at)
    if not place.is_folder:
        raise NotAFolder()
    folders = [e for e in ws.list_page(at, limit=1000).entries if e.is_folder and e.id != item.id]
    form.target.data = at
    return _form_again("files/move.html", form, error, item=item, place=place, folders=folders,
                       at_trail=ws.trail(at))


@bp.route("/item/<ref>/delete", methods=["GET", "POST"])
@login_required
def delete(ref: str):
    ws = workspace()
    item = ws.stat_by_id(ref)
    form = DeleteForm()
    if form.validate_on_submit():
        back = _parent_url(ws, ref)
        ws.remove_by_id(ref)
        flash("Deleted permanently.", "success")
        return redirect(back)
    return render_template("files/delete.html", item=item, form=form, trail=ws.trail(ref))


def _form_again(template: str, form, error, **context):
    """A form page; after a failed submission, with what went wrong and HTTP 400 or the error's status."""
    if error is not None:
        flash(error.message, "danger")
    status = error.http_status if error is not None else (400 if form.errors else 200)
    return render_template(template, form=form, **context), status


def _parent_url(ws, ref: str) -> str:
    trail = ws.trail(ref)
    parent = trail[-2][0] if len(trail) > 1 else refs.ROOT
    return url_for("files.folder", ref=parent)
