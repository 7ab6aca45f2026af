"""MAX_CONCURRENT_HASHES: password checks beyond the bound wait their turn, none is refused."""
from __future__ import annotations

import dataclasses
import threading

from common import auth, passwords
from common.config import load_settings
from common.services import Services
from tests.fixtures import STRONG_PASSWORD

LOGINS = 12


def test_the_default_bound_is_twice_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert load_settings({"APP_ENV": "test"}).max_concurrent_hashes == 6
    assert load_settings({"APP_ENV": "test", "MAX_CONCURRENT_HASHES": "1"}).max_concurrent_hashes == 1


def test_no_more_than_the_bound_hash_at_once_and_every_login_gets_in(settings, migrated, account, make_user):
    users = [make_user(account)[1] for _ in range(LOGINS)]
    bounded = Services(dataclasses.replace(settings, max_concurrent_hashes=2))
    start, results, errors = threading.Barrier(LOGINS), [], []

    def log_in(username):
        start.wait()  # every login asks for its hash at the same moment
        try:
            results.append(auth.authenticate(bounded, username, STRONG_PASSWORD, method="password",
                                             protocol="web", ip="127.0.0.1"))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    try:
        passwords.peak_concurrent_hashes(reset=True)
        threads = [threading.Thread(target=log_in, args=(name,)) for name in users]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        peak = passwords.peak_concurrent_hashes()
    finally:
        bounded.close()
        passwords.limit_concurrent_hashes(settings.max_concurrent_hashes)
    assert errors == [] and len(results) == LOGINS  # callers waited; none was refused
    assert peak == 2  # the bound was reached, and never passed
