"""A person with a browser: headless Chromium walks the portal from sign-in to sign-out.

Sign in, enrol in MFA (the code from pyotp), sign out and in again with a code, make a
folder, upload with the form (also with JavaScript off) and by drag-and-drop (the progress
bar seen), download (same bytes), rename and delete, create an app password and use it with
curl over FTPS, sign out; the old cookie then opens no page. An admin invites a user, who
sets a password from the mail's link and signs in; the admin tightens the password rules
and the compliance page changes. Screenshots of the main pages go to docs/screenshots/ for
the README.
"""
from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import os
import re
import secrets
import subprocess
import time
from urllib.parse import urlsplit

import pyotp
from playwright.sync_api import Page, expect
from rq.job import Job

from common import accounts
from common.jobs.invitations import send_password_link
from tests.fixtures import client_env, tool
from tests.portal.browser import LAPTOP, shoot

PHONE = {"width": 390, "height": 844}


def sign_in(page: Page, url: str, username: str, password: str) -> None:
    page.goto(url + "/signin")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#submit")


def go_to(page: Page, section: str) -> None:
    """Follow an entry of the navigation bar."""
    page.locator("nav.navbar").get_by_role("link", name=section, exact=True).click()


def next_code(totp: pyotp.TOTP) -> str:
    # The enrolment claimed the current step (codes cannot be replayed): sign in with the next one.
    return totp.at(time.time() + totp.interval)


def open_folder(page: Page, name: str) -> None:
    page.get_by_role("link", name=name, exact=True).click()
    expect(page.locator("h1")).to_have_text(name)


