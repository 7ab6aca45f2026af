"""The Users tab: the account's users for its admins.

Every change is a POST form with its CSRF token, made by one `common` call as the signed-in admin
(an `Actor` with `protocol=web`, audited as `admin_change`). URLs carry user ids; a user of another
account is a 404 like a missing one. New users get an invitation mail with a set-password link
instead of a password typed by the admin; the last admin rule lives in common.accounts.
"""
from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from common import accounts, auth, directory
from common.auth import totp
from common.auth.admin import audit_change
from common.errors import AlreadyExists, InvalidInput, PermissionDenied, TierRequired
from common.jobs import invitations
from common.jobs.purge import enqueue_purge
from portal.administration import in_my_account, keyring
from portal.auth.current import admin_required, services
from portal.profile.forms import ButtonForm, SshKeyForm
from portal.users.forms import IpRuleForm, UserCreateForm, UserEditForm

bp = Blueprint("users", __name__, url_prefix="/users")

SEARCH_MAX = 100


def _on_user(user_id: int, change):
    """Run `change(db, account, user, actor)` on a user of my account (another account's is a 404)."""
    return in_my_account(lambda db, account, actor: change(
        db, account, directory.find_user(db, account, user_id), actor))


def _back_to(user_id: int):
    return redirect(url_for("users.detail", user_id=user_id), 303)


def _button_action(user_id: int, change, done: str):
    """A one-button change on a user: flash what happened, or why it was refused."""
    if not ButtonForm().validate_on_submit():
        abort(400)
    try:
        _on_user(user_id, change)
    except PermissionDenied as exc:
        flash(exc.message, "danger")
    else:
        flash(done, "success")
    return _back_to(user_id)


# -- the list and creating ------------------------------------------------------------------

@bp.get("/")
@admin_required
def index():
    search = request.args.get("q", "")[:SEARCH_MAX]
    page = request.args.get("page", 1, type=int)
    group = request.args.get("filter")
    group = group if group in directory.USER_GROUPS else None
    found = in_my_account(lambda db, account, actor: directory.search_users(
        db, keyring(), account, search, group=group, page=page))
    return render_template("users/index.html", found=found, search=search, group=group)


@bp.route("/new", methods=["GET", "POST"])
@admin_required
def create():
    form = UserCreateForm()
    if form.validate_on_submit():
        try:
            user_id = in_my_account(lambda db, account, actor: accounts.create_user(
                db, keyring(), account, username=form.username.data, email=form.email.data, password=None,
                role=form.role.data, actor=actor).id)
        except AlreadyExists as exc:
            form.username.errors.append(exc.message)
        else:
            invitations.enqueue_password_link(services(), user_id, "invite")
            flash(f"User {form.username.data} is created and an invitation is on its way to "
                  f"{form.email.data}; they choose their password from the link in it.", "success")
            return _back_to(user_id)
    return render_template("users/new.html", form=form), 400 if form.errors else 200


# -- one user's page and its edits ---------------------------------------------------------

@bp.get("/<int:user_id>")
@admin_required
def detail(user_id: int):
    return _detail_page(user_id)


def _detail_page(user_id: int, *, edit_form=None, rule_form=None, key_form=None):
    def load(db, account, user, actor):
        return (directory.user_summary(db, keyring(), user), directory.user_ip_rules(db, user),
                auth.list_ssh_keys(db, keyring(), user), account.is_enterprise)
    summary, rules, keys, enterprise = _on_user(user_id, load)
    edit_form = edit_form or UserEditForm(data={"email": summary.email, "role": summary.role})
    failed = any(form is not None and form.errors for form in (edit_form, rule_form, key_form))
    return render_template("users/detail.html", user=summary, rules=rules, keys=keys, enterprise=enterprise,
                           edit_form=edit_form, rule_form=rule_form or IpRuleForm(),
                           key_form=key_form or SshKeyForm(), form=ButtonForm()), 400 if failed else 200


@bp.post("/<int:user_id>/edit")
@admin_required
def edit(user_id: int):
    form = UserEditForm()
    if form.validate_on_submit():
        def change(db, account, user, actor):
            accounts.set_email(db, keyring(), account, user, form.email.data, actor=actor)
            accounts.set_role(db, keyring(), account, user, form.role.data, actor=actor)
        try:
            _on_user(user_id, change)
        except PermissionDenied as exc:
            form.role.errors.append(exc.message)
        else:
            flash("The user's email and role are saved.", "success")
            return _back_to(user_id)
    return _detail_page(user_id, edit_form=form)


@bp.post("/<int:user_id>/disable")
@admin_required
def disable(user_id: int):
    return _button_action(user_id, lambda db, account, user, actor: accounts.set_enabled(
        db, keyring(), account, user, False, actor=actor),
        "The user is disabled: they cannot sign in on any door, and their open sessions are ended.")


@bp.post("/<int:user_id>/enable")
@admin_required
def enable(user_id: int):
    return _button_action(user_id, lambda db, account, user, actor: accounts.set_enabled(
        db, keyring(), account, user, True, actor=actor), "The user is enabled and can sign in again.")


