"""The portal served over HTTPS on loopback, and headless Chromium (Debian's, never a downloaded
browser) driven by Playwright, for the browser tests."""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

from playwright.sync_api import Browser, sync_playwright
from werkzeug.serving import make_server

from tests.fixtures import tool

HOST = "127.0.0.1"


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
