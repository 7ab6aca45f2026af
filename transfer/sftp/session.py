"""`SshSession`, the paramiko ServerInterface: logins through `common.auth`, channel policy."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import paramiko
from paramiko.common import (
    AUTH_FAILED, AUTH_PARTIALLY_SUCCESSFUL, AUTH_SUCCESSFUL, OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)
from paramiko.server import InteractiveQuery

from common import auth
from common.errors import AuthFailed, Banned, SealdropError
from common.services import Services
from common.vfs import Principal, Workspace
from transfer.sessions import LogoutAudit
from transfer.sftp.limits import MAX_HANDLES, MAX_SESSION_CHANNELS

# One logger for the whole door, named after the package.
log = logging.getLogger(__package__)


PROTOCOL = "sftp"
ALL_AUTHS = "publickey,password,keyboard-interactive"


# Global requests clients send on their own (keepalives): refused, but not worth an audit event.
QUIET_GLOBAL_REQUESTS = ("keepalive@openssh.com", "no-more-sessions@openssh.com")


class SshSession(paramiko.ServerInterface):
    """One SSH connection: logs in through common.auth, refuses everything but sftp."""

    def __init__(self, services: Services, ip: str, session_id: str):
        self.services, self.ip, self.id = services, ip, session_id
        self.result: auth.AuthResult | None = None
        self.workspace: Workspace | None = None
        self.logout_audit = LogoutAudit(PROTOCOL, session_id)
        self.must_disconnect = False
        self.last_activity = time.monotonic()
        self.busy = 0
        self.reorder_bytes = 0  # early writes held by all this connection's upload handles
        self.lock = threading.Lock()
        self.subsystems: list[threading.Thread] = []
        self._first: auth.AuthResult | None = None  # a first factor awaiting its TOTP code
        self._username: str | None = None
        self._key: paramiko.PKey | None = None
        self._failure_audited = False
        self._prompt: str | None = None
        self._channels = 0
        self._refusals = 0
        self._opening = 0  # handles being opened now, not yet in a channel's table

    # -- logging in --
    def get_allowed_auths(self, username):
        # The same list for every name, so the reply says nothing about who exists.
        return "keyboard-interactive" if self._first else ALL_AUTHS

    def check_auth_none(self, username):
        self._username = username
        return AUTH_FAILED

    def check_auth_password(self, username, password):
        self._username = username
        if self._first:
            return AUTH_FAILED  # the code comes by keyboard-interactive only
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")  # still a counted wrong password
        return self._first_factor(username, password, "password")

    def check_auth_publickey(self, username, key):
        # Records nothing: this runs for unsigned probes and before the signature is checked.
        self._username = username
        if self._first or not auth.is_authorized_key(self.services, username, key.get_name(), key.asbytes()):
            return AUTH_FAILED
        self._key = key
        return AUTH_SUCCESSFUL

    def key_verified(self, username):
        """The key offered last has signed the session: now it is a login attempt."""
        key, self._key = self._key, None
        if key is None:
            return AUTH_FAILED
        return self._first_factor(username, key.asbytes(), "publickey")

    def check_auth_interactive(self, username, submethods):
        self._username = username
        self._prompt = "code" if self._first else "password"
        return self._query(self._prompt)

    def check_auth_interactive_response(self, responses):
        prompt, self._prompt = self._prompt, None
        if prompt is None or len(responses) != 1:
            return AUTH_FAILED
        if prompt == "code":
            return self._second_factor(responses[0])
        outcome = self._first_factor(self._username, responses[0], "password")
        if outcome == AUTH_PARTIALLY_SUCCESSFUL:
            self._prompt = "code"
            return self._query("code")
        return outcome

    @staticmethod
    def _query(prompt: str) -> InteractiveQuery:
        return InteractiveQuery("", "", ("Verification code: " if prompt == "code" else "Password: ", False))

    def _first_factor(self, username: str, secret, method: str) -> int:
        try:
            result = auth.authenticate(self.services, username, secret, method=method,
                                       protocol=PROTOCOL, ip=self.ip)
        except SealdropError as exc:
            return self._refused(exc)
        if result.needs_totp:
            self._first = result
            return AUTH_PARTIALLY_SUCCESSFUL
        return self._logged_in(result)

    def _second_factor(self, code: str) -> int:
        try:
            result = auth.verify_totp(self.services, self._first, code)
        except SealdropError as exc:
            return self._refused(exc)
        self._first = None
        return self._logged_in(result)

    def _refused(self, exc: SealdropError) -> int:
        if not isinstance(exc, AuthFailed | Banned):
            raise exc
        self._failure_audited = True  # common.auth audited it (or counted it)
        # As on FTPS, every refusal of a name counts alike (locked, unknown, wrong secret,
        # allow-list, MFA not enrolled), so each closes the connection after the same number
        # of tries; a banned address, which says nothing about the name, is closed at once.
        self._refusals += 1
        self.must_disconnect = isinstance(exc, Banned) or \
            self._refusals >= self.services.settings.lockout_threshold
        return AUTH_FAILED

    def _logged_in(self, result: auth.AuthResult) -> int:
        self.result = result
        self.workspace = Workspace(self.services, Principal.from_login(result))
        self.logout_audit.logged_in(self.workspace)
        log.info("sftp session %s: user %s of account %s logged in (%s)",
                 self.id, result.user_id, result.account_id, result.method)
        return AUTH_SUCCESSFUL

    def ended(self) -> None:
        """The connection is gone: one login_failed if it never logged in and nothing was audited."""
        if self.result is None and self._username is not None and not self._failure_audited:
            auth.record_unauthenticated_end(self.services, self._username, PROTOCOL, self.ip)
        self.logout_audit.record()
        log.info("sftp session %s: ended", self.id)

    # -- channels: a session channel for the sftp subsystem, nothing else --
    def check_channel_request(self, kind, chanid):
        if kind == "session" and self._channels < MAX_SESSION_CHANNELS:
            self._channels += 1
            return OPEN_SUCCEEDED
        self.refuse("channel")
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_subsystem_request(self, channel, name):
        if name == "sftp":
            return super().check_channel_subsystem_request(channel, name)
        return self.refuse("subsystem")

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        self.refuse("port forwarding (local)")
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_port_forward_request(self, address, port):
        return self.refuse("port forwarding (remote)")

    def cancel_port_forward_request(self, address, port):
        return None

    def check_global_request(self, kind, msg):
        return False if kind in QUIET_GLOBAL_REQUESTS else self.refuse("global request")

    def check_channel_shell_request(self, channel):
        return self.refuse("shell")

    def check_channel_exec_request(self, channel, command):
        return self.refuse("exec")  # the command is never logged: it may name paths

    def check_channel_pty_request(self, channel, term, width, height, pixelwidth, pixelheight, modes):
        return self.refuse("pty")

    def check_channel_env_request(self, channel, name, value):
        return self.refuse("env")

    def check_channel_x11_request(self, channel, single_connection, auth_protocol, auth_cookie, screen_number):
        return self.refuse("x11")

    def check_channel_forward_agent_request(self, channel):
        return self.refuse("agent forwarding")

    def check_channel_window_change_request(self, channel, width, height, pixelwidth, pixelheight):
        return False  # meaningless without a pty, which is refused (and audited) already

    def refuse(self, operation: str) -> bool:
        """Audit a refused request (a fixed word, never client text) and answer no."""
        log.info("sftp session %s: refused %s", self.id, operation)
        if self.workspace is not None:
            try:
                self.workspace.record_refusal(operation)
            except SealdropError as exc:
                log.warning("sftp session %s: could not audit a refusal (%s)", self.id, exc.code)
        return False

    # -- open files and folders, over all the connection's channels --
    @contextlib.contextmanager
    def handle_slot(self):
        """Room for one more handle on this connection while it is being opened, or a refusal."""
        with self.lock:
            held = sum(len(s.file_table) + len(s.folder_table) for s in self.subsystems)
            if held + self._opening >= MAX_HANDLES:
                raise SealdropError("Too many open files and folders in this session; close some first")
            self._opening += 1
        try:
            yield
        finally:
            with self.lock:
                self._opening -= 1

    # -- activity, for the idle timeout --
    def is_idle(self, now: float, idle_timeout: float) -> bool:
        return self.busy == 0 and now - self.last_activity > idle_timeout
