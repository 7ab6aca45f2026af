"""Uploads: the plain form and the script's JSON reply, checks made before the body is read,
a cut body leaving nothing visible, and a 20 MiB upload leaving no plaintext behind."""
from __future__ import annotations

import hashlib
import http.client
import io
import logging
import re
import secrets
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.factories import wait_for
from tests.plaintext import (
    MiB,
    Scanner,
    content,
    files_under,
    leaking_files,
    needles_for,
)
from tests.portal.workspaces import admin_ws, body, events, read_only_share, ref

BOUNDARY = "sealdroptestboundary"


@pytest.fixture
def mine(services, signed_in):
    services.store.ensure_bucket()
    ws = admin_ws(services, signed_in.account)
    ws.make_dir("/in")
    return ws


def token(client) -> str:
    return client.csrf_token("/files/")


def post_files(client, folder_ref, files, *, via="header", json=True, token_value=None, **kwargs):
    value = token(client) if token_value is None else token_value
    url = f"/files/folder/{folder_ref}/upload"
    headers = {"Accept": "application/json"} if json else {}
    if via == "header":
        headers["X-CSRFToken"] = value
    elif via == "query":
        url += f"?csrf_token={value}"
    data = {"files": [(io.BytesIO(data), name) for name, data in files]}
    return client.post(url, data=data, headers=headers, content_type="multipart/form-data", **kwargs)


class Untouchable(io.RawIOBase):
    """A request body that records whether anyone read it."""

    read_from, position = False, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):  # the test client measures the body (1000 bytes) by seeking
        self.position = 1000 if whence == 2 else offset
        return self.position

    def tell(self):
        return self.position

    def readinto(self, buffer):
        self.read_from = True
        return 0


def post_untouchable(client, url, headers=None):
    stream = Untouchable()
    response = client.post(url, input_stream=stream, headers=headers or {},
                           content_type=f"multipart/form-data; boundary={BOUNDARY}")
    return response, stream.read_from


# -- what is stored and what the reply says --------------------------------------------------

def test_the_plain_form_uploads_and_shows_the_fingerprints(signed_in, mine, services):
    data = secrets.token_bytes(300_000)
    response = post_files(signed_in, ref(mine, "/in"), [("plain.bin", data)], via="query", json=False)
    text = body(response)
    assert response.status_code == 200
    assert hashlib.sha256(data).hexdigest() in text and hashlib.md5(data).hexdigest() in text
    assert b"".join(mine.open_read("/in/plain.bin")) == data
    details = mine.details(ref(mine, "/in/plain.bin"))
    assert details.door == "web" and details.uploaded_by == signed_in.account.admin_username
    [event] = events(services, mine.me.account_id, "upload")
    assert event.protocol == "web" and event.status == "ok" and event.bytes == len(data)


