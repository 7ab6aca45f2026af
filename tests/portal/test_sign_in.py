"""Signing in and out of the portal: the same gate as FTPS and SFTP, server-side sessions."""
from __future__ import annotations

import dataclasses
import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from common import auth
from common.crypto import token_hash
from common.models import AuditEvent, IpBan, User, WebSession
from portal import create_app
from portal.auth.current import admin_required
from portal.auth.views import REFUSED
from tests.factories import allow, enrol, with_user
from tests.portal.conftest import CSRF_FIELD, PortalClient

COOKIE = "sealdrop_session"


def cookie_value(client) -> str | None:
    cookie = client.get_cookie(COOKIE, domain="portal.test")
    return cookie.value if cookie else None


def session_row(services, token) -> WebSession | None:
    with services.db.session() as db:
        row = db.get(WebSession, token_hash(token))
        if row is not None:
            db.expunge(row)
        return row


def test_a_user_signs_in_with_a_secure_session_cookie_and_sees_their_files(client, account):
    response = client.sign_in(account.admin_username, account.password)
    assert response.status_code == 302 and response.headers["Location"] == "/files/"
    set_cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "Secure" in set_cookie and "SameSite=Lax" in set_cookie
    assert "Expires" not in set_cookie  # no "remember me": the cookie ends with the browser
    page = client.get("/files/")
    assert page.status_code == 200
    assert account.admin_username in page.get_data(as_text=True)


def test_the_cookie_holds_only_a_random_token_whose_hash_is_the_row(client, account, services):
    client.sign_in(account.admin_username, account.password)
    token = cookie_value(client)
    assert len(token) >= 43 and account.admin_username not in token
    row = session_row(services, token)
    assert row.user_id == account.admin_id and row.mfa_passed and row.revoked_at is None


def test_signing_in_issues_a_new_session_id(client, account, services):
    client.csrf_token()  # the sign-in form's token opens an anonymous session
    before = cookie_value(client)
    assert before is not None
    client.sign_in(account.admin_username, account.password)
    after = cookie_value(client)
    assert after != before
    assert session_row(services, before).revoked_at is not None
    # The old id, planted by an attacker before sign-in, opens nothing.
    other = client.application.test_client()
    other.set_cookie(COOKIE, before, domain="portal.test")
    assert other.get("/files/").status_code == 302


def test_every_refusal_reads_the_same(client, account, make_user, services):
    _, locked_name = make_user(account)
    blocked_id, blocked_name = make_user(account)
    allow(services, account.id, "192.0.2.0/24", user_id=blocked_id)
    for _ in range(services.settings.lockout_threshold):
        client.sign_in(locked_name, "wrong password")
    pages = {
        "wrong password": client.sign_in(account.admin_username, "not the password"),
        "unknown name": client.sign_in("nobody-" + account.name, account.password),
        "locked name": client.sign_in(locked_name, account.password),
        "outside the allow-list": client.sign_in(blocked_name, account.password),
    }
    for why, page in pages.items():
        assert page.status_code == 200, why
        html = page.get_data(as_text=True)
        assert "Sign-in failed: check your user name and password." in html, why
        assert client.get("/files/").status_code == 302, why
    assert len({_refusal_text(p) for p in pages.values()}) == 1


def _refusal_text(page) -> str:
    html = page.get_data(as_text=True)
    start = html.index("Sign-in failed")
    return html[start:html.index("<", start)]


def test_a_banned_address_gets_429(client, account, services):
    # The defender's own tests (tests/common/test_auth.py) show how failures lead to a ban.
    with services.db.session() as db:
        db.add(IpBan(ip=client.environ_base["REMOTE_ADDR"],
                     banned_until=datetime.now(UTC) + timedelta(minutes=2)))
    page = client.sign_in(account.admin_username, account.password)
    assert page.status_code == 429
    assert "Too many failed logins from your address" in page.get_data(as_text=True)
    assert client.get("/files/").status_code == 302


def test_the_refusal_message_is_the_one_the_view_defines(client, account):
    html = client.sign_in(account.admin_username, "nope").get_data(as_text=True)
    assert REFUSED.split(":")[0] in html


