"""The link pages through the Flask client (real Postgres, Redis, S3): one page for every dead
link, the password step and its limits, what read, read/write and request links allow, no way
out of the folder, uploads that never overwrite, one link_access event per visit, the download
limit, and the contact's invitation mail opening the folder."""
from __future__ import annotations

import io
import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from common import accounts, refs, sharing
from common.errors import InvalidInput
from common.jobs.invitations import send_share_invitation
from common.models import Contact, Node, Share, ShareLink
from tests.links import events, make_link, owner_workspace, set_policy, shared_projects

DEAD = "This link does not work"
CSRF = re.compile(r'data-csrf="([^"]+)"')


def page(client, url, **kwargs):
    response = client.get(url, **kwargs)
    return response.status_code, response.get_data(as_text=True)


def entry_ref(services, account, path: str) -> str:
    return owner_workspace(services, account).stat(path).id


def upload(client, token: str, ref: str, name: str, data: bytes, csrf: str | None = None):
    csrf = csrf or CSRF.search(client.get(f"/s/{token}").get_data(as_text=True)).group(1)
    return client.post(f"/s/{token}/folder/{ref}/upload", data={"files": (io.BytesIO(data), name)},
                       headers={"X-CSRFToken": csrf, "Accept": "application/json"})


def dead_page(client, url):
    status, body = page(client, url)
    assert status == 404 and DEAD in body
    return body


@pytest.mark.parametrize("kill", ["guessed", "expired", "revoked", "spent", "folder_deleted", "contact_deleted"])
def test_every_dead_link_gets_the_same_page(client, services, account, kill):
    share_id = shared_projects(services, account, "read")
    link_id, token = make_link(services, account, share_id, max_downloads=1)
    assert page(client, f"/s/{token}")[0] == 200
    with services.db.session() as session:
        link = session.get(ShareLink, link_id)
        if kill == "expired":
            link.expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)
        elif kill == "revoked":
            sharing.revoke_link(session, services.keyring, link_id,
                                actor=accounts.Actor(protocol="web", user_id=account.admin_id))
        elif kill == "spent":
            sharing.count_download(session, link_id)
        elif kill == "contact_deleted":
            session.delete(session.get(Contact, session.get(Share, share_id).grantee_contact_id))
    if kill == "folder_deleted":
        owner_workspace(services, account).remove("/projects")
    url = f"/s/{'x' * 43}" if kill == "guessed" else f"/s/{token}"
    fresh = client.application.test_client()
    reference = dead_page(fresh, f"/s/{'y' * 43}")
    # The same body for every reason, and the next request already refused (revocation is immediate).
    assert dead_page(client, url) == reference
    assert dead_page(client, url + f"/folder/{refs.ROOT}") == reference


def test_a_password_link_asks_only_for_the_password_and_limits_wrong_ones(client, services, account):
    share_id = shared_projects(services, account, "read")
    link_id, token = make_link(services, account, share_id, password="open-sesame-42")
    status, body = page(client, f"/s/{token}")
    assert status == 200 and 'name="password"' in body and 'name="username"' not in body and "plan.txt" not in body
    assert client.get(f"/s/{token}/folder/{refs.ROOT}").status_code == 302  # back to the password step
    assert client.post(f"/s/{token}", data={"password": "open-sesame-42"}).status_code == 400  # no CSRF token
    for _ in range(sharing.LINK_PASSWORD_TRIES_PER_LINK):
        assert client.submit(f"/s/{token}", {"password": "wrong"}).status_code == 401
    assert client.submit(f"/s/{token}", {"password": "open-sesame-42"}).status_code == 401  # over the limit
    other = client.application.test_client()
    services.redis.delete(f"link-pw:link:{link_id}")  # the link's window ends
    assert other.submit(f"/s/{token}", {"password": "open-sesame-42"}).status_code == 302
    status, body = page(other, f"/s/{token}")
    assert status == 200 and "plan.txt" in body
    refused = [e for e in events(services, account.id, "denied") if e[0] == "link"]
    assert len(refused) >= sharing.LINK_PASSWORD_TRIES_PER_LINK


