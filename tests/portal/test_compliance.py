"""The compliance page (admins): the account's figures, where each is fixed, the slots other
issues fill; other accounts never counted."""
from __future__ import annotations

import html
import re
from datetime import date

import pytest
from flask import Blueprint

from common import auth
from common.errors import AuthFailed
from common.jobs.chain import check_chain
from common.models import AuditExport
from portal import create_app
from tests.factories import allow, enrol, login, require_mfa, with_user
from tests.fixtures import STRONG_PASSWORD
from tests.portal.conftest import PortalClient


def text_of(page) -> str:
    return html.unescape(page.get_data(as_text=True))


def row(page: str, row_id: str) -> str:
    start = page.index(f'id="{row_id}"')
    return re.sub(r"\s+", " ", page[start:page.index("</tr>", start)])


def lock(services, username):
    for _ in range(services.settings.lockout_threshold):
        with pytest.raises(AuthFailed):
            login(services, username, "not the password")


def test_a_fresh_account_at_a_glance(signed_in):
    response = signed_in.get("/compliance/")
    assert response.status_code == 200
    page = text_of(response)
    assert "Not required" in row(page, "item-mfa") and "0 of 1 users enrolled" in row(page, "item-mfa")
    assert ">None<" in row(page, "item-exempt")
    assert ">Off<" in row(page, "item-allow-list") and "0 rules" in row(page, "item-allow-list")
    assert "Minimum" in row(page, "item-policy") and "At least 8 characters" in row(page, "item-policy")
    assert ">None<" in row(page, "item-never")  # the admin has just signed in
    assert ">None<" in row(page, "item-locked")
    assert 'href="/compliance/"' in text_of(signed_in.get("/files/"))  # in the navigation


def test_each_item_links_to_where_it_is_fixed(signed_in):
    page = text_of(signed_in.get("/compliance/"))
    assert 'href="/settings/#mfa"' in row(page, "item-mfa")
    assert 'href="/settings/#allow-list"' in row(page, "item-allow-list")
    assert 'href="/settings/#password-policy"' in row(page, "item-policy")
    settings_page = text_of(signed_in.get("/settings/"))
    for anchor in ("mfa", "allow-list", "password-policy"):
        assert f'id="{anchor}"' in settings_page


def test_the_slot_of_the_sharing_issue_is_marked_and_empty(signed_in):
    page = text_of(signed_in.get("/compliance/"))
    assert "0 open links" in row(page, "item-share-links")  # filled by sharing (tests/portal/test_shares.py)
    assert "Available when sharing by link lands." not in page


def test_the_last_audit_export_and_chain_check_are_shown(signed_in, services, make_account):
    account, other = signed_in.account, make_account()
    page = text_of(signed_in.get("/compliance/"))
    assert "No daily export yet" in row(page, "item-audit-trail")
    assert "Chain not verified yet" in row(page, "item-audit-trail")
    with services.db.session() as session:
        for day in (date(2026, 3, 1), date(2026, 3, 2)):
            session.add(AuditExport(account_id=account.id, day=day, events=day.day * 10, chain_head=bytes(32)))
        session.add(AuditExport(account_id=other.id, day=date(2026, 3, 9), events=1, chain_head=bytes(32)))
    check_chain(services, account.id)
    check_chain(services, other.id)
    trail = row(text_of(signed_in.get("/compliance/")), "item-audit-trail")
    assert "Exported 2026-03-02" in trail and "20 events" in trail and "2026-03-09" not in trail
    assert "Chain intact" in trail and "/audit/#chain" in trail


def test_the_figures_follow_the_account_and_no_other(signed_in, services, make_account, make_user):
    account = signed_in.account
    other = make_account()
    enrolled_id, _ = make_user(account)
    exempt_id, _ = make_user(account)
    _, locked_name = make_user(account)
    _, their_name = make_user(other)
    enrol(services, enrolled_id)
    with_user(services, exempt_id, lambda db, u: auth.set_mfa_exempt(db, services.keyring, u, True))
    lock(services, locked_name)
    lock(services, their_name)
    require_mfa(services, account.id)
    allow(services, account.id, signed_in.environ_base["REMOTE_ADDR"])
    allow(services, other.id, "203.0.113.0/24")
    signed_in.submit("/settings/policy", {"min_length": "12", "upper": "y", "lower": "y", "digit": "y"},
                     form_page="/settings/")
    page = text_of(signed_in.get("/compliance/"))
    assert "Required" in row(page, "item-mfa") and "1 of 4 users enrolled" in row(page, "item-mfa")
    assert "2 not enrolled, asked at their next sign-in" in row(page, "item-mfa")
    assert "1 exemption<" in row(page, "item-exempt")
    assert ">On<" in row(page, "item-allow-list") and "1 rule<" in row(page, "item-allow-list")
    assert "Strong" in row(page, "item-policy")
    assert "At least 12 characters, an upper-case letter, a lower-case letter, a digit" in row(page, "item-policy")
    assert "3 users<" in row(page, "item-never")
    assert "1 user<" in row(page, "item-locked")


def test_the_users_list_is_linked_with_its_filters_once_it_exists(settings, account):
    app = create_app(settings)
    app.test_client_class = PortalClient
    try:
        if "users.index" not in app.view_functions:  # until the Users tab is merged, a stand-in
            users = Blueprint("users", __name__, url_prefix="/users")
            users.add_url_rule("/", "index", lambda: "users")
            app.register_blueprint(users)
        client = app.test_client()
        assert client.sign_in(account.admin_username, STRONG_PASSWORD).status_code == 302
        page = text_of(client.get("/compliance/"))
    finally:
        app.extensions["sealdrop"].close()
    for row_id, query in (("item-mfa", "unenrolled"), ("item-exempt", "exempt"), ("item-never", "never"),
                          ("item-locked", "locked")):
        assert f'href="/users/?filter={query}"' in row(page, row_id)


def test_the_page_renders_with_or_without_the_users_list(signed_in, portal_app):
    page = text_of(signed_in.get("/compliance/"))
    assert ("?filter=" in page) == ("users.index" in portal_app.view_functions)


def test_a_user_who_is_not_an_admin_is_refused(portal_app, account, make_user):
    _, name = make_user(account)
    client = portal_app.test_client()
    assert client.sign_in(name, STRONG_PASSWORD).status_code == 302
    assert client.get("/compliance/").status_code == 403
    assert 'href="/compliance/"' not in text_of(client.get("/files/"))


def test_a_signed_out_visitor_is_sent_to_sign_in(client):
    response = client.get("/compliance/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/signin")
