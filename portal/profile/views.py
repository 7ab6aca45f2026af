"""My profile: overview, password, MFA, SSH keys, FTPS app passwords, and connection details.

Every change is a POST form with its CSRF token, made by one `common` call as the signed-in user
(an `Actor` with `protocol=web`, so it is audited like the CLI's changes). The MFA pages (the
endpoints named `profile.mfa*`) also serve a user who must enrol before anything else; confirming
the enrolment completes their sign-in.
"""
from __future__ import annotations

import shlex
from functools import wraps
from urllib.parse import parse_qs, urlsplit

import segno
from flask import Blueprint, abort, current_app, flash, redirect, render_template, session, url_for
from flask_login import current_user, login_required
from markupsafe import Markup

from common import accounts, audit, auth, door_keys, notifications
from common.accounts import Actor
from common.auth import totp
from common.auth.policy import MFA_ENROLLED, is_mfa_required, mfa_state
from common.errors import AlreadyExists, InvalidInput, PermissionDenied
from common.models import Account, PasswordPolicy, User
from portal import sessions
from portal.auth.current import PROTOCOL, enrolling_user, services
from portal.profile.forms import (
    AppPasswordForm, ButtonForm, CodeForm, NotificationsForm, PasswordChangeForm, SshKeyForm,
    describe_password_rules,
)
from portal.security import client_address

bp = Blueprint("profile", __name__, url_prefix="/profile")

RECENT_LOGINS = 20
HOME_ENDPOINT = "files.home"


def _me():
    """The signed-in user, or the one enrolling in MFA before anything else."""
    return current_user if current_user.is_authenticated else enrolling_user()


def signed_in_or_enrolling(view):
    """Like login_required, but also lets in a user who must enrol in MFA first."""
    @wraps(view)
    def wrapper(*args, **kwargs):
        if _me() is None:
            return current_app.login_manager.unauthorized()
        return view(*args, **kwargs)
    return wrapper


def _as_me(change):
    """Run `change(db, user_row, actor)` in one transaction as me and return its result."""
    me = _me()
    with services().db.session() as db:
        return change(db, db.get(User, me.id), Actor(PROTOCOL, client_address(), me.id, me.username))


def _keyring():
    return services().keyring


def _one_of_mine(listing, matches):
    """The item of my `listing(db, keyring, user)` that `matches`; 404 otherwise (another user's ids too)."""
    found = next((item for item in _as_me(lambda db, user, actor: listing(db, _keyring(), user))
                  if matches(item)), None)
    if found is None:
        abort(404)
    return found


def _stay_signed_in(user_id: int, version: int) -> None:
    # A new session id with every factor passed, keeping when the sign-in began (for the audit).
    started = session.get("started")
    session.sign_in(user_id, version, mfa_passed=True)
    session["started"] = started


# -- overview -------------------------------------------------------------------------------

@bp.get("/")
@login_required
def index():
    def overview(db, user, actor):
        logins = audit.query_events(db, _keyring(), user.account_id, audit.EventFilter(
            actions=("login", "login_failed"), user_id=user.id), limit=RECENT_LOGINS)
        return mfa_state(db.get(PasswordPolicy, user.account_id), user), is_mfa_required(db, user), logins
    state, required, logins = _as_me(overview)
    return render_template("profile/index.html", mfa_on=state == MFA_ENROLLED, mfa_required=required,
                           logins=logins, form=ButtonForm(),
                           sessions=sessions.active_sessions(services(), current_user.id, session.token_hash))


@bp.post("/sessions/end-all")
@login_required
def sign_out_everywhere():
    if not ButtonForm().validate_on_submit():
        abort(400)
    _as_me(lambda db, user, actor: audit.record(db, _keyring(), audit.Event(
        action="logout", protocol=PROTOCOL, account_id=user.account_id, user_id=user.id,
        username=actor.username, ip=actor.ip, detail="signed out of every web session")))
    sessions.revoke_all(services(), current_user.id)
    session.start_over()
    flash("You are signed out everywhere, including here. Sign in again to continue.", "info")
    return redirect(url_for("auth.sign_in"))


# -- notifications --------------------------------------------------------------------------

@bp.route("/notifications", methods=["GET", "POST"], endpoint="notifications")
@login_required
def notifications_page():
    prefs = _as_me(lambda db, user, actor: notifications.preferences(db, user.id))
    form = NotificationsForm(data={p.kind: _CHOICE_NAMES[p.choice] for p in prefs})
    kinds = [p.kind for p in prefs if p.kind == "uploads" or current_user.is_admin]  # the others go to admins
    for pref in prefs:
        form[pref.kind].choices = [("default", f"The account's default ({'on' if pref.default else 'off'})"),
                                   ("on", "On"), ("off", "Off")]
    if form.validate_on_submit():
        _as_me(lambda db, user, actor: notifications.set_preferences(
            db, user.id, {kind: notifications.CHOICES[form[kind].data] for kind in kinds}))
        flash("Your notification choices are saved.", "success")
        return redirect(url_for("profile.notifications"))
    return render_template("profile/notifications.html", form=form, kinds=kinds), 400 if form.errors else 200