def test_a_required_password_missing_means_no_link(services, account):
    share_id = shared_projects(services, account, "read")
    set_policy(services, account.id, link_password_required=True)
    with pytest.raises(InvalidInput):
        make_link(services, account, share_id)


def test_a_read_link_browses_and_downloads_but_cannot_upload(client, services, account):
    share_id = shared_projects(services, account, "read")
    link_id, token = make_link(services, account, share_id)
    status, body = page(client, f"/s/{token}")
    assert status == 200 and "plan.txt" in body and "drafts" in body and "secret" not in body
    drafts = entry_ref(services, account, "/projects/drafts")
    assert "old.txt" in page(client, f"/s/{token}/folder/{drafts}")[1]
    plan = entry_ref(services, account, "/projects/plan.txt")
    response = client.get(f"/s/{token}/item/{plan}/download")
    assert response.status_code == 200 and response.data == b"the plan"
    assert "attachment" in response.headers["Content-Disposition"]
    assert "data-upload-zone" not in body
    csrf = client.csrf_token("/signin")  # a valid token of this session: the refusal is the link's
    assert upload(client, token, refs.ROOT, "x.txt", b"x", csrf=csrf).status_code == 403
    assert client.post(f"/s/{token}/folder/{refs.ROOT}/new", data={"name": "n", "csrf_token": csrf}
                       ).status_code == 403
    assert [e.name for e in owner_workspace(services, account).list_dir("/projects")] == ["drafts", "plan.txt"]
    assert ("link", "ok", f"link {link_id}", client.environ_base["REMOTE_ADDR"]) in events(
        services, account.id, "download")


def test_no_way_out_of_the_folder(client, services, account, make_account):
    share_id = shared_projects(services, account, "read")
    _, token = make_link(services, account, share_id)
    secret = entry_ref(services, account, "/private/secret.txt")
    private = entry_ref(services, account, "/private")
    other = make_account()
    services.store.ensure_bucket()
    with services.db.session() as session:
        foreign = session.scalars(select(Node.id).where(Node.account_id == other.id)).first()
    for url in (f"/s/{token}/item/{secret}/download", f"/s/{token}/folder/{private}",
                f"/s/{token}/folder/{refs.SHARED}", f"/s/{token}/folder/n{foreign}",
                f"/s/{token}/folder/..", f"/s/{token}/../../files/folder/{private}",
                f"/s/{token}/item/%2e%2e%2fprivate%2fsecret.txt/download"):
        status, body = page(client, url, follow_redirects=True)
        assert status in (302, 400, 404) and "not shared" not in body and "secret.txt" not in body, url


def test_a_request_link_takes_files_and_shows_nothing(client, services, account):
    share_id = shared_projects(services, account, "request")
    _, token = make_link(services, account, share_id)
    status, body = page(client, f"/s/{token}")
    assert status == 200 and "data-upload-zone" in body and "plan.txt" not in body and "drafts" not in body
    plan = entry_ref(services, account, "/projects/plan.txt")
    drafts = entry_ref(services, account, "/projects/drafts")
    assert client.get(f"/s/{token}/folder/{refs.ROOT}").status_code == 403
    # What is inside answers as an id from elsewhere does: nothing tells it exists.
    assert client.get(f"/s/{token}/item/{plan}/download").status_code == 404
    assert client.get(f"/s/{token}/folder/{drafts}").status_code == 404
    sent = upload(client, token, refs.ROOT, "plan.txt", b"from the visitor")
    assert sent.status_code == 200 and sent.json["files"][0]["name"] == "plan.txt"
    assert "(2)" not in sent.get_data(as_text=True)  # nothing says a plan.txt was there
    owner = owner_workspace(services, account)
    assert b"".join(owner.open_read("/projects/plan.txt")) == b"the plan"
    assert b"".join(owner.open_read("/projects/plan (2).txt")) == b"from the visitor"
    assert upload(client, token, drafts, "x.txt", b"x").status_code == 404
    with services.db.session() as session:
        assert session.get(Share, share_id).arrivals_pending == 1


