"""Notification mails against a real SMTP server (aiosmtpd): the upload digest of followed
folders, lockout alerts, export-ready mails and integrity alerts, each honouring the user's
choice or the account's default, and naming no file, folder, path or user name."""
from __future__ import annotations

from datetime import date, timedelta

import pytest
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import delete

from common import notifications
from common.errors import LockedOut
from common.jobs.alerts import send_integrity_alert
from common.jobs.notify import send_due_digests, send_export_ready, send_lockout_alert
from common.models import Follow, Share
from common.vfs import Workspace
from tests.factories import login, principal, refused, share, upload, with_account, with_user, workspace

SECRET_NAMES = ("Quarterly-payroll", "Patient-records", "Reports")


def body_of(message) -> str:
    return message.get_body(("plain",)).get_content() + message.get_body(("html",)).get_content()


def home_id(services, user_id) -> int:
    return with_user(services, user_id, lambda s, u: u.home_folder_id)


def follow(services, user_id, folder_id, on=True):
    with services.db.session() as session:
        notifications.set_following(session, user_id, folder_id, on)


def pending(services, user_id, folder_id) -> int:
    with services.db.session() as session:
        return session.get(Follow, (user_id, folder_id)).pending


@pytest.fixture
def team(services, account, make_user):
    """The admin's folder /Reports shared (write) with Bob, who follows it; Carol follows nothing."""
    admin_ws = workspace(services, account.id, account.admin_id, account.admin_username)
    admin_ws.make_dir("/Reports")
    bob, bob_name = make_user(account)
    share(services, account, account.admin_username, "/Reports", bob_name, "write")
    folder_id = int(admin_ws.stat("/Reports").id[1:])
    follow(services, bob, folder_id)
    return dict(admin_ws=admin_ws, bob=bob, bob_name=bob_name, folder_id=folder_id)


def test_many_uploads_make_one_digest_without_names(mailer, smtp_server, account, team):
    for n in range(5):
        upload(team["admin_ws"], f"/Reports/{SECRET_NAMES[n % 2]}-{n}.pdf", b"x" * (n + 1))
    bob_ws = Workspace(mailer, principal(account, team["bob"], team["bob_name"], protocol="sftp"))
    upload(bob_ws, f"/Shared/{account.admin_username}/Reports/own.txt", b"mine")  # his own: not counted
    assert pending(mailer, team["bob"], team["folder_id"]) == 5

    assert send_due_digests(mailer) == 0  # the burst is still young: nothing yet
    assert send_due_digests(mailer, delay=timedelta(0)) == 1
    [(to, message)] = smtp_server.messages
    assert to == [f"{team['bob_name']}@example.test"]
    body = body_of(message)
    assert "5 new files" in body and f"{mailer.settings.public_url}/files/folder/n{team['folder_id']}" in body
    for secret in (*SECRET_NAMES, "own.txt", ".pdf", account.admin_username, team["bob_name"]):
        assert secret not in body and secret not in message["Subject"]
    assert send_due_digests(mailer, delay=timedelta(0)) == 0 and len(smtp_server.messages) == 1
    assert pending(mailer, team["bob"], team["folder_id"]) == 0


def test_digest_honours_the_choice_and_the_account_default(mailer, smtp_server, account, team):
    def set_choice(value):
        with mailer.db.session() as session:
            notifications.set_preferences(session, team["bob"], {"uploads": value})

    def set_default(on):
        with_account(mailer, account.id, lambda s, a: setattr(a, "notify_uploads_default", on))

    def one_upload_mails() -> int:
        upload(team["admin_ws"], "/Reports/a.txt", b"a")
        return send_due_digests(mailer, delay=timedelta(0))

    set_choice(False)
    assert one_upload_mails() == 0 and pending(mailer, team["bob"], team["folder_id"]) == 0  # dropped, not kept
    set_choice(None)
    set_default(False)
    assert one_upload_mails() == 0
    set_choice(True)  # his own choice beats the default
    assert one_upload_mails() == 1
    follow(mailer, team["bob"], team["folder_id"], on=False)
    upload(team["admin_ws"], "/Reports/b.txt", b"b")
    assert send_due_digests(mailer, delay=timedelta(0)) == 0
    assert len(smtp_server.messages) == 1


def test_no_digest_once_the_folder_is_no_longer_shared(mailer, smtp_server, account, team):
    upload(team["admin_ws"], "/Reports/a.txt", b"a")
    with mailer.db.session() as session:
        session.execute(delete(Share).where(Share.grantee_user_id == team["bob"]))
    assert send_due_digests(mailer, delay=timedelta(0)) == 0 and smtp_server.messages == []


def test_a_lockout_alerts_the_admins_once(mailer, smtp_server, account, make_user):
    bob, bob_name = make_user(account)
    job_id = f"lockout-alert-{account.id}-{bob}"
    for _ in range(mailer.settings.lockout_threshold):
        refused(lambda: login(mailer, bob_name, "wrong password", protocol="ftps"))
    job = Job.fetch(job_id, connection=mailer.redis)
    assert job.origin == "mail" and job.args == (account.id, bob)
    job.delete()
    for _ in range(3):  # refused while frozen: no new alert
        with pytest.raises(LockedOut):
            login(mailer, bob_name, "wrong password", protocol="sftp")
    with pytest.raises(NoSuchJobError):
        Job.fetch(job_id, connection=mailer.redis)

    assert send_lockout_alert(mailer, account.id, bob) == 1
    [(to, message)] = smtp_server.messages
    assert to == [f"{account.admin_username}@example.test"]
    body = body_of(message)
    assert f"user id {bob}" in body and f"/audit?user={bob}&amp;action=lockout" in body
    assert bob_name not in body and bob_name not in message["Subject"]


def test_alerts_and_export_mails_follow_the_admins_choices(mailer, smtp_server, account, make_user):
    second, _ = make_user(account, role="admin")
    with mailer.db.session() as session:
        notifications.set_preferences(session, second, {"alerts": False, "exports": True})
    assert send_integrity_alert(mailer, account.id) == 1
    assert send_lockout_alert(mailer, account.id, second) == 1
    assert send_export_ready(mailer, account.id, date(2026, 3, 1)) == 1  # opt-in: only the second admin
    recipients = [to for to, _ in smtp_server.messages]
    assert recipients[0] == recipients[1] == [f"{account.admin_username}@example.test"]
    assert recipients[2] != recipients[0] and len(recipients[2]) == 1
    assert "2026-03-01" in smtp_server.messages[2][1]["Subject"]
    with mailer.db.session() as session:
        notifications.set_preferences(session, account.admin_id, {"alerts": False})
    assert send_integrity_alert(mailer, account.id) == 0


def test_export_ready_queues_one_mail_per_account_and_day(mailer, account):
    notifications.export_ready(mailer, account.id, date(2026, 3, 1))
    notifications.export_ready(mailer, account.id, date(2026, 3, 1))
    job = Job.fetch(f"export-ready-{account.id}-2026-03-01", connection=mailer.redis)
    assert job.origin == "mail" and job.args == (account.id, "2026-03-01")
    job.delete()
