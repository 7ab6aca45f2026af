"""A contact with a browser: the link from the invitation mail opened in a fresh browser
context, a file downloaded (the same bytes); a request link's drop zone receiving a file that
the folder's owner then reads over SFTP. Screenshots of the link pages go to docs/screenshots/."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import re

import pytest
from playwright.sync_api import expect

from common.jobs.invitations import send_share_invitation
from common.services import Services
from tests.links import make_link, shared_projects
from tests.portal.browser import LAPTOP, shoot
from tests.transfer.sftp_door import connect

MAIL_LINK = re.compile(r"(https://\S+/s/[A-Za-z0-9_-]{43,})")


@pytest.fixture
def site_mailer(services, smtp_server, live_portal):
    """The services of a worker whose mails link to the live portal and go to `smtp_server`."""
    svc = Services(dataclasses.replace(services.settings, public_url=live_portal.url,
                                       smtp_url=f"smtp://127.0.0.1:{smtp_server.port}"))
    yield svc
    svc.close()


def test_a_contact_opens_the_mailed_link_and_downloads(services, account, site_mailer, smtp_server, browser):
    share_id = shared_projects(services, account, "read", email="partner@example.test")
    assert send_share_invitation(site_mailer, share_id)
    [(_, message)] = [m for m in smtp_server.messages if m[0] == ["partner@example.test"]]
    link = MAIL_LINK.search(message.get_body(("plain",)).get_content()).group(1)
    context = browser.new_context(ignore_https_errors=True, viewport=LAPTOP, accept_downloads=True)
    try:
        page = context.new_page()
        page.goto(link)
        expect(page.locator("h1")).to_have_text("Shared folder")
        expect(page.get_by_text("plan.txt")).to_be_visible()
        shoot(page, "link-folder")
        with page.expect_download() as download_info:
            page.get_by_role("row", name=re.compile("plan.txt")).get_by_role("link", name="Download").click()
        download = download_info.value
        assert download.suggested_filename == "plan.txt"
        assert open(download.path(), "rb").read() == b"the plan"
    finally:
        context.close()


def test_a_request_link_receives_a_drop_the_owner_reads_over_sftp(services, account, live_portal, browser,
                                                                    sftp_server):
    share_id = shared_projects(services, account, "request")
    _, token = make_link(services, account, share_id)
    dropped = os.urandom(2 * 1024 * 1024)
    context = browser.new_context(ignore_https_errors=True, viewport=LAPTOP)
    try:
        page = context.new_page()
        page.goto(f"{live_portal.url}/s/{token}")
        expect(page.locator("h1")).to_have_text("Send files")
        expect(page.get_by_text("plan.txt")).to_have_count(0)
        shoot(page, "link-request")
        transfer = page.evaluate_handle("""(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], 'invoice.pdf', {type: 'application/pdf'}));
            return data;
        }""", base64.b64encode(dropped).decode())
        page.dispatch_event("[data-upload-zone]", "dragenter", {"dataTransfer": transfer})
        page.dispatch_event("[data-upload-zone]", "drop", {"dataTransfer": transfer})
        expect(page.locator("[data-upload-results]")).to_contain_text(
            "SHA-256 " + hashlib.sha256(dropped).hexdigest())
    finally:
        context.close()
    transport, sftp = connect(sftp_server.port, account.admin_username, password=account.password)
    try:
        assert "invoice.pdf" in sftp.listdir("/projects")
        with sftp.open("/projects/invoice.pdf", "rb") as handle:
            assert handle.read() == dropped
    finally:
        sftp.close()
        transport.close()