def test_sign_in_without_a_csrf_token_is_refused(client, account):
    page = client.post("/signin", data={"username": account.admin_username, "password": account.password})
    assert page.status_code == 400
    assert "This form has expired" in page.get_data(as_text=True)
    assert client.get("/files/").status_code == 302


def test_an_enrolled_user_gives_a_code_after_the_password(client, account, services):
    code = enrol(services, account.admin_id)
    response = client.sign_in(account.admin_username, account.password)
    assert response.headers["Location"] == "/signin/code"
    assert client.get("/files/").status_code == 302  # the password alone opens nothing
    wrong = client.submit("/signin/code", {"code": "000000" if code.now() != "000000" else "111111"})
    assert "That code was not accepted" in wrong.get_data(as_text=True)
    right = client.submit("/signin/code", {"code": code.now()})
    assert right.status_code == 302 and right.headers["Location"] == "/files/"
    assert client.get("/files/").status_code == 200


def test_a_recovery_code_stands_in_for_the_totp_code(client, account, services):
    enrol(services, account.admin_id)
    codes = with_user(services, account.admin_id,
                      lambda s, u: auth.totp.generate_recovery_codes(s, services.keyring, u))
    client.sign_in(account.admin_username, account.password)
    response = client.submit("/signin/code", {"code": codes[0]})
    assert response.headers["Location"] == "/files/"


def test_sign_out_ends_the_session_and_is_audited(signed_in, services):
    token = cookie_value(signed_in)
    response = signed_in.submit("/signout", form_page="/files/")
    assert response.status_code == 302
    assert session_row(services, token).revoked_at is not None
    replay = signed_in.application.test_client()
    replay.set_cookie(COOKIE, token, domain="portal.test")
    assert replay.get("/files/").status_code == 302
    with services.db.session() as db:
        actions = db.execute(select(AuditEvent.action, AuditEvent.protocol).where(
            AuditEvent.account_id == signed_in.account.id).order_by(AuditEvent.seq)).all()
    assert ("login", "web") in actions and actions[-1] == ("logout", "web")


def test_sign_out_is_not_a_get(signed_in):
    assert signed_in.get("/signout").status_code == 405
    assert signed_in.get("/files/").status_code == 200


@pytest.mark.parametrize("column", ["last_seen_at", "created_at"])
def test_idle_and_absolute_timeouts_end_the_session(signed_in, services, column):
    token = cookie_value(signed_in)
    now = datetime.now(UTC)
    change = ({"last_seen_at": now - timedelta(minutes=31)} if column == "last_seen_at"
              else {"created_at": now - timedelta(hours=13), "expires_at": now - timedelta(hours=1)})
    with services.db.session() as db:
        db.execute(update(WebSession).where(WebSession.token_hash == token_hash(token)).values(**change))
    assert signed_in.get("/files/").status_code == 302


def test_a_new_session_version_ends_every_session(signed_in, services):
    with services.db.session() as db:
        db.execute(update(User).where(User.id == signed_in.account.admin_id)
                   .values(session_version=User.session_version + 1))
    assert signed_in.get("/files/").status_code == 302


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"])
def test_next_never_leaves_the_site(client, account, target):
    token = client.csrf_token()
    response = client.post("/signin?next=" + target, data={
        "csrf_token": token, "username": account.admin_username, "password": account.password})
    assert response.headers["Location"] == "/files/"


def test_next_inside_the_site_is_followed(client, account):
    token = client.csrf_token()
    response = client.post("/signin?next=/files/", data={
        "csrf_token": token, "username": account.admin_username, "password": account.password})
    assert response.headers["Location"] == "/files/"
    assert client.get("/files/").status_code == 200


def test_pages_carry_the_security_headers(client):
    headers = client.get("/signin").headers
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Strict-Transport-Security"].startswith("max-age=")


def test_bootstrap_is_served_by_us(client):
    html = client.get("/signin").get_data(as_text=True)
    assert "cdn." not in html and "jsdelivr" not in html
    assert client.get("/bootstrap/static/css/bootstrap.min.css").status_code == 200


