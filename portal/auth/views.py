"""Sign-in (password, then the code step when MFA applies) and sign-out, through common.auth only.

Every refusal shows the same message, whatever its reason (wrong password, unknown name, a
locked name, an address outside the allow-list); only a defender ban differs, with HTTP 429.
"""
from __future__ import annotations

import dataclasses
import time

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user

from common import accounts, audit
from common.auth import AuthResult, authenticate, verify_totp
from common.errors import AuthFailed, Banned
from common.models import User
from portal.auth.current import PROTOCOL, enrolling_user, safe_next, services
from portal.auth.forms import CodeForm, SignInForm
from portal.security import client_address, render_error

REFUSED = ("Sign-in failed: check your user name and password. If you are sure they are right, "
           "your account may not allow sign-in from this address, or it is locked for a few minutes "
           "after repeated failures; wait, or ask your administrator.")
HOME_ENDPOINT = "files.home"
ENROL_ENDPOINT = "profile.mfa"
PASSWORD_ENDPOINT = "profile.password"
ALWAYS_REACHABLE = ("auth.sign_out", "static", "bootstrap.static")

bp = Blueprint("auth", __name__)


@bp.get("/")
def index():
    return redirect(url_for(HOME_ENDPOINT if current_user.is_authenticated else "auth.sign_in"))


@bp.route("/signin", methods=["GET", "POST"])
def sign_in():
    if current_user.is_authenticated:
        return redirect(url_for(HOME_ENDPOINT))
    form = SignInForm()
    if form.validate_on_submit():
        try:
            result = authenticate(services(), form.username.data, form.password.data, method="password",
                                  protocol=PROTOCOL, ip=client_address())
        except Banned as exc:
            return render_error(429, exc.message)
        except AuthFailed:
            flash(REFUSED, "danger")
        else:
            _require_change_if_weak(result.user_id, form.password.data)
            return _after_password(result, safe_next(request.args.get("next")))
    return render_template("auth/sign_in.html", form=form)


@bp.route("/signin/code", methods=["GET", "POST"])
def code():
    pending = session.get("pending_login")
    if not pending:
        return redirect(url_for("auth.sign_in"))
    form = CodeForm()
    if form.validate_on_submit():
        try:
            result = verify_totp(services(), AuthResult(**pending), form.code.data)
        except Banned as exc:
            return render_error(429, exc.message)
        except AuthFailed:
            flash("That code was not accepted. Enter the current code from your authenticator app, "
                  "or one of your recovery codes. After a few minutes you must sign in again.", "danger")
        else:
            return _signed_in(result, session.get("next"))
    return render_template("auth/code.html", form=form)


@bp.post("/signout")
def sign_out():
    user = current_user if current_user.is_authenticated else enrolling_user()
    if user is not None:
        _record_sign_out(user)
    session.start_over()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.sign_in"))


def _after_password(result: AuthResult, next_url: str | None):
    if result.needs_totp:
        session.clear()
        session["pending_login"] = dataclasses.asdict(result)
        session["next"] = next_url
        session.rotate = True
        return redirect(url_for("auth.code"))
    if result.must_enrol:
        session.sign_in(result.user_id, _session_version(result.user_id), mfa_passed=False)
        session["must_enrol"] = True
        session["started"] = time.time()
        flash("Your account requires two-step sign-in. Set it up now to continue.", "info")
        return redirect(url_for(ENROL_ENDPOINT))
    return _signed_in(result, next_url)


def _signed_in(result: AuthResult, next_url: str | None):
    session.sign_in(result.user_id, _session_version(result.user_id), mfa_passed=True)
    session["started"] = time.time()
    return redirect(next_url or url_for(HOME_ENDPOINT))


def _require_change_if_weak(user_id: int, password: str) -> None:
    # Only now is the plaintext known: a password the tightened policy no longer accepts must be
    # changed once the sign-in completes (change_password_before_anything_else).
    with services().db.session() as db:
        accounts.require_change_if_weak(db, db.get(User, user_id), password)


def _session_version(user_id: int) -> int:
    with services().db.session() as db:
        return db.get(User, user_id).session_version


def _record_sign_out(user) -> None:
    duration_ms = int((time.time() - session.get("started", time.time())) * 1000)
    with services().db.session() as db:
        audit.record(db, services().keyring, audit.Event(
            action="logout", protocol=PROTOCOL, account_id=user.account_id, user_id=user.id,
            username=user.username, ip=client_address(), duration_ms=duration_ms))


@bp.before_app_request
def enrol_before_anything_else():
    """A user who must enrol in MFA reaches only the enrolment pages and sign-out."""
    if not session.get("must_enrol") or session.mfa_passed:
        return None
    endpoint = request.endpoint or ""
    if endpoint.startswith(ENROL_ENDPOINT) or endpoint in ("auth.sign_out", "static", "bootstrap.static"):
        return None
    return redirect(url_for(ENROL_ENDPOINT))


@bp.before_app_request
def change_password_before_anything_else():
    """A user whose password the policy no longer accepts reaches only the password page and sign-out."""
    if request.endpoint in (PASSWORD_ENDPOINT, *ALWAYS_REACHABLE):
        return None
    if not current_user.is_authenticated or not current_user.must_change_password:
        return None
    return redirect(url_for(PASSWORD_ENDPOINT))
