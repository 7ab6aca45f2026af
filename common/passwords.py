"""Password hashing (argon2id) and the password rules applied wherever a password is set.

Kept apart from common.auth so that setting a password (CLI, portal) and checking a login share
one hashing configuration and one counter of hashing work, which the tests read to prove that
unknown user names cost the same work as known ones.
It sits below common.accounts (which hashes a new user's password) and common.services (which
sets the bound), both of which the login gate in common.auth builds on; inside that package it
would close an import cycle through the package's re-exports.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import string
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from zxcvbn import zxcvbn

from common.errors import PolicyViolation

# OWASP's argon2id baseline (19 MiB, 2 passes, 1 lane): tens of milliseconds per login.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_DUMMY_HASH = _HASHER.hash("sealdrop-dummy-password-for-unknown-users")
_work = itertools.count(1)
_work_done = 0


class _HashBound:
    """At most `limit` hashes at once in this process (19 MiB each); callers wait their turn.

    It also remembers the most hashes it ever saw running at once, which tests read.
    """

    def __init__(self, limit: int):
        self._condition = threading.Condition()
        self.limit, self.running, self.peak = limit, 0, 0

    @contextlib.contextmanager
    def slot(self):
        with self._condition:
            self._condition.wait_for(lambda: self.running < self.limit)
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            yield
        finally:
            with self._condition:
                self.running -= 1
                self._condition.notify()

    def set_limit(self, limit: int) -> None:
        with self._condition:
            self.limit = limit
            self._condition.notify_all()


_bound = _HashBound(2 * (os.cpu_count() or 1))

MIN_LENGTH = 8
MAX_LENGTH = 256
# zxcvbn scores 0..4; below 3 is guessable within about 10^8 attempts offline.
MIN_STRENGTH = 3


def limit_concurrent_hashes(limit: int) -> None:
    """Set how many password hashes may run at once in this process (MAX_CONCURRENT_HASHES)."""
    _bound.set_limit(limit)


def hash_password(password: str) -> str:
    """The argon2id hash stored for a password."""
    with _bound.slot():
        return _HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Check a password; with no stored hash, run the same work against a dummy hash."""
    _count_work()
    try:
        with _bound.slot():
            return _HASHER.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def burn_password_work(password: str) -> None:
    """Spend exactly the work of one password check, for replies that must not be faster."""
    verify_password(None, password)


def hashing_work_done() -> int:
    """How many password checks this process has run (tests compare it, never time it)."""
    return _work_done


def peak_concurrent_hashes(*, reset: bool = False) -> int:
    """The most password hashes seen running at once in this process (optionally start afresh)."""
    peak = _bound.peak
    if reset:
        _bound.peak = _bound.running
    return peak


def _count_work() -> None:
    global _work_done
    _work_done = next(_work)


def policy_failures(password: str, *, min_length: int = MIN_LENGTH, upper: bool = False,
                    lower: bool = False, digit: bool = False, symbol: bool = False,
                    user_inputs: tuple[str, ...] = ()) -> list[str]:
    """Every rule the password breaks, as messages a person can act on (empty: acceptable)."""
    problems = []
    if len(password) < max(min_length, MIN_LENGTH):
        problems.append(f"Use at least {max(min_length, MIN_LENGTH)} characters.")
    if len(password) > MAX_LENGTH:
        problems.append(f"Use at most {MAX_LENGTH} characters.")
    if upper and not any(c.isupper() for c in password):
        problems.append("Include an upper-case letter.")
    if lower and not any(c.islower() for c in password):
        problems.append("Include a lower-case letter.")
    if digit and not any(c.isdigit() for c in password):
        problems.append("Include a digit.")
    if symbol and all(c.isalnum() or c in string.whitespace for c in password):
        problems.append("Include a character that is not a letter or digit.")
    if not problems:
        problems.extend(guessability_advice(password, user_inputs))
    return problems


def is_guessable(password: str, user_inputs: tuple[str, ...] = ()) -> bool:
    """True for common, breached-style or trivially derived passwords."""
    return _strength(password, user_inputs)["score"] < MIN_STRENGTH


def guessability_advice(password: str, user_inputs: tuple[str, ...] = ()) -> list[str]:
    """For a guessable password, why and how to do better (zxcvbn's feedback); empty otherwise."""
    result = _strength(password, user_inputs)
    if result["score"] >= MIN_STRENGTH:
        return []
    feedback = result["feedback"]
    return ["This password is too common or easy to guess; choose a longer, less predictable one.",
            *filter(None, [feedback.get("warning")]), *feedback.get("suggestions", [])]


def _strength(password: str, user_inputs: tuple[str, ...]) -> dict:
    return zxcvbn(password[:100], user_inputs=list(user_inputs))


def check_password(password: str, **rules) -> None:
    """Raise PolicyViolation listing every broken rule."""
    problems = policy_failures(password, **rules)
    if problems:
        raise PolicyViolation(problems)
