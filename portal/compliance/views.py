"""The compliance page (admins): the account's security posture, each item linking to its fix.

The figures come from one core call (common.compliance). The users list lives in another
blueprint; its filtered links appear only when that blueprint is registered.
"""
from __future__ import annotations

from flask import Blueprint, current_app, render_template, url_for
from flask_login import current_user

from common import compliance
from common.models import Account
from portal.auth.current import admin_required, services

bp = Blueprint("compliance", __name__, url_prefix="/compliance")

USERS_ENDPOINT = "users.index"


@bp.get("/")
@admin_required
def index():
    with services().db.session() as db:
        report = compliance.compliance_report(db, db.get(Account, current_user.account_id))
    return render_template("compliance/index.html", report=report, users_link=_users_link,
                           long_link_days=compliance.LONG_LINK.days)


def _users_link(filter_name: str) -> str | None:
    """The users list filtered (?filter=locked|never|unenrolled|exempt), when that page exists."""
    if USERS_ENDPOINT not in current_app.view_functions:
        return None
    return url_for(USERS_ENDPOINT, filter=filter_name)
