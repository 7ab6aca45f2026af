"""The compliance figures of an account: each counted right, other accounts never counted, and
the same few queries however many users the account has."""
from __future__ import annotations

import pytest
from sqlalchemy import event, update

from common import auth, compliance
from common.auth import totp
from common.errors import AuthFailed
from common.models import Account, PasswordPolicy, User
from tests.factories import allow, enrol, login, require_mfa, with_account, with_user


def report_of(services, account_id) -> compliance.ComplianceReport:
    return with_account(services, account_id, lambda db, a: compliance.compliance_report(db, a))


def lock(services, username):
    for _ in range(services.settings.lockout_threshold):
        with pytest.raises(AuthFailed):
            login(services, username, "not the password")
    assert auth.is_locked_out(services, username)


def test_a_fresh_account(services, account):
    report = report_of(services, account.id)
    assert (report.users, report.mfa_enrolled, report.mfa_unenrolled, report.mfa_exempt) == (1, 0, 1, 0)
    assert (report.mfa_required, report.allow_list_rules, report.never_signed_in, report.locked) == (False, 0, 1, 0)
    assert report.enterprise and report.policy.rating == compliance.MINIMUM
    assert report.policy.requires == ["at least 8 characters", "not common or easy to guess"]


def test_every_figure_counts_this_account_only(services, make_account, make_user):
    info, other = make_account(), make_account()
    enrolled_id, _ = make_user(info)
    exempt_id, _ = make_user(info)
    _, locked_name = make_user(info)
    disabled_id, _ = make_user(info)
    other_user, other_name = make_user(other)
    login(services, info.admin_username, info.password)  # the admin has signed in
    enrol(services, enrolled_id)
    with_user(services, exempt_id, lambda db, u: auth.set_mfa_exempt(db, services.keyring, u, True))
    lock(services, locked_name)
    lock(services, other_name)
    with services.db.session() as db:
        db.execute(update(User).where(User.id == disabled_id).values(status="disabled"))
    require_mfa(services, info.id)
    allow(services, info.id, "10.0.0.0/8")
    allow(services, info.id, "192.0.2.0/24")
    allow(services, info.id, "198.51.100.0/24", user_id=enrolled_id)  # a user's own list is not the account's
    allow(services, other.id, "203.0.113.0/24")
    report = report_of(services, info.id)
    assert report.users == 4 and report.mfa_required
    assert (report.mfa_enrolled, report.mfa_unenrolled, report.mfa_exempt) == (1, 2, 1)
    assert report.allow_list_rules == 2
    assert report.never_signed_in == 3  # the admin signed in (a locked name's failures are no sign-in)
    assert report.locked == 1
    assert report_of(services, other.id).locked == 1


def test_an_unconfirmed_enrolment_is_not_counted(services, account, make_user):
    user_id, _ = make_user(account)
    with_user(services, user_id, lambda db, u: totp.start_totp_enrolment(db, services.keyring, u))
    assert report_of(services, account.id).mfa_enrolled == 0


@pytest.mark.parametrize("rules, rating, requires", [
    ({}, compliance.MINIMUM, ["at least 8 characters"]),
    (dict(min_length=10), compliance.MODERATE, ["at least 10 characters"]),
    (dict(min_length=8, upper=True, digit=True), compliance.MODERATE,
     ["at least 8 characters", "an upper-case letter", "a digit"]),
    (dict(min_length=12, upper=True, lower=True, symbol=True), compliance.STRONG,
     ["at least 12 characters", "an upper-case letter", "a lower-case letter",
      "a character that is not a letter or digit"]),
    (dict(min_length=14), compliance.STRONG, ["at least 14 characters"]),
])
def test_policy_strength(rules, rating, requires):
    strength = compliance.policy_strength(rules)
    assert strength.rating == rating
    assert strength.requires == [*requires, "not common or easy to guess"]


def test_the_policy_of_a_basic_plan_is_the_minimum_whatever_its_row_says(services, make_account):
    basic = make_account("basic")
    with services.db.session() as db:
        db.get(PasswordPolicy, basic.id).min_length = 20  # left from an enterprise plan
    report = report_of(services, basic.id)
    assert not report.enterprise and report.policy.rating == compliance.MINIMUM


def test_the_report_costs_the_same_queries_for_many_users(services, make_account, make_user):
    small, large = make_account(), make_account()
    for _ in range(12):
        make_user(large)
    assert count_queries(services, small.id) == count_queries(services, large.id) <= 5  # 5: the audit trail


def count_queries(services, account_id) -> int:
    statements = []

    def count(conn, cursor, statement, *_):
        statements.append(statement)
    with services.db.session() as db:
        account = db.get(Account, account_id)
        event.listen(services.db.engine, "after_cursor_execute", count)
        try:
            compliance.compliance_report(db, account)
        finally:
            event.remove(services.db.engine, "after_cursor_execute", count)
    return len(statements)
