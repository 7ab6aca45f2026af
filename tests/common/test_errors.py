"""The failure vocabulary: one lookup per door, client-safe messages, no door leaks a lockout."""

import inspect
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from common import errors
from common.errors import (
    AlreadyExists,
    AuthFailed,
    Banned,
    ConfigError,
    FileReplaced,
    IntegrityFailure,
    InvalidInput,
    InvalidName,
    IsAFolder,
    LockedOut,
    NotAFolder,
    NotEmpty,
    NotFound,
    PermissionDenied,
    PolicyViolation,
    SealdropError,
    TierRequired,
    TransientError,
    Unsupported,
)

ALL_ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, SealdropError) and cls.__module__ == errors.__name__
]

# (class, code, ftp reply, sftp status, http status, words of the default message)
TRANSLATIONS = [
    (NotFound, "not_found", 550, 2, 404, "No such file or folder"),
    (PermissionDenied, "permission_denied", 550, 3, 403, "Permission denied"),
    (AlreadyExists, "already_exists", 550, 4, 409, "already exists"),
    (NotEmpty, "not_empty", 550, 4, 409, "not empty"),
    (NotAFolder, "not_a_folder", 550, 4, 409, "Not a folder"),
    (IsAFolder, "is_a_folder", 550, 4, 409, "Is a folder"),
    (InvalidName, "invalid_name", 553, 4, 400, "name is not allowed"),
    (InvalidInput, "invalid_input", 501, 4, 400, "Invalid input"),
    (Unsupported, "unsupported", 504, 8, 501, "not supported"),
    (IntegrityFailure, "integrity_failure", 550, 4, 500, "integrity check"),
    (TransientError, "transient", 451, 4, 503, "try again later"),
    (FileReplaced, "file_replaced", 451, 4, 503, "open it again"),
    (AuthFailed, "auth_failed", 530, 3, 401, "Login incorrect"),
    (LockedOut, "auth_failed", 530, 3, 401, "Login incorrect"),
    (Banned, "banned", 421, 3, 429, "try again later"),
    (PolicyViolation, "policy_violation", 550, 4, 400, "password policy"),
    (TierRequired, "tier_required", 550, 3, 403, "enterprise"),
    (ConfigError, "config_error", 451, 4, 500, "not configured correctly"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_translation_table_covers_every_error_class():
    assert {row[0] for row in TRANSLATIONS} == set(ALL_ERRORS) - {SealdropError}


@pytest.mark.parametrize(("cls", "code", "ftp", "sftp", "http", "words"), TRANSLATIONS)
def test_each_error_translates_with_one_lookup(cls, code, ftp, sftp, http, words):
    error = cls()
    assert (error.code, error.ftp_code, error.sftp_status, error.http_status) == (
        code,
        ftp,
        sftp,
        http,
    )
    assert words in error.message
    assert str(error) == error.message


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_every_error_is_a_sealdrop_error_with_sane_codes(cls):
    assert issubclass(cls, SealdropError) and issubclass(cls, Exception)
    assert 400 <= cls.ftp_code < 600
    assert 400 <= cls.http_status < 600
    assert cls.sftp_status in {2, 3, 4, 8}
    assert cls.exit_code != 0
    assert cls.default_message and cls.code and cls.audit_code
    assert cls.__doc__


@pytest.mark.parametrize("cls", [c for c in ALL_ERRORS if c is not PolicyViolation])
def test_message_can_be_overridden(cls):
    error = cls("Quota exceeded")
    assert error.message == str(error) == "Quota exceeded"
    assert cls().message == cls.default_message


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_errors_survive_pickling(cls):
    original = PolicyViolation(["at least 12 characters"]) if cls is PolicyViolation else cls("m")
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is cls
    assert copy.message == original.message
    assert vars(copy) == vars(original)


def test_codes_are_unique_apart_from_lockout():
    codes = [cls.code for cls in ALL_ERRORS if cls is not LockedOut]
    assert len(codes) == len(set(codes))


def test_lockout_reply_is_identical_to_wrong_password_on_every_door():
    locked, wrong = LockedOut(), AuthFailed()
    for attribute in ("message", "code", "ftp_code", "sftp_status", "http_status", "exit_code"):
        assert getattr(locked, attribute) == getattr(wrong, attribute), attribute
    assert isinstance(locked, AuthFailed)


def test_lockout_is_visible_to_the_audit_only():
    assert LockedOut.audit_code == "locked_out"
    assert AuthFailed.audit_code == "auth_failed"


def test_audit_code_defaults_to_code():
    for cls in ALL_ERRORS:
        if cls is not LockedOut:
            assert cls.audit_code == cls.code, cls


def test_name_and_policy_errors_are_invalid_input():
    assert issubclass(InvalidName, InvalidInput)
    assert issubclass(PolicyViolation, InvalidInput)


def test_policy_violation_carries_each_unmet_rule():
    rules = ["at least 12 characters", "an upper-case letter"]
    error = PolicyViolation(rules)
    assert error.unmet == tuple(rules)
    for rule in rules:
        assert rule in error.message


def test_policy_violation_without_rules_or_with_own_message():
    assert PolicyViolation().message == PolicyViolation.default_message
    assert PolicyViolation(["x"], "Choose another password").message == "Choose another password"


def test_cli_exit_codes_separate_retry_from_configuration():
    assert TransientError.exit_code == 75
    assert ConfigError.exit_code == 78
    assert NotFound.exit_code == 1


def test_sftp_numbers_match_paramiko():
    sftp = pytest.importorskip("paramiko.sftp")
    assert errors.SFTP_NO_SUCH_FILE == sftp.SFTP_NO_SUCH_FILE
    assert errors.SFTP_PERMISSION_DENIED == sftp.SFTP_PERMISSION_DENIED
    assert errors.SFTP_FAILURE == sftp.SFTP_FAILURE
    assert errors.SFTP_OP_UNSUPPORTED == sftp.SFTP_OP_UNSUPPORTED


def test_common_modules_import_no_door_library():
    # A fresh interpreter, because this test process may already have imported paramiko.
    probe = (
        "import sys, common.errors, common.paths; "
        "print(sorted(m for m in ('flask', 'pyftpdlib', 'paramiko') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
