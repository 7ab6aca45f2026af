"""What the account's administration pages share: running one change in the admin's account, as them."""
from __future__ import annotations

from flask_login import current_user

from common.accounts import Actor
from common.crypto import Keyring
from common.models import Account
from portal.auth.current import PROTOCOL, services
from portal.security import client_address


def keyring() -> Keyring:
    return services().keyring


def in_my_account(change):
    """Run `change(db, account, actor)` in one transaction in my account, as me (audited as
    `admin_change` with protocol web by the core), and return its result."""
    with services().db.session() as db:
        actor = Actor(PROTOCOL, client_address(), current_user.id, current_user.username)
        return change(db, db.get(Account, current_user.account_id), actor)
