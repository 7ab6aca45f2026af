"""The portal under test: one app per session, a browser-like client, and signing in."""
from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from tests.factories import random_ip

BASE_URL = "https://portal.test"
CSRF_FIELD = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


class PortalClient(FlaskClient):
    """A test client that behaves like a browser on our HTTPS site: it sends a same-origin
    Referer (Flask-WTF's strict check over HTTPS wants one) and can fill in CSRF tokens."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.environ_base["HTTP_REFERER"] = BASE_URL + "/"
        # Each client is its own address, so one test's failed logins never ban another's.
        self.environ_base["REMOTE_ADDR"] = random_ip()

    def open(self, *args, **kwargs):
        if args and isinstance(args[0], str):
            kwargs.setdefault("base_url", BASE_URL)
        return super().open(*args, **kwargs)

    def csrf_token(self, url: str = "/signin") -> str:
        """The CSRF token a page of ours carries (fetching it starts a session if needed)."""
        page = self.get(url)
        match = CSRF_FIELD.search(page.get_data(as_text=True))
        assert match, f"no CSRF token on {url} ({page.status_code})"
        return match.group(1)

    def submit(self, url: str, data: dict | None = None, *, form_page: str | None = None, **kwargs):
        """POST a form the way a browser does: with the token of the page the form is on."""
        data = dict(data or {})
        data.setdefault("csrf_token", self.csrf_token(form_page or url))
        return self.post(url, data=data, **kwargs)

    def sign_in(self, username: str, password: str, **kwargs):
        return self.submit("/signin", {"username": username, "password": password}, **kwargs)


@pytest.fixture(scope="session")
def portal_app(web_app):
    return web_app  # one app for the portal tests and the parity door (tests/portal/web_door.py)


@pytest.fixture
def client(portal_app) -> PortalClient:
    return portal_app.test_client()


@pytest.fixture
def signed_in(client, account) -> PortalClient:
    """A client signed in as the admin of a fresh account (`client.account` is its AccountInfo)."""
    response = client.sign_in(account.admin_username, account.password)
    assert response.status_code == 302, response.get_data(as_text=True)
    client.account = account
    return client
