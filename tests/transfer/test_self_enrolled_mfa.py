"""A user who enrolled in MFA on an account that does not require it: every door asks for it."""
from __future__ import annotations

import ftplib
import io

import paramiko
import pyotp
import pytest

from common import auth
from common.auth import totp
from common.models import PasswordPolicy, User
from tests.fixtures import STRONG_PASSWORD
from tests.transfer.ftps_door import connect as ftps_connect, quit_quietly
from tests.transfer.sftp_door import fresh_source, open_transport


def enrol_on_their_own(services, user_id: int) -> tuple[pyotp.TOTP, str]:
    """Enrol the user as `users mfa-enrol` does and give them an FTPS app password."""
    with services.db.session() as session:
        user = session.get(User, user_id)
        uri = totp.enrol_totp(session, services.keyring, user)
        token = auth.create_app_password(session, services.keyring, user, "ftps")
    return pyotp.parse_uri(uri), token


@pytest.fixture
def enrolled(services, account, make_user):
    user_id, username = make_user(account)
    with services.db.session() as session:
        policy = session.get(PasswordPolicy, account.id)
        assert policy is None or not policy.require_mfa  # the account asks nothing of anyone
    code, token = enrol_on_their_own(services, user_id)
    return username, code, token


def test_sftp_asks_a_self_enrolled_user_for_the_code(sftp_server, enrolled):
    username, code, _ = enrolled
    transport = open_transport(sftp_server.port, source=fresh_source())
    try:
        assert transport.auth_password(username, STRONG_PASSWORD) == ["keyboard-interactive"]
        assert not transport.is_authenticated()
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_interactive(username, lambda title, instructions, prompts: ["000000"])
        assert not transport.is_authenticated()
        transport.auth_interactive(username, lambda title, instructions, prompts: [code.now()])
        assert transport.is_authenticated()
    finally:
        transport.close()


def test_ftps_takes_only_app_passwords_from_a_self_enrolled_user(ftps_server, enrolled):
    username, _, token = enrolled
    source = fresh_source()
    ftp = ftps_connect(ftps_server, source=source)
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.login(username, STRONG_PASSWORD)
    quit_quietly(ftp)
    ftp = ftps_connect(ftps_server, username, token, source=source)
    ftp.storbinary("STOR /self-enrolled.txt", io.BytesIO(b"ok"))
    quit_quietly(ftp)
