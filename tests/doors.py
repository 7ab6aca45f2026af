"""Door clients for the parity matrix: each performs the same operations over one protocol.

Every door raises DoorError(kind) with kind one of: not_found, denied, exists, invalid,
unsupported, failed — translated from that protocol's own error replies.
"""
from __future__ import annotations

from common.errors import (
    AlreadyExists, InvalidInput, NotFound, PermissionDenied, SealdropError, Unsupported,
)
from common.vfs import Principal, Workspace


class DoorError(Exception):
    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def make_door(request, name: str, services, account):
    """The door called `name`, logged in as the account's admin."""
    if name == "workspace":
        return WorkspaceDoor.for_admin(services, account, "web")
    if name == "ftps":
        from tests.transfer.ftps_door import ftps_door
        return ftps_door(request, services, account)
    if name == "sftp":
        from tests.transfer.sftp_door import sftp_door
        return sftp_door(request, services, account)
    if name == "web":
        from tests.portal.web_door import web_door
        return web_door(request, services, account)
    raise ValueError(name)


def _kind(exc: SealdropError) -> str:
    for cls, kind in ((NotFound, "not_found"), (PermissionDenied, "denied"), (AlreadyExists, "exists"),
                      (InvalidInput, "invalid"), (Unsupported, "unsupported")):
        if isinstance(exc, cls):
            return kind
    return "failed"


class WorkspaceDoor:
    """The reference door: the Workspace called in-process."""

    def __init__(self, workspace: Workspace):
        self.ws = workspace

    @classmethod
    def for_admin(cls, services, account, protocol: str) -> "WorkspaceDoor":
        me = Principal(account.admin_id, account.id, account.admin_username, "admin", protocol, "127.0.0.1")
        return cls(Workspace(services, me))

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except SealdropError as exc:
            raise DoorError(_kind(exc), exc.message) from exc

    def upload(self, path: str, data: bytes) -> None:
        def run():
            up = self.ws.open_write(path)
            up.write(data)
            up.commit()
        self._call(run)

    def download(self, path: str) -> bytes:
        return self._call(lambda: b"".join(self.ws.open_read(path)))

    def size(self, path: str) -> int:
        return self._call(lambda: self.ws.stat(path).size)

    def list(self, path: str) -> list[str]:
        return self._call(lambda: [e.name for e in self.ws.list_dir(path)])

    def mkdir(self, path: str) -> None:
        self._call(self.ws.make_dir, path)

    def rename(self, source: str, target: str) -> None:
        self._call(self.ws.rename, source, target)

    def remove(self, path: str) -> None:
        self._call(lambda: self.ws.remove(path, recursive=False))

    def rmdir_tree(self, path: str) -> None:
        self._call(self.ws.remove, path)
