"""The portal served over HTTPS on loopback, and headless Chromium (Debian's, never a downloaded
browser) driven by Playwright, for the browser tests."""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from werkzeug.serving import make_server

from portal import create_app
from tests.fixtures import REPO_ROOT, tool

HOST = "127.0.0.1"
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
LAPTOP = {"width": 1280, "height": 800}


@dataclass
class LivePortal:
    url: str


@contextlib.contextmanager
def serving(app, tls_files):
    """Serve `app` over TLS on a free loopback port until the block ends."""
    server = make_server(HOST, 0, app, threaded=True, ssl_context=(str(tls_files.cert), str(tls_files.key)))
    thread = threading.Thread(target=server.serve_forever, name="portal-test-server", daemon=True)
    thread.start()
    try:
        yield LivePortal(f"https://{HOST}:{server.server_port}")
    finally:
        server.shutdown()
        thread.join(30)
        server.server_close()


@contextlib.contextmanager
def chromium() -> Browser:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=tool("chromium"), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def live_portal(settings, migrated, tls_files):
    """The portal served over HTTPS for a module's browser tests."""
    app = create_app(settings)
    with serving(app, tls_files) as portal:
        yield portal
    app.extensions["sealdrop"].close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


def shoot(page: Page, name: str) -> None:
    """A full-page screenshot into docs/screenshots/ (the README shows them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
