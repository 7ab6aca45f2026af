"""The pages of notifications: follow a folder from its page, my choices in the profile, the
account's defaults in settings."""
from __future__ import annotations

from sqlalchemy import select

from common.models import Account, AuditEvent, Follow, User
from tests.factories import admin_workspace, with_user


def follows(services, user_id) -> list[int]:
    with services.db.session() as session:
        return list(session.scalars(select(Follow.folder_id).where(Follow.user_id == user_id)))


def test_follow_a_folder_from_its_page_and_stop(signed_in, services, make_account):
    account = signed_in.account
    ws = admin_workspace(services, account)
    ws.make_dir("/inbox")
    ref = ws.stat("/inbox").id
    url = f"/files/folder/{ref}"
    assert "Follow this folder" in signed_in.get(url).get_data(as_text=True)
    assert signed_in.post(f"{url}/follow", data={"follow": "on"}).status_code == 400  # no CSRF token
    assert follows(services, account.admin_id) == []
    response = signed_in.submit(f"{url}/follow", {"follow": "on"}, form_page=url)
    assert response.status_code == 302 and follows(services, account.admin_id) == [int(ref[1:])]
    assert "Following: stop" in signed_in.get(url).get_data(as_text=True)
    signed_in.submit(f"{url}/follow", {"follow": "off"}, form_page=url)
    assert follows(services, account.admin_id) == []
    signed_in.submit("/files/folder/root/follow", {"follow": "on"}, form_page="/files/")
    assert follows(services, account.admin_id) == [with_user(services, account.admin_id, lambda s, u: u.home_folder_id)]

    token_page = url
    assert signed_in.submit(f"{url}/follow", {"follow": "maybe"}, form_page=token_page).status_code == 400
    assert signed_in.submit("/files/folder/shared/follow", {"follow": "on"}, form_page=token_page).status_code == 400
    other = make_account()
    other_ws = admin_workspace(services, other)
    other_ws.make_dir("/theirs")
    theirs = other_ws.stat("/theirs").id
    assert signed_in.submit(f"/files/folder/{theirs}/follow", {"follow": "on"}, form_page=token_page).status_code == 404
    assert follows(services, other.admin_id) == [] and len(follows(services, account.admin_id)) == 1


def test_my_notification_choices(signed_in, services, portal_app, make_user):
    account = signed_in.account
    page = signed_in.get("/profile/notifications").get_data(as_text=True)
    assert "The account&#39;s default (off)" in page and "Lockouts and failed integrity checks" in page
    response = signed_in.submit("/profile/notifications", {"uploads": "off", "alerts": "default", "exports": "on"})
    assert response.status_code == 302
    assert with_user(services, account.admin_id, lambda s, u: (u.notify_uploads, u.notify_alerts, u.notify_exports)) \
        == (False, None, True)
    assert signed_in.submit("/profile/notifications", {"uploads": "loud", "alerts": "on", "exports": "on"}
                            ).status_code == 400
    assert signed_in.post("/profile/notifications", data={"uploads": "on"}).status_code == 400  # no CSRF token

    _, name = make_user(account)
    client = portal_app.test_client()  # a second browser, signed in as a user who is no admin
    assert client.sign_in(name, account.password).status_code == 302
    page = client.get("/profile/notifications").get_data(as_text=True)
    assert "New files in folders I follow" in page and "Lockouts" not in page  # alerts go to admins


def test_admins_set_the_accounts_defaults(signed_in, services, portal_app, make_user):
    account = signed_in.account
    response = signed_in.submit("/settings/notifications", {"notify_uploads": "y", "notify_exports": "y"},
                                form_page="/settings/")
    assert response.status_code == 302
    with services.db.session() as session:
        acct = session.get(Account, account.id)
        assert (acct.notify_uploads_default, acct.notify_alerts_default, acct.notify_exports_default) == \
            (True, False, True)
        assert session.scalar(select(AuditEvent.detail).where(AuditEvent.account_id == account.id)
                              .order_by(AuditEvent.seq.desc()).limit(1)).startswith("notification defaults set")
    assert signed_in.post("/settings/notifications", data={"notify_uploads": "y"}).status_code == 400
    _, name = make_user(account)
    client = portal_app.test_client()  # a second browser, signed in as a user who is no admin
    assert client.sign_in(name, account.password).status_code == 302
    token = client.csrf_token("/profile/")
    assert client.post("/settings/notifications", data={"csrf_token": token}).status_code == 403
    with services.db.session() as session:
        assert session.get(Account, account.id).notify_uploads_default is True
        assert session.scalar(select(User.notify_uploads).where(User.id == account.admin_id)) is None