@bp.post("/<int:user_id>/reset-password")
@admin_required
def reset_password(user_id: int):
    if not ButtonForm().validate_on_submit():
        abort(400)
    _on_user(user_id, lambda db, account, user, actor: audit_change(  # a user of my account, or a 404
        db, keyring(), actor, account.id, f"password reset link sent to user {user.id}"))
    invitations.enqueue_password_link(services(), user_id, "reset")
    flash("A password reset link is on its way to the user's email. Their old password no longer works on any "
          "door and their web sessions are ended; their SSH keys and app passwords stay.", "success")
    return _back_to(user_id)


@bp.post("/<int:user_id>/reset-mfa")
@admin_required
def reset_mfa(user_id: int):
    return _button_action(user_id, lambda db, account, user, actor: totp.reset_mfa(
        db, keyring(), user, actor=actor),
        "Two-step sign-in is reset: the user's authenticator and recovery codes no longer work. "
        "Where the account requires it, they enrol again at their next web sign-in.")


@bp.post("/<int:user_id>/unlock")
@admin_required
def unlock(user_id: int):
    return _button_action(user_id, lambda db, account, user, actor: auth.unlock_user(
        db, keyring(), user, actor=actor), "The user is unlocked; their failed sign-ins are forgotten.")


@bp.post("/<int:user_id>/mfa-exempt")
@admin_required
def mfa_exempt(user_id: int):
    exempt = request.form.get("exempt") == "on"
    return _button_action(user_id, lambda db, account, user, actor: auth.set_mfa_exempt(
        db, keyring(), user, exempt, actor=actor),
        "The user is exempt from two-step sign-in: keep this for service users that scripts sign in as."
        if exempt else "The exemption is ended; the account's two-step sign-in rule applies to the user again.")


# -- the user's IP allow-list and SSH keys ---------------------------------------------------

@bp.post("/<int:user_id>/ip-rules")
@admin_required
def add_ip_rule(user_id: int):
    form = IpRuleForm()
    if form.validate_on_submit():
        try:
            _on_user(user_id, lambda db, account, user, actor: auth.add_ip_rule(
                db, keyring(), account, form.cidr.data, user=user, actor=actor))
        except (InvalidInput, AlreadyExists, TierRequired) as exc:
            form.cidr.errors.append(exc.message)
        else:
            flash("The address is on the user's allow-list; they can now sign in only from the addresses listed.",
                  "success")
            return _back_to(user_id)
    return _detail_page(user_id, rule_form=form)


@bp.route("/<int:user_id>/ip-rules/<int:rule_id>/remove", methods=["GET", "POST"])
@admin_required
def remove_ip_rule(user_id: int, rule_id: int):
    rule = _on_user(user_id, lambda db, account, user, actor: directory.find_user_ip_rule(db, user, rule_id))
    form = ButtonForm()
    if form.validate_on_submit():
        _on_user(user_id, lambda db, account, user, actor: auth.remove_ip_rule(
            db, keyring(), account, str(rule.cidr), user=user, actor=actor))
        flash(f"{rule.cidr} is removed from the user's allow-list.", "success")
        return _back_to(user_id)
    return render_template("users/remove_ip_rule.html", user_id=user_id, rule=rule, form=form)


@bp.post("/<int:user_id>/keys")
@admin_required
def add_key(user_id: int):
    form = SshKeyForm()
    if form.validate_on_submit():
        try:
            added = _on_user(user_id, lambda db, account, user, actor: auth.add_ssh_key(
                db, keyring(), user, form.key.data, actor=actor).fingerprint)
        except (InvalidInput, AlreadyExists) as exc:
            form.key.errors.append(exc.message)
        else:
            flash(f"Key {added} is added; it opens SFTP for the user.", "success")
            return _back_to(user_id)
    return _detail_page(user_id, key_form=form)


@bp.route("/<int:user_id>/keys/<int:key_id>/remove", methods=["GET", "POST"])
@admin_required
def remove_key(user_id: int, key_id: int):
    keys = _on_user(user_id, lambda db, account, user, actor: auth.list_ssh_keys(db, keyring(), user))
    key = next((k for k in keys if k.id == key_id), None)
    if key is None:
        abort(404)
    form = ButtonForm()
    if form.validate_on_submit():
        _on_user(user_id, lambda db, account, user, actor: auth.remove_ssh_key(
            db, keyring(), user, key_id, actor=actor))
        flash(f"Key {key.fingerprint} is removed; it no longer opens SFTP.", "success")
        return _back_to(user_id)
    return render_template("profile/remove_key.html", key=key, form=form,
                           back=url_for("users.detail", user_id=user_id))


# -- deleting --------------------------------------------------------------------------------

@bp.route("/<int:user_id>/delete", methods=["GET", "POST"])
@admin_required
def delete(user_id: int):
    summary, impact = _on_user(user_id, lambda db, account, user, actor: (
        directory.user_summary(db, keyring(), user), directory.deletion_impact(db, user)))
    form = ButtonForm()
    if form.validate_on_submit():
        try:
            _on_user(user_id, lambda db, account, user, actor: accounts.delete_user(
                db, keyring(), account, user, actor=actor))
        except PermissionDenied as exc:
            flash(exc.message, "danger")
            return _back_to(user_id)
        enqueue_purge(services())
        flash(f"User {summary.username} is deleted with their files; they stay on as a contact.", "success")
        return redirect(url_for("users.index"), 303)
    return render_template("users/delete.html", user=summary, impact=impact, form=form)
