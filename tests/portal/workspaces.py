"""What the portal's file tests share: workspaces of test accounts, refs, audit events, a share."""
from __future__ import annotations

from common import audit
from common.vfs import Workspace
from tests.factories import principal, share, upload


def admin_ws(services, account) -> Workspace:
    """The workspace of an account's admin (an AccountInfo), as the web door sees it."""
    return Workspace(services, principal(account, account.admin_id, account.admin_username, "admin"))


def body(response) -> str:
    return response.get_data(as_text=True)


def ref(ws: Workspace, path: str) -> str:
    return ws.stat(path).id


def events(services, account_id: int, action: str):
    """An account's events of one action, newest first."""
    with services.db.session() as session:
        return audit.query_events(session, services.keyring, account_id, audit.EventFilter(actions=(action,)))


def read_only_share(services, account, owner_id: int, owner_name: str, grantee_name: str) -> Workspace:
    """A user's folder /shared-in holding keep.txt, shared read-only with the grantee; the owner's workspace."""
    owner_ws = Workspace(services, principal(account, owner_id, owner_name))
    owner_ws.make_dir("/shared-in")
    upload(owner_ws, "/shared-in/keep.txt", b"keep")
    share(services, account, owner_name, "/shared-in", grantee_name, "read")
    return owner_ws
