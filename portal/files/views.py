"""Browsing the workspace."""
from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import login_required

from portal.auth.current import workspace

bp = Blueprint("files", __name__, url_prefix="/files")


@bp.get("/")
@login_required
def home():
    entries = workspace().list_dir("/")
    return render_template("files/folder.html", entries=entries)
