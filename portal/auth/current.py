"""Who the request is for: the signed-in user (flask-login), their principal and Workspace."""
from __future__ import annotations

from dataclasses import dataclass
from functools import wraps
from urllib.parse import urlsplit

from flask import abort, current_app, session
from flask_login import LoginManager, UserMixin, current_user, login_required

from common import accounts
from common.models import User
from common.services import Services
from common.vfs import Principal, Workspace
from portal.security import client_address

PROTOCOL = "web"


@dataclass(frozen=True)
class WebUser(UserMixin):
    """The signed-in user as a request sees them."""

    id: int
    account_id: int
    username: str
    role: str
    must_change_password: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def principal(self) -> Principal:
        return Principal(self.id, self.account_id, self.username, self.role, PROTOCOL, client_address())


def services() -> Services:
    return current_app.extensions["sealdrop"]


def workspace() -> Workspace:
    """The signed-in user's Workspace for this request."""
    return Workspace(services(), current_user.principal())


def load_web_user(user_id: int | None) -> WebUser | None:
    if user_id is None:
        return None
    svc = services()
    with svc.db.session() as db:
        user = db.get(User, user_id)
        if user is None or user.status != "active":
            return None
        return WebUser(user.id, user.account_id, accounts.user_name(db, svc.keyring, user), user.role,
                       user.must_change_password)


def admin_required(view):
    """A page of the account's administration: signed in, and an admin of the account (else 403)."""
    @wraps(view)
    @login_required
    def wrapper(*args, **kwargs):
        if not current_user.is_admin:
            abort(403)
        return view(*args, **kwargs)
    return wrapper


def enrolling_user() -> WebUser | None:
    """A user who passed the password but must enrol in MFA before anything else."""
    if session.get("must_enrol") and not session.mfa_passed:
        return load_web_user(session.user_id)
    return None


def safe_next(target: str | None) -> str | None:
    """A `next` address only when it stays on this site (no scheme, host or `//`)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else None


def init_login(app) -> None:
    manager = LoginManager(app)
    manager.login_view = "auth.sign_in"
    manager.login_message = "Please sign in to continue."
    manager.login_message_category = "info"
    # Sessions are server-side (portal.sessions); flask-login's own cookie protection and its
    # remember-me cookie are not used.
    manager.session_protection = None
    manager.request_loader(lambda request: load_web_user(session.signed_in_user_id))
    manager.user_loader(lambda user_id: None)
