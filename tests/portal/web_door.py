"""The web door for tests: the portal app under a browser-like client, and the parity door.

The parity door drives the portal only as a person would: it finds a path's ref by following
the links of the folder pages by name, and reads outcomes from HTTP status codes.
"""
from __future__ import annotations

import html
import io
import re

import pytest

from portal import create_app
from tests.doors import DoorError
from tests.portal.conftest import PortalClient

# A row's link on a folder page: to a folder or to a file's details, then the escaped name.
ENTRY_LINK = re.compile(r'<a class="entry" href="/files/(folder|item)/([a-z0-9-]+)">(?:<span class="folder-icon" aria-hidden="true"></span>)?([^<]*)</a>')
NEXT_PAGE = re.compile(r'<li class="page-item"><a class="page-link" href="([^"]+)">Next</a>')
SIZE = re.compile(r"\((\d+) bytes\)")
KINDS = {400: "invalid", 403: "denied", 404: "not_found", 409: "exists", 501: "unsupported"}


@pytest.fixture(scope="session")
def web_app(settings, migrated):
    app = create_app(settings)
    app.test_client_class = PortalClient
    yield app
    app.extensions["sealdrop"].close()


def web_door(request, services, account) -> WebDoor:
    client = request.getfixturevalue("web_app").test_client()
    response = client.sign_in(account.admin_username, account.password)
    assert response.status_code == 302, response.status_code
    return WebDoor(client)


def folder_entries(client, ref: str) -> list[tuple[str, str, str]]:
    """(kind, ref, name) of every entry of a folder, over all its pages."""
    url, found = f"/files/folder/{ref}", []
    while url:
        page = client.get(url)
        _check(page)
        text = page.get_data(as_text=True)
        found += [(kind, ref, html.unescape(name)) for kind, ref, name in ENTRY_LINK.findall(text)]
        more = NEXT_PAGE.search(text)
        url = html.unescape(more.group(1)) if more else None
    return found


def _check(response, expected=(200, 302)):
    if response.status_code not in expected:
        raise DoorError(KINDS.get(response.status_code, "failed"), str(response.status_code))
    return response


class WebDoor:
    def __init__(self, client: PortalClient):
        self.client = client

    def ref(self, path: str) -> str:
        ref = "root"
        for name in [p for p in path.split("/") if p]:
            matches = [r for _, r, n in folder_entries(self.client, ref) if n == name]
            if not matches:
                raise DoorError("not_found", name)
            ref = matches[0]
        return ref

    def _parent(self, path: str) -> tuple[str, str]:
        parent, _, name = path.rstrip("/").rpartition("/")
        return self.ref(parent or "/"), name

    def upload(self, path: str, data: bytes) -> None:
        folder, name = self._parent(path)
        token = self.client.csrf_token("/files/")
        response = self.client.post(f"/files/folder/{folder}/upload", headers={"X-CSRFToken": token},
                                    data={"files": (io.BytesIO(data), name)}, content_type="multipart/form-data")
        _check(response, (200,))

    def download(self, path: str) -> bytes:
        return _check(self.client.get(f"/files/item/{self.ref(path)}/download"), (200,)).get_data()

    def size(self, path: str) -> int:
        page = _check(self.client.get(f"/files/item/{self.ref(path)}"), (200,))
        return int(SIZE.search(page.get_data(as_text=True)).group(1))

    def list(self, path: str) -> list[str]:
        return sorted(name for _, _, name in folder_entries(self.client, self.ref(path)))

    def mkdir(self, path: str) -> None:
        folder, name = self._parent(path)
        _check(self.client.submit(f"/files/folder/{folder}/new", {"name": name}, form_page="/files/"), (302,))

    def rename(self, source: str, target: str) -> None:
        ref = self.ref(source)
        target_folder, name = self._parent(target)
        if self._parent(source)[0] != target_folder:
            _check(self.client.submit(f"/files/item/{ref}/move", {"target": target_folder}, form_page="/files/"),
                   (302,))
        if name != source.rpartition("/")[2]:
            _check(self.client.submit(f"/files/item/{ref}/rename", {"name": name}, form_page="/files/"), (302,))

    def remove(self, path: str) -> None:
        ref = self.ref(path)
        _check(self.client.submit(f"/files/item/{ref}/delete", {}, form_page="/files/"), (302,))

    def rmdir_tree(self, path: str) -> None:
        self.remove(path)
