"""pyftpdlib's authorizer interface over `common.auth`."""

from __future__ import annotations

from common import auth
from common.errors import AuthFailed


PROTOCOL = "ftps"
# e l r: enter, list, read; d f m w: delete, rename, make folder, store; T: MFMT. No "a"
# (APPE is refused) and no "M" (SITE CHMOD does not exist here).
PERMS = "elrdfmwT"


class WorkspaceAuthorizer:
    """pyftpdlib's authorizer interface over `common.auth`; the Workspace decides every permission."""

    def validate_authentication(self, username, password, handler):
        # One call for every kind of secret: auth recognises an FTPS app password itself.
        result = auth.authenticate(handler.services, username, password, method="password",
                                   protocol=PROTOCOL, ip=handler.remote_ip)
        if result.needs_totp:
            raise AuthFailed()  # FTPS has no second step; MFA accounts log in with app passwords
        return result

    def has_perm(self, username, perm, path=None):
        return perm in PERMS

    def get_perms(self, username):
        return PERMS

    def get_home_dir(self, username):
        return "/"

    def get_msg_login(self, username):
        return "Login successful."

    def get_msg_quit(self, username):
        return "Goodbye."

    def impersonate_user(self, username, password):
        """Nothing to impersonate: no OS user ever touches a file."""

    def terminate_impersonation(self, username):
        """Nothing to undo."""
