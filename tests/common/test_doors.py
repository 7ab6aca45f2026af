"""The door policy table: the gate and the audit read a door's row, never its name."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from common import audit, auth, doors
from common.auth import totp
from common.doors import Door, Reach, SecondFactor, SessionCap
from common.errors import AuthFailed
from common.models import Account, AuditEvent, User
from common.vfs import Principal

# A door the code has never heard of, whose MFA users log in with app passwords (as on FTPS).
DAV = Door("dav", "dav", SecondFactor.APP_PASSWORDS, ("password", "app_password"),
           SessionCap.PER_CLIENT, Reach.USER)


@pytest.fixture
def dav_door(monkeypatch):
    monkeypatch.setitem(doors.DOORS, DAV.name, DAV)
    # audit.PROTOCOLS is read from the table once, at import; a real row is there from the start.
    monkeypatch.setattr(audit, "PROTOCOLS", (*audit.PROTOCOLS, DAV.audit_protocol))
    return DAV


def mfa_user_with_app_password(services, account) -> str:
    with services.db.session() as session:
        auth.set_policy(session, services.keyring, session.get(Account, account.id), require_mfa=True)
        user = session.get(User, account.admin_id)
        totp.enrol_totp(session, services.keyring, user)
        return auth.create_app_password(session, services.keyring, user, "dav client")


def test_a_new_door_is_one_row_and_its_second_factor_follows_the_row(services, account, dav_door):
    token = mfa_user_with_app_password(services, account)
    with pytest.raises(AuthFailed):
        auth.authenticate(services, account.admin_username, account.password, method="password",
                          protocol="dav", ip="198.51.100.20")
    result = auth.authenticate(services, account.admin_username, token, method="password",
                               protocol="dav", ip="198.51.100.20")
    assert (result.method, result.needs_totp, result.protocol) == ("app_password", False, "dav")
    with pytest.raises(ValueError):
        auth.authenticate(services, account.admin_username, b"key", method="publickey",
                          protocol="dav", ip="198.51.100.20")
    with services.db.session() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.account_id == account.id,
                                                          AuditEvent.protocol == "dav")).all()
        assert sorted(e.action for e in events) == ["login", "login_failed"]


@pytest.mark.parametrize("name", ["link", "system"])
def test_doors_without_user_logins_take_no_login(services, account, name):
    assert not doors.door(name).has_user_login
    with pytest.raises(ValueError):
        auth.authenticate(services, account.admin_username, account.password, method="password",
                          protocol=name, ip="198.51.100.21")


def test_every_door_has_its_audit_protocol_and_principals_carry_it(account):
    assert audit.PROTOCOLS == tuple(door.audit_protocol for door in doors.DOORS.values())
    assert Principal.for_link(1, account.id).door.reach is Reach.SHARE
    assert Principal.system(account.id).door.reach is Reach.AUDIT_LOGS
    with pytest.raises(ValueError):
        doors.door("gopher")