def test_a_write_link_upload_clashing_with_a_file_keeps_both_and_makes_folders(client, services, account):
    share_id = shared_projects(services, account, "write")
    link_id, token = make_link(services, account, share_id)
    sent = upload(client, token, refs.ROOT, "plan.txt", b"new plan")
    assert sent.status_code == 200 and "already" not in sent.get_data(as_text=True)
    owner = owner_workspace(services, account)
    assert b"".join(owner.open_read("/projects/plan.txt")) == b"the plan"
    assert b"".join(owner.open_read("/projects/plan (2).txt")) == b"new plan"
    assert client.submit(f"/s/{token}/folder/{refs.ROOT}/new", {"name": "inbox"},
                         form_page=f"/s/{token}").status_code == 302
    assert owner.stat("/projects/inbox").is_folder
    assert ("link", "ok", f"link {link_id}") in [e[:3] for e in events(services, account.id, "upload")]


def test_every_visit_is_one_link_access_event(client, services, account):
    share_id = shared_projects(services, account, "read")
    link_id, token = make_link(services, account, share_id)
    plan = entry_ref(services, account, "/projects/plan.txt")
    for url in (f"/s/{token}", f"/s/{token}/folder/{refs.ROOT}", f"/s/{token}/item/{plan}/download", f"/s/{token}"):
        assert client.get(url).status_code == 200
    second = client.application.test_client()
    second.environ_base["REMOTE_ADDR"] = "192.0.2.44"
    assert second.get(f"/s/{token}").status_code == 200
    visits = [e for e in events(services, account.id, "link_access") if e[2] == f"link {link_id}"]
    assert [(e[0], e[1]) for e in visits] == [("link", "ok")] * 2
    assert visits[1][3] == "192.0.2.44"


def test_the_download_limit_counts_whole_downloads_not_ranges(client, services, account):
    share_id = shared_projects(services, account, "read")
    link_id, token = make_link(services, account, share_id, max_downloads=2)
    plan = entry_ref(services, account, "/projects/plan.txt")
    url = f"/s/{token}/item/{plan}/download"
    assert client.get(url, headers={"Range": "bytes=0-3"}).data == b"the "  # counted: the first byte
    assert client.get(url, headers={"Range": "bytes=4-"}).data == b"plan"  # the rest: not counted
    with services.db.session() as session:
        assert session.get(ShareLink, link_id).use_count == 1
    assert client.get(url).data == b"the plan"  # the second, and last, whole download
    assert client.get(url, headers={"Range": "bytes=4-"}).data == b"plan"  # its resume still works
    dead_page(client, url)  # a third whole download
    dead_page(client.application.test_client(), f"/s/{token}")


def test_a_range_that_skips_the_first_byte_still_counts(client, services, account):
    share_id = shared_projects(services, account, "read")
    link_id, token = make_link(services, account, share_id, max_downloads=1)
    plan = entry_ref(services, account, "/projects/plan.txt")
    url = f"/s/{token}/item/{plan}/download"
    assert client.get(url, headers={"Range": "bytes=1-"}).data == b"he plan"  # counted: a new download
    with services.db.session() as session:
        assert session.get(ShareLink, link_id).use_count == 1
    assert client.get(url, headers={"Range": "bytes=4-"}).data == b"plan"  # its resume is free
    other = client.application.test_client()  # another visitor: no session of its own counted this file
    other.environ_base["REMOTE_ADDR"] = "192.0.2.45"
    dead_page(other, f"/s/{token}")


def test_the_contacts_mail_link_opens_the_folder(client, services, account, mailer, smtp_server):
    share_id = shared_projects(services, account, "read", email="partner@example.test")
    assert send_share_invitation(mailer, share_id)
    [(to, message)] = [m for m in smtp_server.messages if m[0] == ["partner@example.test"]]
    link = re.search(r"https?://\S+/s/([A-Za-z0-9_-]{43,})", message.get_body(("plain",)).get_content())
    assert link.group(0).startswith(mailer.settings.public_url)
    status, body = page(client, f"/s/{link.group(1)}")
    assert status == 200 and "plan.txt" in body
