"""The portal: the app factory. `flask --app portal ...` is also the operator CLI.

Each area of the portal is a blueprint package of its own (`portal/<area>/`: its views, and
its forms beside them), registered below from one list; its pages are Jinja templates under
the top-level `templates/<area>/`, extending one base layout, and mail templates live in
`templates/email/`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from flask import Flask, request
from flask_bootstrap import Bootstrap5
from flask_wtf import CSRFProtect

from common.config import Settings, settings_from_environment
from common.errors import ConfigError
from common.services import Services
from portal import (
    audit, auth, cli, compliance, contacts, files, health, links, profile, security, settings as settings_pages,
    shares, users,
)
from portal.auth.current import init_login
from portal.extensions import db, migrate
from portal.sessions import DatabaseSessionInterface

REPO_ROOT = Path(__file__).resolve().parent.parent
BLUEPRINTS = (health.bp, auth.bp, files.bp, profile.bp, users.bp, contacts.bp, settings_pages.bp, compliance.bp,
              links.bp, shares.bp, audit.bp)
# The navigation: (endpoint, label, admins only); entries whose blueprint is not registered are left out.
NAVIGATION = (
    ("files.home", "Files", False),
    ("shares.index", "Shared by me", False),
    ("users.index", "Users", True),
    ("contacts.index", "Contacts", True),
    ("settings.index", "Settings", True),
    ("compliance.index", "Compliance", True),
    ("audit.index", "Audit", True),
    ("profile.index", "Profile", False),  # its tabs include Connection details
)
# Ordinary forms are small; the upload route raises its own limit for the one request it streams.
MAX_FORM_BYTES = 1024 * 1024


def create_app(settings: Settings | None = None) -> Flask:
    """Build the portal for the given settings (default: the environment)."""
    settings = settings or _settings_or_exit()
    app = Flask(__name__, template_folder=str(REPO_ROOT / "templates"))
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True},
        SESSION_COOKIE_NAME="sealdrop_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=not settings.is_development,
        MAX_CONTENT_LENGTH=MAX_FORM_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_FORM_BYTES,
        MAX_FORM_PARTS=100,
        WTF_CSRF_SSL_STRICT=True,
        BOOTSTRAP_SERVE_LOCAL=True,
    )
    app.extensions["sealdrop"] = Services(settings)
    app.session_interface = DatabaseSessionInterface(app.extensions["sealdrop"])
    db.init_app(app)
    migrate.init_app(app, db, directory=str(REPO_ROOT / "migrations"), compare_type=True)
    Bootstrap5(app)
    CSRFProtect(app)
    init_login(app)
    security.install(app)
    cli.register(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    app.context_processor(lambda: {"nav_items": _navigation(app), "active_nav": _active_navigation()})
    return app


def _navigation(app: Flask) -> list[tuple[str, str, bool]]:
    return [item for item in NAVIGATION if item[0] in app.view_functions]


def _active_navigation() -> str | None:
    """The navigation entry of this page: its own, or else the first of its blueprint."""
    endpoints = [endpoint for endpoint, _, _ in NAVIGATION]
    if request.endpoint in endpoints:
        return request.endpoint
    return next((e for e in endpoints if e.split(".")[0] == request.blueprint), None)


def services(app: Flask) -> Services:
    """The common services of this app."""
    return app.extensions["sealdrop"]


def _settings_or_exit() -> Settings:
    # A configuration error is one clear line and a non-zero exit, never a traceback.
    try:
        return settings_from_environment()
    except ConfigError as exc:
        print(f"sealdrop: configuration error: {exc.message}", file=sys.stderr)
        raise SystemExit(78) from None
