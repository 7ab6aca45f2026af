"""The file browser over the Flask test client: every route's success, validation, CSRF,
sign-in, permission and other-tenant cases, escaping, and downloads with Range."""
from __future__ import annotations

import hashlib
import re

import pytest
from sqlalchemy import update

from common.errors import IntegrityFailure
from common.models import FileVersion
from portal.files.downloads import content_disposition
from tests.factories import upload
from tests.portal.workspaces import admin_ws, body, events, read_only_share, ref

XSS = "<img src=x onerror=alert(1)>.html"
DATA = bytes(range(256)) * 40  # 10 240 bytes


@pytest.fixture
def mine(services, signed_in):
    """The signed-in admin's workspace with /docs/report.txt and /docs/sub."""
    services.store.ensure_bucket()
    ws = admin_ws(services, signed_in.account)
    ws.make_dir("/docs")
    ws.make_dir("/docs/sub")
    upload(ws, "/docs/report.txt", DATA)
    return ws


@pytest.fixture
def theirs(services, make_account):
    """Another account's workspace with /secret/plan.txt."""
    ws = admin_ws(services, make_account())
    ws.make_dir("/secret")
    upload(ws, "/secret/plan.txt", b"their plan")
    return ws


# -- browsing ---------------------------------------------------------------------------------

def test_home_lists_folders_and_files_with_counts_and_refs_never_names(signed_in, mine):
    page = signed_in.get("/files/")
    text = body(page)
    assert page.status_code == 200
    assert "docs" in text and "Audit Logs" in text and "Shared" in text  # admins see /Audit Logs
    assert "3 folders, 0 files" in text
    links = re.findall(r'href="(/files/[^"]+)"', text)
    assert f"/files/folder/{ref(mine, '/docs')}" in links and "/files/folder/shared" in links
    assert not [link for link in links if "docs" in link]


def test_a_folder_shows_breadcrumbs_sizes_and_its_entries(signed_in, mine):
    text = body(signed_in.get(f"/files/folder/{ref(mine, '/docs')}"))
    assert 'aria-current="page">docs</li>' in text and "My files" in text
    assert "report.txt" in text and "10.0 KiB" in text and "1 folder, 1 file" in text
    assert f"/files/item/{ref(mine, '/docs/report.txt')}/download" in text


def test_an_empty_folder_says_so(signed_in, mine):
    assert "This folder is empty." in body(signed_in.get(f"/files/folder/{ref(mine, '/docs/sub')}"))


def test_sorting_by_size_and_date_and_pages_of_fifty(signed_in, mine):
    for i in range(55):
        mine.make_dir(f"/docs/sub/f{i:02d}")
    upload(mine, "/docs/sub/big.bin", b"x" * 5000)
    upload(mine, "/docs/sub/small.bin", b"x")
    sub = ref(mine, "/docs/sub")
    first = body(signed_in.get(f"/files/folder/{sub}"))
    assert "Page 1 of 2" in first and first.count('class="entry"') == 50
    second = body(signed_in.get(f"/files/folder/{sub}?page=2"))
    assert second.count('class="entry"') == 7 and "f54" in second and "f00" not in second
    by_size = body(signed_in.get(f"/files/folder/{sub}?sort=size&order=desc&page=2"))
    assert by_size.index("big.bin") < by_size.index("small.bin")
    by_size_up = body(signed_in.get(f"/files/folder/{sub}?sort=size&order=asc&page=2"))
    assert by_size_up.index("small.bin") < by_size_up.index("big.bin")
    by_date = body(signed_in.get(f"/files/folder/{sub}?sort=mtime&order=desc&page=2"))
    assert by_date.index("small.bin") < by_date.index("big.bin")
    assert signed_in.get(f"/files/folder/{sub}?sort=nonsense&page=-3").status_code == 200


def test_a_hostile_name_shows_as_text(signed_in, mine):
    upload(mine, f"/docs/{XSS}", b"x")
    for url in (f"/files/folder/{ref(mine, '/docs')}", f"/files/item/{ref(mine, '/docs/' + XSS)}"):
        text = body(signed_in.get(url))
        assert "&lt;img src=x onerror=alert(1)&gt;.html" in text
        assert "<img src=x" not in text


