"""`shares add` tells nothing about other accounts: their user names answer as unknown names."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from common import accounts
from common.models import Contact, Share
from common.vfs import Principal, Workspace
from tests.fixtures import STRONG_PASSWORD, assert_one_line_error, unique_name


@pytest.fixture(scope="module")
def cli_app(settings, migrated):
    from portal import create_app
    app = create_app(settings)
    yield app
    app.extensions["sealdrop"].close()


def run(app, *args):
    with app.app_context():
        return app.test_cli_runner().invoke(args=[str(a) for a in args])


@pytest.fixture
def owner(services, account):
    services.store.ensure_bucket()
    Workspace(services, Principal(account.admin_id, account.id, account.admin_username, "admin", "web",
                                  "127.0.0.1")).make_dir("/reports")
    return account


def add_user(services, account, username):
    with services.db.session() as session:
        acct = session.get(accounts.Account, account.id)
        accounts.create_user(session, services.keyring, acct, username=username,
                             email=f"{unique_name('mail')}@example.test", password=STRONG_PASSWORD)


def share_to(cli_app, account, to):
    return run(cli_app, "shares", "add", account.name, account.admin_username, "/reports",
               "--to", to, "--perm", "read")


def shares_and_contacts(services, account) -> tuple[int, int]:
    with services.db.session() as session:
        return (session.scalar(select(func.count()).select_from(Share).where(Share.account_id == account.id)),
                session.scalar(select(func.count()).select_from(Contact).where(Contact.account_id == account.id)))


def test_a_user_name_of_another_account_answers_as_an_unknown_name(cli_app, services, owner, make_account):
    other = make_account()
    taken = unique_name("elsewhere")
    add_user(services, other, taken)
    foreign = share_to(cli_app, owner, taken)
    unknown = share_to(cli_app, owner, unique_name("nobody"))
    assert_one_line_error(foreign)
    assert (foreign.exit_code, foreign.stdout, foreign.stderr) == (unknown.exit_code, unknown.stdout, unknown.stderr)
    assert "another account" not in foreign.stderr
    assert shares_and_contacts(services, owner) == (0, 0)


def test_an_email_like_user_name_of_another_account_is_an_email_like_any_other(cli_app, services, owner,
                                                                             make_account):
    other = make_account()
    taken = f"{unique_name('elsewhere')}@partner.example.test"
    add_user(services, other, taken)
    foreign = share_to(cli_app, owner, taken)
    unknown = share_to(cli_app, owner, f"{unique_name('nobody')}@partner.example.test")

    def shape(result):
        return result.exit_code, re.sub(r"\d+", "N", result.stdout), result.stderr

    assert foreign.exit_code == 0, foreign.output
    assert shape(foreign) == shape(unknown)
    assert "invitation" in foreign.stdout
    assert shares_and_contacts(services, owner) == (2, 2)  # both became contacts of this account