_CHOICE_NAMES = {value: name for name, value in notifications.CHOICES.items()}


# -- password -------------------------------------------------------------------------------

@bp.route("/password", methods=["GET", "POST"])
@login_required
def password():
    form = PasswordChangeForm()
    if form.validate_on_submit():
        try:
            version = _as_me(lambda db, user, actor: accounts.change_password(
                db, _keyring(), user, form.current.data, form.new.data, actor=actor))
        except PermissionDenied as exc:
            form.current.errors.append(exc.message)
        except InvalidInput as exc:
            form.new.errors.extend(getattr(exc, "unmet", ()) or [exc.message])
        else:
            _stay_signed_in(current_user.id, version)  # under a new id; the other sessions end
            flash("Your password is changed. Every other web session of yours is signed out; "
                  "update the password in any FTPS or SFTP client that stores it.", "success")
            return redirect(url_for("profile.index"))
    status = 400 if form.errors else 200
    return render_template("profile/password.html", form=form, rules=_password_rules()), status


def _password_rules() -> list[str]:
    def rules(db, user, actor):
        return accounts.password_rules(db, db.get(Account, user.account_id))
    return describe_password_rules(_as_me(rules))


# -- MFA ------------------------------------------------------------------------------------

@bp.get("/mfa")
@signed_in_or_enrolling
def mfa():
    def state(db, user, actor):
        return (mfa_state(db.get(PasswordPolicy, user.account_id), user) == MFA_ENROLLED,
                is_mfa_required(db, user), totp.pending_totp_uri(db, _keyring(), user))
    enrolled, required, pending = _as_me(state)
    secret = pending and _secret_of(pending)
    return render_template("profile/mfa.html", enrolled=enrolled, required=required, pending=pending,
                           secret=secret, qr=_qr_svg(pending) if pending else None,
                           enrolling=not current_user.is_authenticated, form=ButtonForm(), code_form=CodeForm())


@bp.post("/mfa/start")
@signed_in_or_enrolling
def mfa_start():
    if not ButtonForm().validate_on_submit():
        abort(400)

    def start(db, user, actor):
        if user.totp_enrolled_at is not None:
            raise AlreadyExists("Two-step sign-in is already on; turn it off first to move it to a new phone.")
        totp.start_totp_enrolment(db, _keyring(), user)
    _as_me(start)
    return redirect(url_for("profile.mfa"))


@bp.post("/mfa/confirm")
@signed_in_or_enrolling
def mfa_confirm():
    form = CodeForm()
    if not form.validate_on_submit():
        flash("Enter the 6-digit code your authenticator app shows for Sealdrop.", "danger")
        return redirect(url_for("profile.mfa"), 303)

    def confirm(db, user, actor):
        if not totp.confirm_totp_enrolment(db, _keyring(), user, form.code.data, actor=actor):
            return None
        return totp.generate_recovery_codes(db, _keyring(), user, actor=actor), user.session_version
    confirmed = _as_me(confirm)
    if confirmed is None:
        flash("That code was not accepted. Check that your phone's clock is right and enter the code "
              "it shows now.", "danger")
        return redirect(url_for("profile.mfa"), 303)
    codes, version = confirmed
    if not current_user.is_authenticated:
        _stay_signed_in(session.user_id, version)  # the enrolment completes the sign-in
    flash("Two-step sign-in is on. From now on you sign in with a code from your app, and FTPS "
          "clients use app passwords.", "success")
    return render_template("profile/recovery_codes.html", codes=codes)


@bp.post("/mfa/recovery")
@login_required
def mfa_recovery():
    if not ButtonForm().validate_on_submit():
        abort(400)

    def regenerate(db, user, actor):
        if user.totp_enrolled_at is None:
            raise InvalidInput("Turn on two-step sign-in first; recovery codes come with it.")
        return totp.generate_recovery_codes(db, _keyring(), user, actor=actor)
    codes = _as_me(regenerate)
    flash("New recovery codes are made; the old ones no longer work.", "success")
    return render_template("profile/recovery_codes.html", codes=codes)


@bp.route("/mfa/disable", methods=["GET", "POST"])
@login_required
def mfa_disable():
    form = CodeForm()
    if form.validate_on_submit():
        if _as_me(lambda db, user, actor: totp.disable_totp(db, _keyring(), user, form.code.data, actor=actor)):
            flash("Two-step sign-in is off, and your recovery codes are deleted. FTPS clients may "
                  "use your account password again.", "success")
            return redirect(url_for("profile.mfa"))
        form.code.errors.append("That code was not accepted; enter the code your app shows now.")
    required, enrolled = _as_me(lambda db, user, actor: (is_mfa_required(db, user),
                                                         user.totp_enrolled_at is not None))
    if required:
        raise PermissionDenied("Your account requires two-step sign-in, so it cannot be turned off.")
    if not enrolled:
        return redirect(url_for("profile.mfa"))
    return render_template("profile/mfa_disable.html", form=form), 400 if form.errors else 200