def test_details_show_size_dates_fingerprints_uploader_and_door(signed_in, mine):
    text = body(signed_in.get(f"/files/item/{ref(mine, '/docs/report.txt')}"))
    assert hashlib.sha256(DATA).hexdigest() in text and hashlib.md5(DATA).hexdigest() in text
    assert "(10240 bytes)" in text and signed_in.account.admin_username in text
    assert re.search(r"Door</dt><dd[^>]*>web</dd>", text)


def test_not_signed_in_every_page_sends_to_sign_in(portal_app, mine):
    client, report = portal_app.test_client(), ref(mine, "/docs/report.txt")
    for url in ("/files/", f"/files/item/{report}", f"/files/item/{report}/download",
                f"/files/item/{report}/delete", f"/files/item/{report}/move"):
        response = client.get(url)
        assert response.status_code == 302 and response.headers["Location"].startswith("/signin")
    assert client.post(f"/files/item/{report}/delete", data={}).status_code in (302, 400)
    assert mine.stat("/docs/report.txt").id == report


def test_another_accounts_refs_are_not_found_like_missing_ones(signed_in, mine, theirs, services):
    plan, secret = ref(theirs, "/secret/plan.txt"), ref(theirs, "/secret")
    for url in (f"/files/folder/{secret}", f"/files/item/{plan}", f"/files/item/{plan}/download",
                f"/files/item/{plan}/rename", f"/files/item/{plan}/delete", f"/files/item/{plan}/move",
                "/files/folder/n9223372036854775807", "/files/folder/nonsense"):
        response = signed_in.get(url)
        assert response.status_code == 404, url
        assert "their plan" not in body(response) and "plan.txt" not in body(response)
    posts = [(f"/files/item/{plan}/delete", {}), (f"/files/item/{plan}/rename", {"name": "mine.txt"}),
             (f"/files/folder/{secret}/new", {"name": "x"}),
             (f"/files/item/{plan}/move", {"target": "root"}),
             (f"/files/item/{ref(mine, '/docs/report.txt')}/move", {"target": secret})]
    for url, data in posts:
        assert signed_in.submit(url, data, form_page="/files/").status_code == 404, url
    assert [e.name for e in theirs.list_dir("/secret")] == ["plan.txt"]
    assert b"".join(theirs.open_read("/secret/plan.txt")) == b"their plan"
    assert mine.stat("/docs/report.txt").size == len(DATA)


# -- new folder, rename, move, delete ---------------------------------------------------------

def test_new_folder(signed_in, mine, services):
    docs = ref(mine, "/docs")
    response = signed_in.submit(f"/files/folder/{docs}/new", {"name": "2026 ✓"}, form_page="/files/")
    assert response.status_code == 302 and response.headers["Location"] == f"/files/folder/{docs}"
    assert mine.stat("/docs/2026 ✓").is_folder
    assert "Folder created." in body(signed_in.get(response.headers["Location"]))
    assert events(services, mine.me.account_id, "mkdir")[0].protocol == "web"


@pytest.mark.parametrize("name, status, message", [
    ("", 400, "Enter a name."), ("a/b", 400, "cannot contain"), ("bad\u202ename", 400, "formatting"),
    ("sub", 409, "already exists"),
])
def test_new_folder_refuses_bad_names_and_says_why(signed_in, mine, name, status, message):
    docs = ref(mine, "/docs")
    response = signed_in.submit(f"/files/folder/{docs}/new", {"name": name}, form_page="/files/")
    assert response.status_code == status and message in body(response)
    assert sorted(e.name for e in mine.list_dir("/docs")) == ["report.txt", "sub"]


def test_every_change_needs_the_csrf_token(signed_in, mine):
    report, docs = ref(mine, "/docs/report.txt"), ref(mine, "/docs")
    for url, data in ((f"/files/folder/{docs}/new", {"name": "x"}), (f"/files/item/{report}/rename", {"name": "y"}),
                      (f"/files/item/{report}/move", {"target": "root"}), (f"/files/item/{report}/delete", {})):
        response = signed_in.post(url, data=data)
        assert response.status_code == 400 and "This form has expired" in body(response), url
    assert sorted(e.name for e in mine.list_dir("/docs")) == ["report.txt", "sub"]


