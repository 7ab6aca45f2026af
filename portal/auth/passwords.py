"""The set-password links (an invitation or a reset, from the mail) and "Forgot password".

Setting a password never signs anyone in: the user goes on to the sign-in page, where the
gate applies its rules (MFA, allow-list, lockout) as on any other sign-in.
"""
from __future__ import annotations

from flask import flash, redirect, render_template, session, url_for

from common import accounts
from common.auth import password_links
from common.errors import InvalidInput
from common.jobs.invitations import request_password_reset
from common.models import Account, User
from portal.auth.current import PROTOCOL, services
from portal.auth.forms import ForgotForm, SetPasswordForm
from portal.auth.views import bp
from portal.profile.forms import describe_password_rules
from portal.security import client_address

FORGOT_REPLY = ("If this user name exists and is active, a link to choose a new password is on its way to "
                "the address on file. It works once, for 72 hours. No mail after a few minutes? Check your "
                "spam folder, or ask your administrator.")
HEADINGS = {"invite": "Choose your password", "reset": "Choose a new password"}


@bp.route("/password/<token>", methods=["GET", "POST"])
def set_password(token: str):
    svc = services()
    with svc.db.session() as db:
        link = password_links.live_link(db, token)
        if link is None:
            return render_template("auth/dead_link.html"), password_links.DeadLink.http_status
        user, purpose = db.get(User, link.user_id), link.purpose
        username = accounts.user_name(db, svc.keyring, user)
        rules = describe_password_rules(accounts.password_rules(db, db.get(Account, user.account_id)))
    form = SetPasswordForm()
    if form.validate_on_submit():
        try:
            with svc.db.session() as db:
                password_links.redeem(db, svc.keyring, token, form.new.data, ip=client_address(), protocol=PROTOCOL)
        except password_links.DeadLink:
            return render_template("auth/dead_link.html"), password_links.DeadLink.http_status
        except InvalidInput as exc:
            form.new.errors.extend(getattr(exc, "unmet", ()) or [exc.message])
        else:
            session.start_over()  # whoever was signed in on this browser signs in again
            flash("Your password is set. Sign in with your user name and the new password.", "success")
            return redirect(url_for("auth.sign_in"))
    status = 400 if form.errors else 200
    return render_template("auth/set_password.html", form=form, username=username, rules=rules,
                           heading=HEADINGS[purpose]), status


@bp.route("/forgot", methods=["GET", "POST"])
def forgot():
    form = ForgotForm()
    if form.validate_on_submit():
        request_password_reset(services(), form.username.data, client_address())
        flash(FORGOT_REPLY, "info")
        return redirect(url_for("auth.sign_in"))
    return render_template("auth/forgot.html", form=form), 400 if form.errors else 200