def test_a_user_walks_the_portal_in_a_browser(live_portal, browser, account, ftps_server, test_env, tmp_path):
    url = live_portal.url
    context = browser.new_context(ignore_https_errors=True, viewport=LAPTOP, accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status == 404 else None)

    # Sign in.
    page.goto(url + "/")
    expect(page).to_have_url(re.compile(r"/signin$"))
    shoot(page, "sign-in")
    sign_in(page, url, account.admin_username, account.password)
    expect(page.locator("h1")).to_have_text("My files")
    expect(page.get_by_role("link", name="Audit Logs", exact=True)).to_be_visible()  # an admin's

    # Enrol in MFA: the QR code and the key are shown; a code from the app confirms it.
    go_to(page, "Profile")
    page.goto(url + "/profile/mfa")
    page.get_by_role("button", name="Set up two-step sign-in").click()
    expect(page.locator("#qr svg")).to_be_visible()
    shoot(page, "mfa-enrolment")
    totp = pyotp.TOTP(page.inner_text("#totp-secret").replace(" ", ""))
    page.fill("#code", totp.now())
    page.click("#mfa-confirm #submit")
    expect(page.locator("#recovery-codes li")).to_have_count(10)
    recovery_codes = page.locator("#recovery-codes li").all_inner_texts()

    # Sign out, and in again: now the password alone is not enough.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    sign_in(page, url, account.admin_username, account.password)
    expect(page).to_have_url(re.compile(r"/signin/code$"))
    page.goto(url + "/files/")
    expect(page).to_have_url(re.compile(r"/signin"))
    page.goto(url + "/signin/code")
    page.fill("#code", next_code(totp))
    page.click("#submit")
    expect(page.locator("h1")).to_have_text("My files")

    # A folder, and a file uploaded into it with the form.
    page.fill("#name", "Reports 2026")
    page.get_by_role("button", name="Create folder").click()
    open_folder(page, "Reports 2026")
    page.click("#share-folder")
    expect(page.locator("h1")).to_contain_text("Share")
    shoot(page, "share-dialog")
    page.go_back()
    form_file = tmp_path / "lab results.csv"
    form_file.write_bytes(b"patient,result\n1,negative\n" * 4000)
    page.set_input_files("#upload-form input[type=file]", str(form_file))
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator("[data-upload-results]")).to_contain_text(
        "SHA-256 " + hashlib.sha256(form_file.read_bytes()).hexdigest())

    # Drag-and-drop, with the progress bar watched as it moves.
    dropped = os.urandom(3 * 1024 * 1024)
    page.evaluate("""() => {
        const bar = document.querySelector('[data-upload-zone] .progress-bar');
        window.progressSeen = [];
        new MutationObserver(() => window.progressSeen.push(bar.style.width))
            .observe(bar, {attributes: true, attributeFilter: ['style']});
    }""")
    transfer = page.evaluate_handle("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], 'scan <1>.bin', {type: 'application/octet-stream'}));
        return data;
    }""", base64.b64encode(dropped).decode())
    page.dispatch_event("[data-upload-zone]", "dragenter", {"dataTransfer": transfer})
    page.dispatch_event("[data-upload-zone]", "drop", {"dataTransfer": transfer})
    expect(page.locator("[data-upload-results]")).to_contain_text("SHA-256 " + hashlib.sha256(dropped).hexdigest())
    expect(page.locator("[data-upload-zone] .progress")).to_be_visible()
    seen = page.evaluate("window.progressSeen")
    assert seen and seen[-1] == "100%", seen
    page.reload()
    expect(page.locator("#counts")).to_have_text("0 folders, 2 files")
    shoot(page, "folder")

    # Download: the same bytes come back.
    page.get_by_role("link", name="scan <1>.bin").click()
    expect(page.locator("h1")).to_contain_text("scan <1>.bin")
    shoot(page, "file-details")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download").first.click()
    download = download_info.value
    # Chromium itself replaces < and > (not allowed in Windows file names) with _.
    assert download.suggested_filename == "scan _1_.bin"
    assert open(download.path(), "rb").read() == dropped

    # Rename, then delete after the confirmation.
    page.get_by_role("link", name="Rename").first.click()
    page.fill("#name", "scan-final.bin")
    page.get_by_role("button", name="Rename").click()
    expect(page.get_by_text("scan-final.bin").first).to_be_visible()
    page.goto(url + "/files/")
    open_folder(page, "Reports 2026")
    page.get_by_role("row", name=re.compile("scan-final.bin")).get_by_role("link", name="Delete").click()
    expect(page.get_by_text("permanent", exact=False).first).to_be_visible()
    shoot(page, "delete-confirmation")
    page.get_by_role("button", name="Delete permanently").click()
    expect(page.locator("#counts")).to_have_text("0 folders, 1 file")

    # An app password made on the profile works with curl over FTPS.
    page.goto(url + "/profile/app-passwords")
    page.fill("#label", "office scanner")
    page.get_by_role("button", name="Create app password").click()
    app_password = page.inner_text("#app-password").strip()
    shoot_page_of(context, url + "/profile/connection", "connection-details")
    listing = subprocess.run(
        [tool("curl"), "--silent", "--show-error", "--ssl-reqd", "--cacert", str(ftps_server.cert),
         "--max-time", "60", "-u", f"{account.admin_username}:{app_password}",
         f"ftp://{ftps_server.host}:{ftps_server.port}/Reports%202026/lab%20results.csv"],
        env={**client_env(test_env), "HOME": str(tmp_path)}, capture_output=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout == form_file.read_bytes()

    # The plain form works with JavaScript off too.
    upload_without_javascript(browser, url, account, recovery_codes[0], tmp_path)

    # Sign out: the old cookie opens no page any more.
    cookie = next(c for c in context.cookies() if c["name"] == "sealdrop_session")
    page.goto(url + "/profile/")
    shoot(page, "profile")
    page.set_viewport_size(PHONE)
    page.goto(url + "/files/")
    shoot(page, "files-on-a-phone")
    page.set_viewport_size(LAPTOP)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    replay = browser.new_context(ignore_https_errors=True)
    replay.add_cookies([cookie])
    old = replay.new_page()
    for path in ("/files/", "/profile/", "/profile/app-passwords"):
        old.goto(url + path)
        expect(old).to_have_url(re.compile(r"/signin"))
    replay.close()
    context.close()
    assert not errors, errors  # no script error and nothing the CSP refused


def shoot_page_of(context, address: str, name: str) -> None:
    page = context.new_page()
    page.goto(address)
    shoot(page, name)
    page.close()


def upload_without_javascript(browser, url, account, recovery_code, tmp_path) -> None:
    context = browser.new_context(ignore_https_errors=True, java_script_enabled=False)
    page = context.new_page()
    sign_in(page, url, account.admin_username, account.password)
    page.fill("#code", recovery_code)  # the TOTP steps of this half-minute are spent
    page.click("#submit")
    expect(page.locator("h1")).to_have_text("My files")
    plain = tmp_path / "plain form.txt"
    plain.write_bytes(b"sent without JavaScript\n")
    page.set_input_files("#upload-form input[type=file]", str(plain))
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_text(hashlib.sha256(plain.read_bytes()).hexdigest())).to_be_visible()
    context.close()


def invitation_link(settings, email_address: str) -> str:
    """The set-password path in the newest mail written for this address (no SMTP_URL in tests)."""
    for path in sorted(settings.mail_dir.glob("*.eml"), reverse=True):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if message["To"] == email_address:
            text = message.get_body(preferencelist=("plain",)).get_content()
            return urlsplit(re.search(r"https?://\S+/password/\S+", text).group(0)).path
    raise AssertionError("no invitation was written")


def test_an_admin_invites_a_user_and_tightens_the_policy(live_portal, browser, account, services, settings):
    url = live_portal.url
    admin = browser.new_context(ignore_https_errors=True, viewport=LAPTOP)
    page = admin.new_page()
    sign_in(page, url, account.admin_username, account.password)

    # The compliance page before the policy changes.
    go_to(page, "Compliance")
    policy_before = page.inner_text("#item-policy")
    shoot(page, "compliance")

    # A new user, invited by mail.
    go_to(page, "Users")
    page.get_by_role("link", name="New user…").click()
    username = "nurse" + secrets.token_hex(4)
    address = f"{username}@clinic.example"
    page.fill("#username", username)
    page.fill("#email", address)
    page.get_by_role("button", name="Create and invite").click()
    expect(page.get_by_text(username).first).to_be_visible()
    shoot(page, "user")
    with services.db.session() as db:
        user_id = accounts.find_user(db, services.keyring, username).id
    job = Job.fetch(f"password-invite-{user_id}", connection=services.redis)
    job.delete()  # run here, as the mail worker would
    assert send_password_link(services, *job.args) is True

    # The user opens the mail's link, sets a password and signs in.
    newcomer = browser.new_context(ignore_https_errors=True, viewport=PHONE)
    their_page = newcomer.new_page()
    their_page.goto(url + invitation_link(settings, address))
    shoot(their_page, "set-password")
    password = "Quiet-Lantern-Orchard-" + secrets.token_hex(3)
    their_page.fill("#new", password)
    their_page.fill("#confirm", password)
    their_page.get_by_role("button", name="Set my password").click()
    sign_in(their_page, url, username, password)
    expect(their_page.locator("h1")).to_have_text("My files")
    newcomer.close()

    # The admin tightens the rules; the compliance page says so.
    go_to(page, "Users")
    shoot(page, "users")
    go_to(page, "Settings")
    page.fill("#min_length", "16")
    page.check("#symbol")
    page.check("#digit")
    page.get_by_role("button", name="Save the password rules").click()
    shoot(page, "settings")
    go_to(page, "Compliance")
    assert page.inner_text("#item-policy") != policy_before
    expect(page.locator("#item-policy")).to_contain_text("16")
    go_to(page, "Audit")  # the invitation, the new user's sign-in and the policy change are there
    expect(page.locator("main table").first).to_contain_text("admin_change")
    shoot(page, "audit")
    admin.close()
