"""What every change of a credential or access setting shares: its audit event and the tier rule."""
from __future__ import annotations

from sqlalchemy.orm import Session

from common import audit
from common.accounts import Actor
from common.crypto import Keyring
from common.errors import TierRequired
from common.models import Account

ENTERPRISE_MESSAGE = ("{what} are available on enterprise plans (t2, t5, t10) only; "
                      "this account is on the basic plan.")


def require_enterprise(account: Account, what: str) -> None:
    """Raise TierRequired naming `what` unless the account is on an enterprise plan."""
    if not account.is_enterprise:
        raise TierRequired(ENTERPRISE_MESSAGE.format(what=what))


def audit_change(session: Session, keyring: Keyring, actor: Actor, account_id: int, detail: str) -> None:
    """Record an admin_change event of the account, in the caller's transaction."""
    audit.record(session, keyring, audit.Event(
        action="admin_change", protocol=actor.protocol, account_id=account_id,
        user_id=actor.user_id, username=actor.username, ip=actor.ip, detail=detail))
