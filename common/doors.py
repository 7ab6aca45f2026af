"""The door policy: one row per way into Sealdrop, read by the core instead of door names.

A door is how a caller reaches the files: the web portal, FTPS, SFTP, a share link, or a
job of the service itself. The gate (common.auth) reads here which login methods a door
takes and how its second factor works, the audit takes its protocol names from here, and
the Workspace (common.vfs) reads what a principal of the door may reach. The core never
compares a door's name: a new door is one row here and an adapter.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class SecondFactor(Enum):
    """How a door asks an MFA user for more than the password."""

    CODE_STEP = "a TOTP or recovery code in a step after the password"
    KEYBOARD_INTERACTIVE = "a TOTP code by keyboard-interactive after the password or key"
    APP_PASSWORDS = "app passwords instead of the account password"
    NO_LOGIN = "no user logs in"


class Reach(Enum):
    """What a principal of the door may reach in the Workspace."""

    USER = "the user's home, folders shared with them and, for admins, /Audit Logs read-only"
    SHARE = "one shared folder only, with the share's permission"
    AUDIT_LOGS = "the account's /Audit Logs, writable"


class SessionCap(Enum):
    """How many sessions one client (an IPv4 address or an IPv6 /64) may hold on the door."""

    PER_CLIENT = "MAX_SESSIONS_PER_IP, of which MAX_UNAUTHENTICATED_PER_IP before login"
    NONE = "no long-lived sessions to cap"


@dataclass(frozen=True)
class Door:
    """One way in: its audit name, how its callers log in, and what they may reach."""

    name: str
    audit_protocol: str
    second_factor: SecondFactor
    methods: tuple[str, ...]  # the login methods it takes; empty when no user logs in
    session_cap: SessionCap
    reach: Reach
    accepts_recovery_codes: bool = False  # a recovery code may stand in for the TOTP code
    lets_in_to_enrol: bool = False  # a user who must enrol in MFA is let in to do so

    @property
    def has_user_login(self) -> bool:
        return bool(self.methods)

    @property
    def asks_for_code(self) -> bool:
        """An enrolled user's first factor is followed by a code on this door."""
        return self.second_factor in (SecondFactor.CODE_STEP, SecondFactor.KEYBOARD_INTERACTIVE)

    @property
    def app_passwords_replace_password(self) -> bool:
        """With MFA on, this door refuses the account password and takes app passwords."""
        return self.second_factor is SecondFactor.APP_PASSWORDS


DOORS = {door.name: door for door in (
    Door("web", "web", SecondFactor.CODE_STEP, ("password",), SessionCap.NONE, Reach.USER,
         accepts_recovery_codes=True, lets_in_to_enrol=True),
    Door("ftps", "ftps", SecondFactor.APP_PASSWORDS, ("password", "app_password"),
         SessionCap.PER_CLIENT, Reach.USER),
    Door("sftp", "sftp", SecondFactor.KEYBOARD_INTERACTIVE, ("password", "publickey"),
         SessionCap.PER_CLIENT, Reach.USER),
    Door("link", "link", SecondFactor.NO_LOGIN, (), SessionCap.NONE, Reach.SHARE),
    Door("system", "system", SecondFactor.NO_LOGIN, (), SessionCap.NONE, Reach.AUDIT_LOGS),
)}

AUDIT_PROTOCOLS = tuple(door.audit_protocol for door in DOORS.values())
LINK = DOORS["link"]
SYSTEM = DOORS["system"]


def door(name: str) -> Door:
    """The row of a door, or ValueError for a name the table does not have."""
    try:
        return DOORS[name]
    except KeyError:
        raise ValueError(f"unknown door {name!r}") from None