def _secret_of(uri: str) -> str:
    # The secret as text, for apps that cannot scan: grouped by four for reading aloud.
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    return " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))


def _qr_svg(uri: str) -> Markup:
    # Made here, never by a third party; segno's inline SVG uses attributes only (no style
    # element or attribute), so the CSP's style-src 'self' holds.
    svg = segno.make(uri, error="m").svg_inline(scale=5, light="#fff", svgclass="qr-code", omitsize=True)
    return Markup(svg)


# -- SSH keys -------------------------------------------------------------------------------

@bp.route("/keys", methods=["GET", "POST"])
@login_required
def keys():
    form = SshKeyForm()
    if form.validate_on_submit():
        try:
            added = _as_me(lambda db, user, actor: auth.add_ssh_key(db, _keyring(), user, form.key.data,
                                                                   actor=actor).fingerprint)
        except (InvalidInput, AlreadyExists) as exc:
            form.key.errors.append(exc.message)
        else:
            flash(f"Key {added} is added; SFTP clients holding its private key can sign in now.", "success")
            return redirect(url_for("profile.keys"))
    listed = _as_me(lambda db, user, actor: auth.list_ssh_keys(db, _keyring(), user))
    return render_template("profile/keys.html", form=form, keys=listed), 400 if form.errors else 200


@bp.route("/keys/<int:key_id>/remove", methods=["GET", "POST"])
@login_required
def remove_key(key_id: int):
    key = _one_of_mine(auth.list_ssh_keys, lambda k: k.id == key_id)
    form = ButtonForm()
    if form.validate_on_submit():
        _as_me(lambda db, user, actor: auth.remove_ssh_key(db, _keyring(), user, key_id, actor=actor))
        flash(f"Key {key.fingerprint} is removed; it no longer opens SFTP.", "success")
        return redirect(url_for("profile.keys"))
    return render_template("profile/remove_key.html", key=key, form=form)


# -- FTPS app passwords ---------------------------------------------------------------------

@bp.route("/app-passwords", methods=["GET", "POST"])
@login_required
def app_passwords():
    form = AppPasswordForm()
    if form.validate_on_submit():
        try:
            token = _as_me(lambda db, user, actor: auth.create_app_password(db, _keyring(), user, form.label.data,
                                                                            actor=actor))
        except InvalidInput as exc:
            form.label.errors.append(exc.message)
        else:
            return render_template("profile/app_password_created.html", token=token, label=form.label.data)
    listed = _as_me(lambda db, user, actor: auth.list_app_passwords(db, _keyring(), user))
    return render_template("profile/app_passwords.html", form=form, passwords=listed), 400 if form.errors else 200


@bp.route("/app-passwords/<public_id>/revoke", methods=["GET", "POST"])
@login_required
def revoke_app_password(public_id: str):
    found = _one_of_mine(auth.list_app_passwords, lambda p: p.public_id == public_id and p.revoked_at is None)
    form = ButtonForm()
    if form.validate_on_submit():
        _as_me(lambda db, user, actor: auth.revoke_app_password(db, _keyring(), user, public_id, actor=actor))
        flash("The app password is revoked; a client still using it can no longer sign in.", "success")
        return redirect(url_for("profile.app_passwords"))
    return render_template("profile/revoke_app_password.html", app_password=found, form=form)


# -- connection details ---------------------------------------------------------------------

@bp.get("/connection")
@login_required
def connection():
    settings = services().settings
    host, ftps_port, sftp_port = settings.transfer_host, settings.shown_ftps_port, settings.shown_sftp_port
    user, quoted_host = shlex.quote(current_user.username), shlex.quote(host)
    examples = {
        "sftp": f"sftp -P {sftp_port} {user}@{quoted_host}",
        "curl": f"curl --ssl-reqd --user {user} -T report.pdf ftp://{host}:{ftps_port}/",
        "lftp": (f"lftp -e 'set ftp:ssl-force true; set ftp:ssl-protect-data true; "
                 f"open -u {user} -p {ftps_port} ftp://{host}'"),
        "rclone": (f"rclone config create sealdrop ftp host={quoted_host} port={ftps_port} user={user} "
                   f"explicit_tls=true pass=YOUR-PASSWORD --obscure"),
        "rclone-sftp": (f"rclone config create sealdrop-sftp sftp host={quoted_host} port={sftp_port} "
                        f"user={user} ask_password=true"),
    }
    return render_template("profile/connection.html", host=host, ftps_port=ftps_port, sftp_port=sftp_port,
                           door_keys=door_keys.published(services()), examples=examples)
