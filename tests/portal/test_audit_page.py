"""The audit page: filters, keyset pages and their edges, downloads equal to the filtered view,
the daily exports list, the chain check as a job, and only ever the admin's own account."""
from __future__ import annotations

import csv
import io
import re
from datetime import date, datetime, timedelta, timezone

import openpyxl
import pytest
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import update

from common import audit
from common.jobs.chain import chain_check_job_id, check_chain
from common.models import Account, AuditEvent, AuditExport
from portal.audit import views

SEQ = re.compile(r'data-seq="(\d+)"')
DETAIL = re.compile(r'<div class="text-muted small text-break-all">(ev-[^<]*)</div>')
LINK = re.compile(r'id="(older|newer)" href="([^"]*)"')


def record(services, account_id, n, **fields):
    """One event with the marker detail `ev-<n>` (and the given fields) in the account's chain."""
    with services.db.session() as session:
        audit.record(session, services.keyring, audit.Event(
            account_id=account_id, detail=f"ev-{n}", **{"action": "mkdir", "protocol": "sftp", **fields}))


def details(response) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return DETAIL.findall(response.get_data(as_text=True))


def links(response) -> dict[str, str]:
    return {name: href.replace("&amp;", "&") for name, href in LINK.findall(response.get_data(as_text=True))
            if href != "#"}


@pytest.fixture
def events(signed_in, services, make_user, make_account):
    """Events of the signed-in admin's account (and a stranger account's, sharing IP and paths)."""
    account = signed_in.account
    alice, alice_name = make_user(account)
    record(services, account.id, 1, action="upload", protocol="ftps", user_id=alice, username=alice_name,
           ip="::ffff:198.51.100.7", direction="in", path="/Reports/q1-summary.pdf", bytes=1234, duration_ms=56)
    record(services, account.id, 2, action="download", protocol="web", user_id=account.admin_id,
           username=account.admin_username, ip="203.0.113.9", direction="out", path="/Reports/Q1-SUMMARY.pdf",
           bytes=99)
    record(services, account.id, 3, action="login_failed", protocol="sftp", status="failed", ip="198.51.100.7")
    record(services, account.id, 4, action="delete", protocol="sftp", user_id=alice, username=alice_name,
           ip="198.51.100.8", path="/old/notes.txt")
    stranger = make_account()
    record(services, stranger.id, 90, action="upload", protocol="ftps", ip="198.51.100.7", path="/Reports/q1.pdf")
    return dict(alice=alice, alice_name=alice_name, stranger=stranger)


@pytest.mark.parametrize("query, expected", [
    ({}, ["ev-4", "ev-3", "ev-2", "ev-1"]),
    ({"action": "upload"}, ["ev-1"]),
    ({"protocol": "sftp"}, ["ev-4", "ev-3"]),
    ({"ip": "198.51.100.7"}, ["ev-3", "ev-1"]),  # the IPv4-mapped address is stored as IPv4
    ({"path": "q1-summary"}, ["ev-2", "ev-1"]),  # inside the sealed paths, any case
    ({"path": "notes", "protocol": "sftp"}, ["ev-4"]),
    ({"since": "TODAY", "until": "TODAY"}, ["ev-4", "ev-3", "ev-2", "ev-1"]),
    ({"since": "TOMORROW"}, []),
    ({"until": "YESTERDAY"}, []),
])
def test_each_filter_narrows_the_view(signed_in, events, query, expected):
    today = datetime.now(timezone.utc).date()  # the filter's days are UTC days
    days = {"TODAY": today, "TOMORROW": today + timedelta(days=1), "YESTERDAY": today - timedelta(days=1)}
    query = {k: days[v].isoformat() if v in days else v for k, v in query.items()}
    shown = details(signed_in.get("/audit/", query_string=query))
    assert [d for d in shown if d != "ev-90"] == expected and "ev-90" not in shown
    if query:
        assert "ev-90" not in signed_in.get("/audit/download.csv", query_string=query).get_data(as_text=True)


def test_user_filter_by_id_and_never_another_accounts(signed_in, events, make_user):
    assert details(signed_in.get("/audit/", query_string={"user": events["alice"]})) == ["ev-4", "ev-1"]
    page = signed_in.get("/audit/").get_data(as_text=True)
    assert events["alice_name"] in page  # offered by name in the list, filtered by id
    stranger_user, stranger_name = make_user(events["stranger"])
    refused = signed_in.get("/audit/", query_string={"user": stranger_user})
    assert refused.status_code == 400 and "ev-" not in refused.get_data(as_text=True)
    assert stranger_name not in page


def test_invalid_filters_show_the_form_again(signed_in, events):
    for query in ({"ip": "not-an-ip"}, {"since": "2026-02-02", "until": "2026-02-01"}, {"action": "explode"}):
        response = signed_in.get("/audit/", query_string=query)
        assert response.status_code == 400 and not DETAIL.findall(response.get_data(as_text=True))
        assert signed_in.get("/audit/download.csv", query_string=query).status_code == 400