def test_the_script_uploads_many_files_and_gets_json(signed_in, mine):
    files = [("a.txt", b"alpha"), ("b ü.txt", b"beta" * 1000), ("empty", b"")]
    response = post_files(signed_in, ref(mine, "/in"), files)
    assert response.status_code == 200
    reply = {f["name"]: f for f in response.get_json()["files"]}
    for name, data in files:
        assert reply[name]["ok"] and reply[name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert reply[name]["md5"] == hashlib.md5(data).hexdigest() and reply[name]["size"] == len(data)
        assert b"".join(mine.open_read(f"/in/{name}")) == data
        assert reply[name]["id"] == ref(mine, f"/in/{name}")


def test_a_name_clash_replaces_the_file(signed_in, mine):
    folder = ref(mine, "/in")
    assert post_files(signed_in, folder, [("same.txt", b"first")]).status_code == 200
    assert post_files(signed_in, folder, [("same.txt", b"second")]).status_code == 200
    assert [e.name for e in mine.list_dir("/in")] == ["same.txt"]
    assert b"".join(mine.open_read("/in/same.txt")) == b"second"


@pytest.mark.parametrize("name, message", [("a/b.txt", "cannot contain"), ("bad\u202e.txt", "formatting"),
                                           ("..", "cannot be")])
def test_a_bad_name_is_refused_and_the_other_files_kept(signed_in, mine, name, message):
    response = post_files(signed_in, ref(mine, "/in"), [("good.txt", b"good"), (name, b"bad")])
    assert response.status_code == 400
    reply = response.get_json()["files"]
    assert reply[0]["ok"] and not reply[1]["ok"] and message in reply[1]["error"]
    assert [e.name for e in mine.list_dir("/in")] == ["good.txt"]


def test_a_form_without_a_file_is_a_bad_request(signed_in, mine):
    response = post_files(signed_in, ref(mine, "/in"), [("", b"")], json=False)
    assert response.status_code == 400 and mine.list_dir("/in") == []


def test_a_hostile_name_is_escaped_on_the_result_page(signed_in, mine):
    name = "<img src=x onerror=alert(1)>.html"
    text = body(post_files(signed_in, ref(mine, "/in"), [(name, b"x")], via="query", json=False))
    assert "&lt;img src=x onerror=alert(1)&gt;.html" in text and "<img src=x" not in text


# -- refused before a byte of the body is read -------------------------------------------------

def test_without_the_token_the_body_is_never_read(signed_in, mine):
    url = f"/files/folder/{ref(mine, '/in')}/upload"
    for headers in ({}, {"X-CSRFToken": "forged"}):
        response, read = post_untouchable(signed_in, url, headers)
        assert response.status_code == 400 and "This form has expired" in body(response) and not read


def test_the_token_of_another_session_is_refused(signed_in, mine, portal_app, make_account):
    other = portal_app.test_client()
    stranger = make_account()
    other.sign_in(stranger.admin_username, stranger.password)
    response = post_files(signed_in, ref(mine, "/in"), [("x.txt", b"x")], token_value=token(other))
    assert response.status_code == 400 and mine.list_dir("/in") == []


def test_not_signed_in_the_body_is_never_read(portal_app, mine):
    client = portal_app.test_client()
    response, read = post_untouchable(client, f"/files/folder/{ref(mine, '/in')}/upload?csrf_token=x")
    assert response.status_code == 302 and response.headers["Location"].startswith("/signin") and not read


def test_where_writing_is_not_allowed_the_body_is_never_read(signed_in, mine, services, make_user):
    account = signed_in.account
    owner_id, owner_name = make_user(account)
    owner_ws = read_only_share(services, account, owner_id, owner_name, account.admin_username)
    folders = [ref(mine, "/Audit Logs"), "shared", ref(mine, f"/Shared/{owner_name}/shared-in")]
    for folder in folders:
        response, read = post_untouchable(signed_in, f"/files/folder/{folder}/upload",
                                          {"X-CSRFToken": token(signed_in)})
        assert response.status_code == 403 and not read, folder
    assert [e.name for e in owner_ws.list_dir("/shared-in")] == ["keep.txt"]
    refusals = events(services, account.id, "denied")
    assert len(refusals) == 3 and {e.protocol for e in refusals} == {"web"}
    _, read = post_untouchable(signed_in, f"/files/folder/{ref(mine, '/in')}/upload",
                               {"X-CSRFToken": token(signed_in)})
    assert read  # where writing is allowed, the same body is read: the probe sees reads


def test_another_accounts_folder_is_not_found(signed_in, services, make_account):
    theirs = admin_ws(services, make_account())
    theirs.make_dir("/inbox")
    response, read = post_untouchable(signed_in, f"/files/folder/{ref(theirs, '/inbox')}/upload",
                                      {"X-CSRFToken": token(signed_in)})
    assert response.status_code == 404 and not read
    assert theirs.list_dir("/inbox") == []


# -- over a real server: a cut body, and no plaintext anywhere ---------------------------------

@pytest.fixture
def server(portal_app):
    """The portal on a real Werkzeug server in a thread, on 127.0.0.1, stopped afterwards."""
    httpd = make_server("127.0.0.1", 0, portal_app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_port
    httpd.shutdown()
    thread.join(10)


def cookie_header(client) -> str:
    cookie = client.get_cookie("sealdrop_session", domain="portal.test")
    return f"sealdrop_session={cookie.value}"


def part_head(name: str) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()


def request_head(port: int, folder: str, client, length: int) -> bytes:
    return (f"POST /files/folder/{folder}/upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Cookie: {cookie_header(client)}\r\nX-CSRFToken: {token(client)}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n").encode()


def test_a_cut_body_leaves_nothing_half_visible(signed_in, mine, server, services):
    whole = part_head("whole.txt") + b"all of it\r\n"
    cut = part_head("cut.bin") + secrets.token_bytes(200_000)
    promised = len(whole) + len(cut) + 100_000 + len(f"\r\n--{BOUNDARY}--\r\n")
    with socket.create_connection(("127.0.0.1", server), timeout=20) as sock:
        sock.sendall(request_head(server, ref(mine, "/in"), signed_in, promised) + whole + cut)
        sock.shutdown(socket.SHUT_WR)  # the client goes away 100 000 bytes early
        sock.recv(65536)

    def settled():
        return any(e.status == "failed" for e in events(services, mine.me.account_id, "upload"))
    wait_for(settled, timeout=30)
    assert [e.name for e in mine.list_dir("/in")] == ["whole.txt"]  # the part that ended is whole
    assert b"".join(mine.open_read("/in/whole.txt")) == b"all of it"
    assert not [p for p in files_under(services.settings.spool_dir) if "cut" in p.name]


def test_a_20_mib_upload_leaves_no_plaintext_in_temp_folders_the_spool_or_logs(signed_in, mine, server,
                                                                                 services, caplog):
    caplog.set_level(logging.DEBUG)
    started = time.time() - 1
    marker = "WEBLEAK" + secrets.token_hex(8)
    scanner = Scanner(needles_for(marker))
    total, name = 20 * MiB, f"{marker} report.bin"
    head, tail = part_head(name), f"\r\n--{BOUNDARY}--\r\n".encode()
    digest = hashlib.sha256()

    def body_blocks():
        yield head
        for block in content(marker.encode(), total):
            digest.update(block)
            yield block
        yield tail
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=120)
    connection.request("POST", f"/files/folder/{ref(mine, '/in')}/upload", body=body_blocks(), headers={
        "Cookie": cookie_header(signed_in), "X-CSRFToken": token(signed_in), "Accept": "application/json",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(len(head) + total + len(tail))})
    reply = connection.getresponse()
    answer = reply.read()
    connection.close()
    assert reply.status == 200, answer[:500]
    assert re.search(rb'"sha256":\s*"' + digest.hexdigest().encode(), answer)

    temp_roots = {Path(tempfile.gettempdir()), Path("/var/tmp"), Path("/dev/shm")}
    assert leaking_files(scanner, files_under(services.settings.spool_dir)) == []
    assert leaking_files(scanner, (p for root in temp_roots if root.exists()
                                   for p in files_under(root, changed_since=started))) == []
    assert scanner.scanned >= total  # the spool's ciphertext was read
    assert caplog.records, "the scan of the logs read nothing"
    assert not scanner.hits(record.getMessage().encode() for record in caplog.records), "plaintext in the logs"
    # The scanner finds the marker where it is: planted in a temp file, and in the content itself.
    with tempfile.NamedTemporaryFile(dir=tempfile.gettempdir(), prefix="planted") as planted:
        planted.write(b"x" * 5000 + marker.encode("utf-16-le") + b"y" * 5000)
        planted.flush()
        assert leaking_files(scanner, files_under(Path(tempfile.gettempdir()), changed_since=started)) \
            == [planted.name]
    assert scanner.hits(content(marker.encode(), MiB))
    assert b"".join(mine.open_read(f"/in/{name}", 0, 64)).startswith(marker.encode())
