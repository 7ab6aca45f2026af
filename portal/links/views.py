"""The link pages at `/s/<token>`: browse and download (read), also upload and make folders
(read/write), or only a drop zone (request). The visitor has no user: the Workspace of the
link's share holds them inside its folder and decides what they may do; an upload never
replaces a file (a clash gets ` (2)`).
"""
from __future__ import annotations

from flask import Blueprint, flash, g, redirect, render_template, request, url_for

from common import refs
from common.errors import AlreadyExists, InvalidInput
from portal.files import downloads, uploads
from portal.files.forms import NewFolderForm
from portal.links import access
from portal.links.forms import LinkPasswordForm

bp = Blueprint("links", __name__, url_prefix="/s/<token>")
PAGE_SIZE = 200
# Pages a visitor of a password link reaches before giving it.
BEFORE_PASSWORD = frozenset({"links.open"})


@bp.url_value_preprocessor
def take_token(endpoint, values):
    g.link_token = values.pop("token", "")


@bp.url_defaults
def add_token(endpoint, values):
    if endpoint.startswith("links.") and "token" not in values and g.get("link_token"):
        values["token"] = g.link_token


@bp.before_request
def let_in():
    # Resuming a counted download may go on once the link's download limit is reached.
    g.link = access.open_link(g.link_token, spent_ok=request.endpoint == "links.download")
    if access.is_unlocked(g.link):
        access.count_visit(g.link)
    elif request.endpoint not in BEFORE_PASSWORD:
        return redirect(url_for("links.open"))
    return None


@bp.errorhandler(access.DeadLink)
def dead(_exc):
    return access.dead_page()


@bp.route("", methods=["GET", "POST"], endpoint="open")
def landing():
    if not access.is_unlocked(g.link):
        return _password_page()
    if g.link.permission == "request":
        return render_template("links/request.html", root=refs.ROOT)
    return _folder_page(refs.ROOT)


def _password_page():
    form = LinkPasswordForm()
    if form.validate_on_submit():
        if access.unlock(g.link, form.password.data):
            return redirect(url_for("links.open"))
        flash("That password does not open this link.", "danger")
        return render_template("links/password.html", form=form), 401
    return render_template("links/password.html", form=form), 400 if form.errors else 200


@bp.get("/folder/<ref>")
def folder(ref: str):
    return _folder_page(ref)


def _folder_page(ref: str):
    ws = access.link_workspace()
    here = ws.stat_by_id(ref)
    if not here.is_folder:
        return redirect(url_for("links.download", ref=ref))
    page = ws.list_page(ref, limit=PAGE_SIZE)  # a request link's Workspace refuses this
    return render_template("links/folder.html", here=here, trail=ws.trail(ref), page=page,
                           new_folder=NewFolderForm())


@bp.get("/item/<ref>/download")
def download(ref: str):
    return downloads.send_download(access.link_workspace(), ref,
                                   on_start=lambda first: access.count_download(g.link, ref, first))


@bp.post("/folder/<ref>/upload")
def upload(ref: str):
    uploads.check_token()
    return uploads.receive(access.link_workspace(), ref, "files/uploaded.html", on_clash="rename",
                           back_url=url_for("links.open"))


@bp.post("/folder/<ref>/new")
def new_folder(ref: str):
    form = NewFolderForm()
    if form.validate_on_submit():
        try:
            access.link_workspace().make_dir_by_id(ref, form.name.data)
            flash("Folder created.", "success")
        except (InvalidInput, AlreadyExists) as exc:
            flash(exc.message, "danger")
    else:
        flash("Enter a folder name.", "danger")
    return redirect(url_for("links.folder", ref=ref))


# The upload route checks its token itself, before the body is read (portal.files.uploads).
bp.record_once(lambda state: state.app.extensions["csrf"].exempt(upload))