def test_the_audit_logs_are_read_only(signed_in, mine):
    logs = ref(mine, "/Audit Logs")
    assert signed_in.submit(f"/files/folder/{logs}/new", {"name": "x"}, form_page="/files/").status_code == 403
    assert "Upload files" not in body(signed_in.get(f"/files/folder/{logs}"))


def test_rename(signed_in, mine, services):
    report = ref(mine, "/docs/report.txt")
    form = signed_in.get(f"/files/item/{report}/rename")
    assert form.status_code == 200 and 'value="report.txt"' in body(form)
    response = signed_in.submit(f"/files/item/{report}/rename", {"name": "final.txt"}, form_page="/files/")
    assert response.status_code == 302 and response.headers["Location"] == f"/files/folder/{ref(mine, '/docs')}"
    assert mine.stat("/docs/final.txt").id == report
    assert events(services, mine.me.account_id, "rename")[0].protocol == "web"


@pytest.mark.parametrize("name, status", [("", 400), ("x\x07", 400), ("sub", 409)])
def test_rename_refuses_bad_and_taken_names(signed_in, mine, name, status):
    report = ref(mine, "/docs/report.txt")
    assert signed_in.submit(f"/files/item/{report}/rename", {"name": name}, form_page="/files/").status_code == status
    assert mine.stat("/docs/report.txt").id == report


def test_move_chooses_a_folder_and_moves_there(signed_in, mine):
    report, sub = ref(mine, "/docs/report.txt"), ref(mine, "/docs/sub")
    chooser = body(signed_in.get(f"/files/item/{report}/move?at={ref(mine, '/docs')}"))
    assert f"/files/item/{report}/move?at={sub}" in chooser
    response = signed_in.submit(f"/files/item/{report}/move", {"target": sub}, form_page="/files/")
    assert response.status_code == 302 and response.headers["Location"] == f"/files/folder/{sub}"
    assert mine.stat("/docs/sub/report.txt").id == report


def test_move_refuses_a_missing_target_and_a_clash(signed_in, mine):
    report, sub = ref(mine, "/docs/report.txt"), ref(mine, "/docs/sub")
    assert signed_in.submit(f"/files/item/{report}/move", {"target": ""}, form_page="/files/").status_code == 400
    upload(mine, "/docs/sub/report.txt", b"other")
    assert signed_in.submit(f"/files/item/{report}/move", {"target": sub}, form_page="/files/").status_code == 409
    assert mine.stat("/docs/report.txt").id == report


def test_delete_asks_first_then_deletes_permanently(signed_in, mine, services):
    report = ref(mine, "/docs/report.txt")
    confirm = body(signed_in.get(f"/files/item/{report}/delete"))
    assert "permanent" in confirm and "report.txt" in confirm
    assert mine.stat("/docs/report.txt")  # asking changes nothing
    response = signed_in.submit(f"/files/item/{report}/delete", {}, form_page="/files/")
    assert response.status_code == 302 and response.headers["Location"] == f"/files/folder/{ref(mine, '/docs')}"
    assert [e.name for e in mine.list_dir("/docs")] == ["sub"]
    assert events(services, mine.me.account_id, "delete")[0].protocol == "web"


def test_a_read_only_share_refuses_changes(signed_in, mine, services, make_user):
    account = signed_in.account
    owner_id, owner_name = make_user(account)
    owner_ws = read_only_share(services, account, owner_id, owner_name, account.admin_username)
    shared = f"/Shared/{owner_name}/shared-in"
    folder, keep = ref(mine, shared), ref(mine, shared + "/keep.txt")
    assert "keep.txt" in body(signed_in.get(f"/files/folder/{folder}"))
    assert signed_in.submit(f"/files/folder/{folder}/new", {"name": "x"}, form_page="/files/").status_code == 403
    assert signed_in.submit(f"/files/item/{keep}/delete", {}, form_page="/files/").status_code == 403
    assert signed_in.submit(f"/files/item/{keep}/rename", {"name": "y"}, form_page="/files/").status_code == 403
    assert signed_in.get(f"/files/item/{keep}/download").get_data() == b"keep"
    assert [e.name for e in owner_ws.list_dir("/shared-in")] == ["keep.txt"]


