"""Sharing: the share dialog of a folder, "Shared by me" (my shares and their links), and every
link of the account for its admins.

Each change is a POST form with its CSRF token and one `common.shares` call as the signed-in user
(an `Actor` with `protocol=web`, audited by the core). The dialog's folder is a ref the Workspace
resolves for me (another account's is a 404), and only its owner may share it; shares and links
are ids that must be mine (or, for admins, my account's), else a 404.
"""
from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask_login import current_user, login_required

from common import refs, shares
from common.accounts import Actor
from common.errors import InvalidInput
from portal.auth.current import PROTOCOL, admin_required, services, workspace
from portal.profile.forms import ButtonForm
from portal.security import client_address
from portal.shares.forms import LinkForm, ShareForm, apply_policy

bp = Blueprint("shares", __name__, url_prefix="/shares")
bp.add_app_template_global(shares.may_share, "may_share")


def _actor() -> Actor:
    return Actor(PROTOCOL, client_address(), current_user.id, current_user.username)


def _read(query):
    """Run `query(db, keyring)` in a transaction of its own and return its result."""
    with services().db.session() as db:
        return query(db, services().keyring)


def _change(change) -> None:
    """Run `change(db, keyring, actor)` as me in one transaction."""
    _read(lambda db, keyring: change(db, keyring, _actor()))


def _policy():
    return _read(lambda db, keyring: shares.link_policy(db, current_user.account_id))


def _options(form) -> shares.LinkOptions:
    return shares.LinkOptions(form.expires_in_days.data, form.password.data or None, form.max_downloads.data)


# -- the share dialog -----------------------------------------------------------------------

@bp.route("/folder/<ref>", methods=["GET", "POST"])
@login_required
def new(ref: str):
    folder = shares.folder_to_share(workspace(), ref)  # 404 out of reach, 403 not mine
    policy = _policy()
    form = apply_policy(ShareForm(), policy)
    if form.validate_on_submit():
        try:
            shared = shares.share_with(services(), current_user.id, refs.parse(folder.id).id, to=form.to.data,
                                       permission=form.permission.data, actor=_actor(), link=_options(form))
        except InvalidInput as exc:
            return _form_again("shares/new.html", form, exc, folder=folder, policy=policy,
                               trail=workspace().trail(ref))
        else:
            flash(_shared_message(shared, form.to.data), "success")
            return redirect(url_for("shares.index"), 303)
    return _form_again("shares/new.html", form, None, folder=folder, policy=policy, trail=workspace().trail(ref))


def _form_again(template: str, form, error, **context):
    """A form page; after a failed submission, with what went wrong and HTTP 400."""
    if error is not None:
        flash(error.message, "danger")
    return render_template(template, form=form, **context), 400 if error is not None or form.errors else 200


def _shared_message(shared: shares.Shared, to: str) -> str:
    if shared.link_id is None:
        return f"Shared with {to}: the folder is in their Shared folder now."
    return f"Shared with {to}: a mail with the link is on its way to them."


# -- shared by me ---------------------------------------------------------------------------

@bp.get("/")
@login_required
def index():
    mine = _read(lambda db, keyring: shares.shares_by(db, keyring, current_user.id))
    return render_template("shares/index.html", shares=mine)


@bp.route("/<int:share_id>/remove", methods=["GET", "POST"])
@login_required
def remove(share_id: int):
    share = _read(lambda db, keyring: shares.my_share(db, keyring, current_user.id, share_id))
    form = ButtonForm()
    if form.validate_on_submit():
        _change(lambda db, keyring, actor: shares.unshare(db, keyring, current_user.id, share_id, actor=actor))
        flash(f"The folder is no longer shared with {share.grantee}; its links stop working now.", "success")
        return redirect(url_for("shares.index"), 303)
    return render_template("shares/remove.html", share=share, form=form)


@bp.route("/links/<int:link_id>/revoke", methods=["GET", "POST"])
@login_required
def revoke(link_id: int):
    link = _read(lambda db, keyring: shares.my_link(db, keyring, current_user.id, link_id))
    form = ButtonForm()
    if form.validate_on_submit():
        _change(lambda db, keyring, actor: shares.revoke_my_link(db, keyring, current_user.id, link_id, actor=actor))
        flash("The link is revoked: its next use is refused. Send a new link if they still need the folder.",
              "success")
        return redirect(url_for("shares.index"), 303)
    return render_template("shares/revoke.html", link=link, form=form, back=url_for("shares.index"))


@bp.route("/<int:share_id>/new-link", methods=["GET", "POST"])
@login_required
def new_link(share_id: int):
    share = _read(lambda db, keyring: shares.my_share(db, keyring, current_user.id, share_id))
    if not share.with_contact:
        abort(404)  # a user of the account has no link
    policy = _policy()
    form = apply_policy(LinkForm(), policy)
    if form.validate_on_submit():
        try:
            shares.send_new_link(services(), current_user.id, share_id, actor=_actor(), link=_options(form))
        except InvalidInput as exc:
            return _form_again("shares/new_link.html", form, exc, share=share, policy=policy)
        else:
            flash(f"A new link is on its way to {share.grantee}; the earlier links no longer work.", "success")
            return redirect(url_for("shares.index"), 303)
    return _form_again("shares/new_link.html", form, None, share=share, policy=policy)


# -- every link of the account (admins) ---------------------------------------------------

@bp.get("/links")
@admin_required
def account_links():
    links = _read(lambda db, keyring: shares.account_links(db, keyring, current_user.account_id))
    return render_template("shares/account_links.html", links=links)


@bp.route("/links/<int:link_id>/admin-revoke", methods=["GET", "POST"])
@admin_required
def admin_revoke(link_id: int):
    link = _read(lambda db, keyring: shares.account_link(db, keyring, current_user.account_id, link_id))
    form = ButtonForm()
    if form.validate_on_submit():
        _change(lambda db, keyring, actor: shares.revoke_account_link(
            db, keyring, current_user.account_id, link_id, actor=actor))
        flash("The link is revoked: its next use is refused. Its owner can send a new one.", "success")
        return redirect(url_for("shares.account_links"), 303)
    return render_template("shares/revoke.html", link=link, form=form, back=url_for("shares.account_links"))