def test_an_unknown_page_is_a_friendly_404(client):
    page = client.get("/no/such/page")
    assert page.status_code == 404 and "Not found" in page.get_data(as_text=True)
    assert "Traceback" not in page.get_data(as_text=True)


@pytest.fixture(scope="module")
def proxied_app(settings, migrated):
    app = create_app(dataclasses.replace(settings, trusted_proxies=(ipaddress.ip_network("10.255.0.0/16"),)))
    app.test_client_class = PortalClient
    yield app
    app.extensions["sealdrop"].close()


@pytest.mark.parametrize("peer, forwarded, expected", [
    ("10.255.0.7", "198.51.100.9", "198.51.100.9"),  # through our proxy
    ("10.255.0.7", "203.0.113.1, 198.51.100.9", "198.51.100.9"),  # a client cannot choose its address
    ("10.255.0.7", "198.51.100.9, 10.255.0.8", "198.51.100.9"),  # two trusted hops
    ("192.0.2.44", "198.51.100.9", "192.0.2.44"),  # not through a trusted proxy: the header is ignored
])
def test_the_client_address_comes_from_the_socket_or_a_trusted_proxy(proxied_app, account, services,
                                                                     peer, forwarded, expected):
    client = proxied_app.test_client()
    client.environ_base["REMOTE_ADDR"] = peer
    client.environ_base["HTTP_X_FORWARDED_FOR"] = forwarded
    client.sign_in(account.admin_username, account.password)
    with services.db.session() as db:
        ip = db.execute(select(AuditEvent.ip).where(AuditEvent.account_id == account.id,
                                                    AuditEvent.action == "login")
                        .order_by(AuditEvent.seq.desc()).limit(1)).scalar_one()
    assert ip == expected


def test_ended_sessions_are_pruned_and_live_ones_kept(client, account, services):
    client.sign_in(account.admin_username, account.password)
    live = cookie_value(client)
    other = client.application.test_client()
    other.sign_in(account.admin_username, account.password)
    ended = cookie_value(other)
    with services.db.session() as db:
        db.execute(update(WebSession).where(WebSession.token_hash == token_hash(ended)).values(
            revoked_at=datetime.now(UTC) - timedelta(days=2)))
    with services.db.session() as db:
        auth.prune_login_state(db, services.settings)
    assert session_row(services, ended) is None
    assert session_row(services, live) is not None
    assert client.get("/files/").status_code == 200


def test_admin_pages_refuse_a_signed_in_user_who_is_not_an_admin(portal_app, client, account, make_user):
    @admin_required
    def probe():
        return "admin page"

    _, username = make_user(account)
    client.sign_in(username, account.password)
    with portal_app.test_request_context("/", headers={"Cookie": f"{COOKIE}={cookie_value(client)}"}):
        portal_app.preprocess_request()
        with pytest.raises(Exception) as refused:
            probe()
    assert getattr(refused.value, "code", None) == 403


@pytest.mark.parametrize("peer, proto, secure", [
    ("10.255.0.7", "https", True),  # TLS ended at our router: the request counts as secure
    ("192.0.2.44", "https", False),  # the header from anyone else is ignored
    ("10.255.0.7", "http", False),
])
def test_the_scheme_comes_from_a_trusted_proxy_only(proxied_app, peer, proto, secure):
    client = proxied_app.test_client()
    client.environ_base.update(REMOTE_ADDR=peer, HTTP_X_FORWARDED_PROTO=proto)
    response = client.get("/signin", base_url="http://portal.test")
    assert ("Strict-Transport-Security" in response.headers) is secure
    if secure:  # the strict Referer check runs: a cross-site Referer is refused, our own is not
        token = CSRF_FIELD.search(response.get_data(as_text=True)).group(1)
        form = {"csrf_token": token, "username": "nobody", "password": "wrong"}
        for referer, status in (("https://evil.example/", 400), ("https://portal.test/signin", 200)):
            posted = client.post("/signin", base_url="http://portal.test", data=form, headers={"Referer": referer})
            assert posted.status_code == status, referer