# -- downloads --------------------------------------------------------------------------------

def test_a_download_is_an_attachment_with_every_byte(signed_in, mine, services):
    response = signed_in.get(f"/files/item/{ref(mine, '/docs/report.txt')}/download")
    assert response.status_code == 200 and response.get_data() == DATA
    headers = response.headers
    assert headers["Content-Type"] == "application/octet-stream" and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Disposition"] == "attachment; filename=\"report.txt\"; filename*=UTF-8''report.txt"
    assert headers["Accept-Ranges"] == "bytes" and headers["Content-Length"] == str(len(DATA))
    [event] = events(services, mine.me.account_id, "download")
    assert event.protocol == "web" and event.status == "ok" and event.bytes == len(DATA)


@pytest.mark.parametrize("name, fallback, encoded", [
    ('say "hi".txt', 'say _hi_.txt', "say%20%22hi%22.txt"),
    ("a;b=c.txt", "a_b=c.txt", "a%3Bb%3Dc.txt"),
    ("Übersicht – 2026.pdf", "Ubersicht  2026.pdf", "%C3%9Cbersicht%20%E2%80%93%202026.pdf"),
    ("日本.txt", ".txt", "%E6%97%A5%E6%9C%AC.txt"),
    ("back\\slash%41.txt", "back_slash_41.txt", "back%5Cslash%2541.txt"),
    ("line\r\nbreak", "line__break", "line%0D%0Abreak"),
])
def test_content_disposition_is_safe_for_any_name(name, fallback, encoded):
    assert content_disposition(name) == f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def test_a_hostile_name_downloads_with_a_safe_header(signed_in, mine):
    upload(mine, f"/docs/{XSS}", b"x")
    response = signed_in.get(f"/files/item/{ref(mine, '/docs/' + XSS)}/download")
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"<img src=x onerror=alert(1)>.html\"; "
        "filename*=UTF-8''%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.html")
    assert response.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize("header, start, stop", [
    ("bytes=0-99", 0, 100), ("bytes=5000-5099", 5000, 5100), ("bytes=-300", 10240 - 300, 10240),
    ("bytes=10000-", 10000, 10240), ("bytes=10200-99999", 10200, 10240),
])
def test_range_requests_send_the_part_asked_for(signed_in, mine, header, start, stop):
    response = signed_in.get(f"/files/item/{ref(mine, '/docs/report.txt')}/download", headers={"Range": header})
    assert response.status_code == 206 and response.get_data() == DATA[start:stop]
    assert response.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(DATA)}"
    assert response.headers["Content-Length"] == str(stop - start)


def test_a_range_past_the_end_is_unsatisfiable(signed_in, mine):
    response = signed_in.get(f"/files/item/{ref(mine, '/docs/report.txt')}/download",
                             headers={"Range": "bytes=20000-20100"})
    assert response.status_code == 416 and response.headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_if_range_for_another_version_sends_the_whole_file(signed_in, mine):
    url = f"/files/item/{ref(mine, '/docs/report.txt')}/download"
    etag = signed_in.get(url).headers["ETag"]
    assert signed_in.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}).status_code == 206
    upload(mine, "/docs/report.txt", b"replaced")
    response = signed_in.get(url, headers={"Range": "bytes=0-3", "If-Range": etag})
    assert response.status_code == 200 and response.get_data() == b"replaced"


def test_a_folder_cannot_be_downloaded(signed_in, mine):
    assert signed_in.get(f"/files/item/{ref(mine, '/docs')}/download").status_code == 409


def test_a_whole_download_that_fails_its_fingerprint_check_ends_in_an_error(signed_in, mine, services):
    report = ref(mine, "/docs/report.txt")
    with services.db.session() as session:
        session.execute(update(FileVersion).where(FileVersion.id == mine.stat("/docs/report.txt").version)
                        .values(sha256=b"\x00" * 32))
    # The check ends the body's stream with an error, which the server turns into a cut connection.
    with pytest.raises(IntegrityFailure):
        signed_in.get(f"/files/item/{report}/download").get_data()
    assert events(services, mine.me.account_id, "download")[0].status == "failed"
