"""The Contacts tab: list (deleted users among the contacts), add, edit and delete with a confirmation."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from common import sharing
from common.models import Contact, Share
from common.vfs import Workspace
from tests.factories import principal, share, with_account
from tests.portal.admin_pages import admin_details, signed_in_as, text_of


def add(services, account_id, email, name=None) -> int:
    return with_account(services, account_id, lambda s, a: sharing.add_contact(
        s, services.keyring, a, email=email, name=name).id)


def contacts_of(services, account_id) -> list[tuple[str, str | None]]:
    return [(c.email, c.name) for c in with_account(
        services, account_id, lambda s, a: sharing.list_contacts(s, services.keyring, a))]


ACTIONS = ["/contacts/new", "/contacts/{id}/edit", "/contacts/{id}/delete"]
PAGES = ["/contacts/", "/contacts/new", "/contacts/{id}/edit", "/contacts/{id}/delete"]


@pytest.mark.parametrize("method,url", [("get", url) for url in PAGES] + [("post", url) for url in ACTIONS])
def test_a_plain_user_is_refused(signed_in, portal_app, make_user, services, method, url):
    contact_id = add(services, signed_in.account.id, "kept@example.test", "Kept")
    _, name = make_user(signed_in.account)
    plain = signed_in_as(portal_app, name)
    url = url.format(id=contact_id)
    response = plain.get(url) if method == "get" else plain.submit(
        url, {"email": "x@example.test", "name": "X"}, form_page="/profile/")
    assert response.status_code == 403
    assert contacts_of(services, signed_in.account.id) == [("kept@example.test", "Kept")]


@pytest.mark.parametrize("url", ACTIONS)
def test_every_action_wants_its_csrf_token(signed_in, services, url):
    contact_id = add(services, signed_in.account.id, "kept@example.test", "Kept")
    response = signed_in.post(url.format(id=contact_id), data={"email": "new@example.test", "name": "New"})
    assert response.status_code == 400
    assert contacts_of(services, signed_in.account.id) == [("kept@example.test", "Kept")]


def test_another_accounts_contact_is_not_found_and_stays(signed_in, services, make_account):
    stranger = make_account()
    theirs = add(services, stranger.id, "theirs@example.test", "Theirs")
    for url in (f"/contacts/{theirs}/edit", f"/contacts/{theirs}/delete"):
        assert signed_in.get(url).status_code == 404
        response = signed_in.submit(url, {"email": "x@example.test", "name": "X"}, form_page="/contacts/new")
        assert response.status_code == 404
    assert contacts_of(services, stranger.id) == [("theirs@example.test", "Theirs")]
    assert "theirs@example.test" not in text_of(signed_in.get("/contacts/"))


def test_a_contact_is_added_edited_and_listed(signed_in, services):
    response = signed_in.submit("/contacts/new", {"email": "ada@example.test", "name": "Ada Lovelace"})
    assert response.status_code == 303 and response.headers["Location"] == "/contacts/"
    page = text_of(signed_in.get("/contacts/"))
    assert "ada@example.test" in page and "Ada Lovelace" in page and "is saved" in page
    [contact_id] = [c.id for c in with_account(services, signed_in.account.id,
                                               lambda s, a: sharing.list_contacts(s, services.keyring, a))]
    edit = f"/contacts/{contact_id}/edit"
    assert 'value="Ada Lovelace"' in text_of(signed_in.get(edit))
    assert signed_in.submit(edit, {"email": "ada@lovelace.test", "name": "Ada"}).status_code == 303
    assert contacts_of(services, signed_in.account.id) == [("ada@lovelace.test", "Ada")]
    assert [d for d in admin_details(services, signed_in.account.id) if d.startswith("contact")] == [
        f"contact {contact_id} added", f"contact {contact_id} changed"]


@pytest.mark.parametrize("form,message", [
    ({"email": "", "name": "Nobody"}, "This field is required"),
    ({"email": "no-at-sign", "name": "X"}, "exactly one @"),
    ({"email": "x@example.test", "name": "n" * 201}, "200"),
])
def test_a_bad_contact_is_refused_with_the_reason(signed_in, services, form, message):
    response = signed_in.submit("/contacts/new", form)
    assert response.status_code == 400 and message in text_of(response)
    assert contacts_of(services, signed_in.account.id) == []


def test_an_email_already_listed_is_refused_on_add_and_edit(signed_in, services):
    add(services, signed_in.account.id, "a@example.test")
    second = add(services, signed_in.account.id, "b@example.test")
    response = signed_in.submit("/contacts/new", {"email": "A@Example.test", "name": ""})
    assert response.status_code == 400 and "already exists" in text_of(response)
    response = signed_in.submit(f"/contacts/{second}/edit", {"email": "a@example.test", "name": ""})
    assert response.status_code == 400 and "Another contact has this email" in text_of(response)
    assert contacts_of(services, signed_in.account.id) == [("a@example.test", None), ("b@example.test", None)]


def test_deleting_says_which_shares_end_and_ends_them(signed_in, services, make_user):
    account = signed_in.account
    owner_id, owner = make_user(account)
    Workspace(services, principal(account, owner_id, owner)).make_dir("/out")
    share_id = share(services, account, owner, "/out", "partner@example.test", "read")
    with services.db.session() as db:
        contact_id = db.scalar(select(Contact.id).where(Contact.account_id == account.id))
    page = text_of(signed_in.get(f"/contacts/{contact_id}/delete"))
    assert "partner@example.test" in page and "<strong>1</strong> folder share" in page
    response = signed_in.submit(f"/contacts/{contact_id}/delete")
    assert response.status_code == 303 and contacts_of(services, account.id) == []
    with services.db.session() as db:
        assert db.get(Share, share_id) is None
    assert f"contact {contact_id} deleted" in admin_details(services, account.id)


def test_a_deleted_user_appears_among_the_contacts(signed_in, make_user):
    user_id, name = make_user(signed_in.account)
    assert signed_in.submit(f"/users/{user_id}/delete").status_code == 303
    assert f"{name}@example.test" in text_of(signed_in.get("/contacts/"))
