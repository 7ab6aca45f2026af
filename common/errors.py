"""The one failure vocabulary shared by every door.

`common` raises these; each adapter translates them in exactly one place with a single
attribute lookup: `exc.ftp_code` (FTP reply), `exc.sftp_status` (SFTP status),
`exc.http_status` (portal response and flash), `exc.exit_code` (CLI), and always
`exc.message` as the text the client sees.

`message` is written for the client, so it never carries a path, a user name, an email or
an internal detail; a caller that overrides it takes on the same duty. `code` is a stable
machine-readable string that is equally safe to show. `audit_code` is for the audit trail
and internal decisions only and may say more than the client is allowed to learn (a locked
user gets exactly the wrong-password reply; only the audit records that it was a lockout).
"""

from __future__ import annotations

from typing import Iterable

# SFTP v3 status codes (draft-ietf-secsh-filexfer-02), written out so that `common` never
# imports paramiko; a test checks them against paramiko's own constants.
SFTP_NO_SUCH_FILE = 2
SFTP_PERMISSION_DENIED = 3
SFTP_FAILURE = 4
SFTP_OP_UNSUPPORTED = 8

# sysexits.h values, so scripts driving the CLI can tell "retry later" from "fix the config".
EX_TEMPFAIL = 75
EX_CONFIG = 78


class SealdropError(Exception):
    """Base of every failure `common` reports to a door."""

    code = "error"
    default_message = "The request failed"
    ftp_code = 550
    sftp_status = SFTP_FAILURE
    http_status = 500
    exit_code = 1
    # Filled in by __init_subclass__: equal to `code` unless a class says otherwise.
    audit_code = "error"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass that only overrides `code` must not inherit its parent's audit code.
        if "audit_code" not in cls.__dict__:
            cls.audit_code = cls.code

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class NotFound(SealdropError):
    """The file or folder does not exist (or the caller may not know that it does)."""

    code = "not_found"
    default_message = "No such file or folder"
    ftp_code = 550
    sftp_status = SFTP_NO_SUCH_FILE
    http_status = 404


class PermissionDenied(SealdropError):
    """The caller may not perform this operation here."""

    code = "permission_denied"
    default_message = "Permission denied"
    ftp_code = 550
    sftp_status = SFTP_PERMISSION_DENIED
    http_status = 403


class AlreadyExists(SealdropError):
    """A file or folder with that name already exists in the folder."""

    code = "already_exists"
    default_message = "A file or folder with that name already exists"
    ftp_code = 550
    # SFTP v3 has no FILE_ALREADY_EXISTS; OpenSSH's server answers EEXIST with FAILURE too.
    sftp_status = SFTP_FAILURE
    http_status = 409


class NotEmpty(SealdropError):
    """The folder still holds files or folders."""

    code = "not_empty"
    default_message = "The folder is not empty"
    ftp_code = 550
    sftp_status = SFTP_FAILURE
    http_status = 409


class NotAFolder(SealdropError):
    """A folder operation named a file."""

    code = "not_a_folder"
    default_message = "Not a folder"
    ftp_code = 550
    sftp_status = SFTP_FAILURE
    http_status = 409


class IsAFolder(SealdropError):
    """A file operation named a folder."""

    code = "is_a_folder"
    default_message = "Is a folder"
    ftp_code = 550
    sftp_status = SFTP_FAILURE
    http_status = 409


class InvalidInput(SealdropError):
    """A value the client supplied is malformed."""

    code = "invalid_input"
    default_message = "Invalid input"
    ftp_code = 501
    sftp_status = SFTP_FAILURE
    http_status = 400


class InvalidName(InvalidInput):
    """A file or folder name (or path) breaks a naming rule; the message says which."""

    code = "invalid_name"
    default_message = "That name is not allowed"
    ftp_code = 553
    sftp_status = SFTP_FAILURE
    http_status = 400


class PolicyViolation(InvalidInput):
    """A new password does not meet the account's password policy."""

    code = "policy_violation"
    default_message = "The password does not meet the password policy"
    ftp_code = 550
    sftp_status = SFTP_FAILURE
    http_status = 400

    def __init__(self, unmet: Iterable[str] = (), message: str | None = None) -> None:
        # Each unmet rule is itself a client-safe sentence, so forms can list them one by one.
        self.unmet: tuple[str, ...] = tuple(unmet)
        if message is None and self.unmet:
            message = f"{self.default_message}: {'; '.join(self.unmet)}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[tuple[str, ...], str]]:
        # Keep pickling (RQ, multiprocessing) faithful despite the two-argument constructor.
        return (type(self), (self.unmet, self.message))


class Unsupported(SealdropError):
    """The operation is deliberately not offered (APPE, random-offset writes, ...)."""

    code = "unsupported"
    default_message = "This operation is not supported"
    ftp_code = 504
    sftp_status = SFTP_OP_UNSUPPORTED
    http_status = 501


class IntegrityFailure(SealdropError):
    """Stored content failed its authentication tag or fingerprint check."""

    code = "integrity_failure"
    default_message = "The file failed its integrity check"
    ftp_code = 550
    sftp_status = SFTP_FAILURE
    http_status = 500


class TransientError(SealdropError):
    """The object store or the database is unreachable; the client should try again later."""

    code = "transient"
    default_message = "The service is temporarily unavailable; please try again later"
    ftp_code = 451
    sftp_status = SFTP_FAILURE
    http_status = 503
    exit_code = EX_TEMPFAIL


class FileReplaced(TransientError):
    """The file got new content while a client was reading it in pieces; nothing was mixed."""

    code = "file_replaced"
    default_message = "The file was replaced while it was being read; open it again"


class AuthFailed(SealdropError):
    """The login was refused; the same reply whatever the reason."""

    code = "auth_failed"
    default_message = "Login incorrect"
    ftp_code = 530
    sftp_status = SFTP_PERMISSION_DENIED
    http_status = 401


class LockedOut(AuthFailed):
    """The user name is frozen by the lockout; replies exactly like AuthFailed."""

    # Everything a client can observe stays AuthFailed's (code, message, reply codes), so
    # no door reveals a lockout; only the audit trail and internal decisions see it.
    audit_code = "locked_out"


class Banned(SealdropError):
    """The client address is banned by the per-IP defender."""

    code = "banned"
    default_message = "Too many failed logins from your address; please try again later"
    # 421 is the FTP reply that also closes the control connection.
    ftp_code = 421
    sftp_status = SFTP_PERMISSION_DENIED
    http_status = 429


class TierRequired(SealdropError):
    """An enterprise-only setting was requested on a basic account."""

    code = "tier_required"
    default_message = "This setting is available on enterprise plans only"
    ftp_code = 550
    sftp_status = SFTP_PERMISSION_DENIED
    http_status = 403


class ConfigError(SealdropError):
    """The service's own configuration is invalid; messages name settings, never secret values."""

    code = "config_error"
    default_message = "The server is not configured correctly"
    ftp_code = 451
    sftp_status = SFTP_FAILURE
    http_status = 500
    exit_code = EX_CONFIG
