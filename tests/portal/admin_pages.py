"""Helpers for the tests of the account's administration pages (Users, Contacts)."""
from __future__ import annotations

from sqlalchemy import select

from common.models import AuditEvent, User
from tests.fixtures import STRONG_PASSWORD
from tests.portal.conftest import PortalClient


def text_of(page) -> str:
    return page.get_data(as_text=True)


def signed_in_as(app, username: str, password: str = STRONG_PASSWORD) -> PortalClient:
    """A new client signed in as this user."""
    client = app.test_client()
    assert client.sign_in(username, password).status_code == 302
    return client


def admin_details(services, account_id) -> list[str]:
    """The details of the account's admin_change events, oldest first."""
    with services.db.session() as session:
        return list(session.scalars(select(AuditEvent.detail).where(
            AuditEvent.account_id == account_id, AuditEvent.action == "admin_change").order_by(AuditEvent.seq)))


def user_row(services, user_id) -> User | None:
    """The user's row as committed now, detached (None once deleted)."""
    with services.db.session() as session:
        found = session.get(User, user_id)
        if found is not None:
            session.expunge(found)
        return found
