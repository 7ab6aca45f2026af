"""The portal: the app factory. `flask --app portal ...` is also the operator CLI.

Each area of the portal is a blueprint package of its own (`portal/<area>/`: its views, and
its forms beside them), registered below from one list; its pages are Jinja templates under
the top-level `templates/<area>/`, extending one base layout, and mail templates live in
`templates/email/`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from flask import Flask

from common.config import Settings, settings_from_environment
from common.errors import ConfigError
from common.services import Services
from portal import cli, health
from portal.extensions import db, migrate

REPO_ROOT = Path(__file__).resolve().parent.parent
BLUEPRINTS = (health.bp,)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the portal for the given settings (default: the environment)."""
    settings = settings or _settings_or_exit()
    app = Flask(__name__, template_folder=str(REPO_ROOT / "templates"))
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True},
    )
    app.extensions["sealdrop"] = Services(settings)
    db.init_app(app)
    migrate.init_app(app, db, directory=str(REPO_ROOT / "migrations"), compare_type=True)
    cli.register(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return app


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