def test_pages_by_keyset_at_the_edges(signed_in, services, monkeypatch):
    monkeypatch.setattr(views, "PAGE_SIZE", 3)
    account = signed_in.account
    for n in range(7):
        record(services, account.id, n, action="rename")
    query = {"action": "rename"}
    first = signed_in.get("/audit/", query_string=query)
    assert details(first) == ["ev-6", "ev-5", "ev-4"] and set(links(first)) == {"older"}
    second = signed_in.get(links(first)["older"])
    assert details(second) == ["ev-3", "ev-2", "ev-1"] and set(links(second)) == {"older", "newer"}
    last = signed_in.get(links(second)["older"])
    assert details(last) == ["ev-0"] and set(links(last)) == {"newer"}
    back = signed_in.get(links(last)["newer"])
    assert details(back) == ["ev-3", "ev-2", "ev-1"]
    top = signed_in.get(links(back)["newer"])
    assert details(top) == ["ev-6", "ev-5", "ev-4"] and set(links(top)) == {"older"}
    # Exactly one page's worth: no link to an empty page.
    exact = signed_in.get("/audit/", query_string={"action": "rename", "before": SEQ.findall(
        last.get_data(as_text=True))[0]})
    assert details(exact) == [] and set(links(exact)) == {"newer"}
    for bad in ({"before": "-5"}, {"after": "x"}):
        assert details(signed_in.get("/audit/", query_string={**query, **bad})) == ["ev-6", "ev-5", "ev-4"]


def test_a_path_search_stops_after_a_bounded_scan_and_says_so(signed_in, services, monkeypatch):
    monkeypatch.setattr(audit, "PATH_SCAN_LIMIT", 4)
    account = signed_in.account
    record(services, account.id, 0, action="upload", path="/needle.txt")
    for n in range(1, 7):
        record(services, account.id, n, action="upload", path=f"/hay-{n}.txt")
    first = signed_in.get("/audit/", query_string={"path": "needle"})
    body = first.get_data(as_text=True)
    assert details(first) == [] and 'id="path-search-stopped"' in body and "looked at 4 events" in body
    more = signed_in.get(links(first)["older"])
    assert details(more) == ["ev-0"] and 'id="path-search-stopped"' not in more.get_data(as_text=True)


def _all_pages(client, query) -> list[str]:
    shown, url = [], None
    response = client.get("/audit/", query_string=query)
    while True:
        shown += details(response)
        url = links(response).get("older")
        if not url:
            return shown
        response = client.get(url)


def test_downloads_hold_exactly_the_filtered_view(signed_in, services, events, monkeypatch):
    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    record(services, signed_in.account.id, 5, action="upload", protocol="web", path="=cmd|' /C calc'!A0.txt")
    query = {"action": "upload"}
    view = _all_pages(signed_in, query)
    assert view == ["ev-5", "ev-1"]

    response = signed_in.get("/audit/download.csv", query_string=query)
    assert response.status_code == 200 and response.is_streamed
    assert response.headers["Content-Disposition"].startswith("attachment;")
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0][:3] == ["time_utc", "user", "client_ip"]
    assert [r[10] for r in rows[1:-1]] == view[::-1]  # the nightly order: oldest first
    assert rows[1][2:10] == ["198.51.100.7", "ftps", "upload", "in", "/Reports/q1-summary.pdf", "1234", "56", "ok"]
    assert rows[2][6] == "'=cmd|' /C calc'!A0.txt"
    assert rows[-1][4] == "chain_head"

    xlsx = signed_in.get("/audit/download.xlsx", query_string=query)
    assert xlsx.status_code == 200 and xlsx.is_streamed
    book = openpyxl.load_workbook(io.BytesIO(xlsx.get_data()))
    sheet = book["Events"]
    cells = [[c.value for c in row] for row in sheet.iter_rows(min_row=2)]
    assert [row[10] for row in cells] == view[::-1]
    assert sheet.cell(row=3, column=7).data_type == "s"
    assert rows[-1][10] in [c.value for row in book["Summary"].iter_rows() for c in row]


def test_exports_are_listed_with_links_into_audit_logs(signed_in, services):
    account = signed_in.account
    with services.db.session() as session:
        folder_id = session.get(Account, account.id).audit_folder_id
        session.add(AuditExport(account_id=account.id, day=date(2026, 1, 2), csv_node_id=folder_id,
                                xlsx_node_id=None, events=7, chain_head=b"\xab" * 32))
    page = signed_in.get("/audit/").get_data(as_text=True)
    assert "2026-01-02" in page and f'/files/item/n{folder_id}"' in page and "abababab" in page


def test_verify_the_chain_runs_as_a_job_and_shows_its_result(signed_in, services):
    account = signed_in.account
    assert signed_in.post("/audit/verify").status_code == 400  # no CSRF token
    with pytest.raises(NoSuchJobError):
        Job.fetch(chain_check_job_id(account.id), connection=services.redis)
    response = signed_in.submit("/audit/verify", form_page="/audit/")
    assert response.status_code == 302
    job = Job.fetch(chain_check_job_id(account.id), connection=services.redis)
    assert job.func_name == "common.jobs.chain.verify_chain" and job.args == (account.id,)
    assert 'id="check-waiting"' in signed_in.get("/audit/").get_data(as_text=True)
    job.delete()
    assert check_chain(services, account.id).ok  # what the worker runs
    assert "the chain is intact" in signed_in.get("/audit/").get_data(as_text=True)

    with services.db.session() as session:
        session.execute(update(AuditEvent).where(AuditEvent.account_id == account.id, AuditEvent.seq == 1)
                        .values(detail="edited"))
    assert not check_chain(services, account.id).ok
    assert "BROKEN" in signed_in.get("/audit/").get_data(as_text=True)


def test_users_who_are_not_admins_are_refused(client, account, make_user):
    _, name = make_user(account)
    assert client.sign_in(name, account.password).status_code == 302
    assert client.get("/audit/").status_code == 403
    assert client.get("/audit/download.csv").status_code == 403
    token = client.csrf_token("/profile/")
    assert client.post("/audit/verify", data={"csrf_token": token}).status_code == 403
    assert "/audit/" not in client.get("/profile/").get_data(as_text=True)
