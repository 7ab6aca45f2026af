"""The account's settings (admins): password policy, MFA requirement, IP allow-list, link policy.

One page with a section (and an anchor) per setting, each its own POST form; the compliance
page links to the anchors. Every change is one `common` call as the signed-in admin (audited as
`admin_change`); the enterprise-only settings are refused by the core on a basic plan
(TierRequired, a 403 page) and shown locked here with the reason.
"""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_login import current_user

from common import account_settings, auth
from common.auth import allowlist
from common.errors import AlreadyExists, InvalidInput
from portal.administration import in_my_account
from portal.auth.current import admin_required, services
from portal.security import client_address
from portal.settings.forms import ConfirmForm, LinkPolicyForm, MfaForm, NotifyDefaultsForm, PolicyForm, RuleForm

bp = Blueprint("settings", __name__, url_prefix="/settings")


def _keyring():
    return services().keyring


def _current():
    def read(db, account, actor):
        found = account_settings.account_settings(db, account)
        db.expunge_all()
        return found
    return in_my_account(read)


def _page(status: int = 200, **submitted):
    """The settings page; forms not `submitted` show the current values."""
    current = _current()
    policy = current.policy
    forms = {
        "policy_form": PolicyForm(formdata=None, data=dict(
            min_length=policy.min_length, upper=policy.require_upper, lower=policy.require_lower,
            digit=policy.require_digit, symbol=policy.require_symbol)),
        "mfa_form": MfaForm(formdata=None, data=dict(require_mfa=policy.require_mfa)),
        "rule_form": RuleForm(formdata=None),
        "link_form": LinkPolicyForm(formdata=None, data=dict(
            link_max_days=current.link_max_days, link_password_required=current.link_password_required,
            request_links_allowed=current.request_links_allowed)),
        "notify_form": NotifyDefaultsForm(formdata=None, data={
            f"notify_{kind}": on for kind, on in current.notify_defaults.items()}),
    }
    forms.update(submitted)
    return render_template("settings/index.html", current=current, my_address=client_address(),
                           policy_lock=current.locked.get(account_settings.PASSWORD_RULES),
                           allow_list_lock=current.locked.get(account_settings.IP_ALLOW_LISTS), **forms), status


@bp.get("/")
@admin_required
def index():
    return _page()


@bp.post("/policy")
@admin_required
def policy():
    form = PolicyForm()
    if not form.validate_on_submit():
        return _invalid(form, "policy_form")
    try:
        in_my_account(lambda db, account, actor: auth.set_policy(
            db, _keyring(), account, min_length=form.min_length.data, upper=form.upper.data,
            lower=form.lower.data, digit=form.digit.data, symbol=form.symbol.data, actor=actor))
    except InvalidInput as exc:
        form.min_length.errors.append(exc.message)
        return _page(400, policy_form=form)
    flash("The password rules are saved. New passwords must meet them; a user whose password does not "
          "is asked to change it at their next web sign-in.", "success")
    return redirect(url_for("settings.index", _anchor="password-policy"))


@bp.post("/mfa")
@admin_required
def mfa():
    form = MfaForm()
    if not form.validate_on_submit():
        return _invalid(form, "mfa_form")
    in_my_account(lambda db, account, actor: auth.set_policy(db, _keyring(), account,
                                                         require_mfa=form.require_mfa.data, actor=actor))
    flash("Two-step sign-in is now required: users without it set it up at their next web sign-in, and "
          "FTPS clients need app passwords." if form.require_mfa.data else
          "Two-step sign-in is no longer required; users who turned it on keep it.", "success")
    return redirect(url_for("settings.index", _anchor="mfa"))


@bp.post("/allow-list")
@admin_required
def add_rule():
    form = RuleForm()
    if not form.validate_on_submit():
        return _invalid(form, "rule_form")
    try:
        cidr = auth.parse_cidr(form.cidr.data)
        if form.confirmed.data != cidr and in_my_account(lambda db, account, actor: allowlist.would_lock_out(
                db, account, current_user.id, client_address(), adding=cidr)):
            form.confirmed.data = cidr
            return render_template("settings/confirm_rule.html", form=form, cidr=cidr, my_address=client_address())
        in_my_account(lambda db, account, actor: auth.add_ip_rule(db, _keyring(), account, cidr, actor=actor))
    except (InvalidInput, AlreadyExists) as exc:
        form.cidr.errors.append(exc.message)
        return _page(400, rule_form=form)
    flash(f"{cidr} is on the allow-list: sign-ins to this account on every door must come from an address "
          "on the list.", "success")
    return redirect(url_for("settings.index", _anchor="allow-list"))


@bp.route("/allow-list/<int:rule_id>/remove", methods=["GET", "POST"])
@admin_required
def remove_rule(rule_id: int):
    def check(db, account, actor):
        cidr = str(allowlist.account_rule(db, account.id, rule_id).cidr)  # NotFound: a 404 page
        return cidr, allowlist.would_lock_out(db, account, current_user.id, client_address(), removing=cidr)
    cidr, locks_me_out = in_my_account(check)
    form = ConfirmForm()
    if form.validate_on_submit() and (not locks_me_out or form.confirmed.data == cidr):
        in_my_account(lambda db, account, actor: auth.remove_ip_rule(db, _keyring(), account, cidr, actor=actor))
        flash(f"{cidr} is off the allow-list. When the list is empty, every address may sign in.", "success")
        return redirect(url_for("settings.index", _anchor="allow-list"))
    form.confirmed.data = cidr if locks_me_out else ""
    return render_template("settings/remove_rule.html", form=form, cidr=cidr, locks_me_out=locks_me_out,
                           my_address=client_address())


@bp.post("/links")
@admin_required
def links():
    form = LinkPolicyForm()
    if not form.validate_on_submit():
        return _invalid(form, "link_form")
    in_my_account(lambda db, account, actor: account_settings.set_link_policy(
        db, _keyring(), account, max_days=form.link_max_days.data,
        password_required=form.link_password_required.data,
        request_links_allowed=form.request_links_allowed.data, actor=actor))
    flash("The link policy is saved; it applies to share links made from now on.", "success")
    return redirect(url_for("settings.index", _anchor="link-policy"))


@bp.post("/notifications")
@admin_required
def notify_defaults():
    form = NotifyDefaultsForm()
    if not form.validate_on_submit():
        return _invalid(form, "notify_form")
    in_my_account(lambda db, account, actor: account_settings.set_notification_defaults(
        db, _keyring(), account, {kind: form[f"notify_{kind}"].data for kind in account_settings.NOTIFICATION_KINDS},
        actor=actor))
    flash("The notification defaults are saved; they apply to every user who has not chosen otherwise "
          "in their profile.", "success")
    return redirect(url_for("settings.index", _anchor="notifications"))


def _invalid(form, name: str):
    # A missing CSRF token never gets here: CSRFProtect answers 400 before the view.
    return _page(400, **{name: form})
