"""An account's settings in the core: the link policy, the plan's locks, the lock-out check of
an allow-list change, the forced password change after a tightened policy."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from common import account_settings, accounts, auth
from common.accounts import Actor
from common.auth import allowlist
from common.errors import InvalidInput, NotFound, PermissionDenied, TierRequired
from common.models import Account, AuditEvent, IpRule, User
from tests.factories import allow, with_account, with_user
from tests.fixtures import STRONG_PASSWORD

ADMIN = Actor("web", "192.0.2.1", 1, "someone")


def audit_details(services, account_id) -> list[str]:
    with services.db.session() as db:
        return list(db.scalars(select(AuditEvent.detail).where(
            AuditEvent.account_id == account_id, AuditEvent.action == "admin_change").order_by(AuditEvent.seq)))


def test_link_policy_is_set_and_audited_with_no_names(services, account):
    with_account(services, account.id, lambda db, a: account_settings.set_link_policy(
        db, services.keyring, a, max_days=7, password_required=True, request_links_allowed=False, actor=ADMIN))
    with services.db.session() as db:
        row = db.get(Account, account.id)
        assert (row.link_max_days, row.link_password_required, row.request_links_allowed) == (7, True, False)
    detail = audit_details(services, account.id)[-1]
    assert detail == "link policy set: max_days=7, password_required=True, request_links_allowed=False"


@pytest.mark.parametrize("days", [0, 366, -1])
def test_link_policy_expiry_is_one_day_to_a_year(services, account, days):
    with pytest.raises(InvalidInput, match="between 1 and 365"):
        with_account(services, account.id, lambda db, a: account_settings.set_link_policy(
            db, services.keyring, a, max_days=days, password_required=False, request_links_allowed=True))
    with services.db.session() as db:
        assert db.get(Account, account.id).link_max_days == 30


def test_link_policy_is_for_every_plan(services, make_account):
    basic = make_account("basic")
    with_account(services, basic.id, lambda db, a: account_settings.set_link_policy(
        db, services.keyring, a, max_days=365, password_required=False, request_links_allowed=True))
    with services.db.session() as db:
        assert db.get(Account, basic.id).link_max_days == 365


def test_the_basic_plan_shows_password_rules_and_allow_lists_locked(services, make_account):
    basic, enterprise = make_account("basic"), make_account("t2")
    locked = with_account(services, basic.id, lambda db, a: account_settings.account_settings(db, a).locked)
    assert set(locked) == {"Password rules", "IP allow-lists"}
    assert "enterprise plans" in locked["IP allow-lists"] and "basic plan" in locked["Password rules"]
    assert with_account(services, enterprise.id, lambda db, a: account_settings.account_settings(db, a).locked) == {}


# -- the lock-out check of an allow-list change ------------------------------------------------

@pytest.mark.parametrize("rules, adding, removing, ip, locks_out", [
    ([], "192.0.2.0/24", None, "10.1.2.3", True),           # the first rule, without me
    ([], "10.1.0.0/16", None, "10.1.2.3", False),           # the first rule, with me
    (["10.1.2.3/32"], "192.0.2.0/24", None, "10.1.2.3", False),  # I stay on the list
    (["10.1.2.3/32", "192.0.2.0/24"], None, "10.1.2.3", "10.1.2.3", True),  # taking my own rule off
    (["10.1.2.3/32", "10.1.0.0/16"], None, "10.1.2.3", "10.1.2.3", False),  # another rule still has me
    (["192.0.2.0/24"], None, "192.0.2.0/24", "10.1.2.3", False),  # emptying the list allows everyone
    ([], "::ffff:192.0.2.0/120", None, "192.0.2.9", False),  # mapped ranges compare as IPv4
    ([], "2001:db8::/32", None, None, True),                 # an unknown address is never allowed
])
def test_would_lock_out_evaluates_the_list_after_the_change(services, make_account, rules, adding, removing,
                                                             ip, locks_out):
    info = make_account()
    for cidr in rules:
        allow(services, info.id, cidr)
    assert with_account(services, info.id, lambda db, a: allowlist.would_lock_out(
        db, a, info.admin_id, ip, adding=adding, removing=removing)) is locks_out
    with services.db.session() as db:  # nothing changed
        assert sorted(str(c) for c in db.scalars(select(IpRule.cidr).where(IpRule.account_id == info.id))) \
            == sorted(rules)


def test_would_lock_out_counts_the_admins_own_user_list(services, make_account):
    info = make_account()
    allow(services, info.id, "10.9.0.0/16", user_id=info.admin_id)
    assert with_account(services, info.id, lambda db, a: allowlist.would_lock_out(
        db, a, info.admin_id, "10.9.1.1", adding="10.9.1.0/24")) is False
    assert with_account(services, info.id, lambda db, a: allowlist.would_lock_out(
        db, a, info.admin_id, "10.9.2.1", adding="10.9.1.0/24")) is True


def test_would_lock_out_refuses_an_addition_on_the_basic_plan(services, make_account):
    basic = make_account("basic")
    with pytest.raises(TierRequired):
        with_account(services, basic.id, lambda db, a: allowlist.would_lock_out(
            db, a, basic.admin_id, "10.0.0.1", adding="10.0.0.0/8"))


def test_account_rule_finds_only_this_accounts_own_list(services, make_account, make_user):
    mine, theirs = make_account(), make_account()
    user_id, _ = make_user(mine)
    allow(services, mine.id, "192.0.2.0/24")
    allow(services, mine.id, "198.51.100.0/24", user_id=user_id)
    allow(services, theirs.id, "203.0.113.0/24")
    with services.db.session() as db:
        ids = dict(db.execute(select(IpRule.cidr, IpRule.id).where(
            IpRule.account_id.in_((mine.id, theirs.id)))).all())
        ids = {str(k): v for k, v in ids.items()}
        assert str(allowlist.account_rule(db, mine.id, ids["192.0.2.0/24"]).cidr) == "192.0.2.0/24"
        for other in (ids["198.51.100.0/24"], ids["203.0.113.0/24"], max(ids.values()) + 1000):
            with pytest.raises(NotFound):
                allowlist.account_rule(db, mine.id, other)
        assert [str(r.cidr) for r in allowlist.account_rules(db, mine.id)] == ["192.0.2.0/24"]


# -- the forced change after a tightened policy ------------------------------------------------

def tighten(services, account_id, **rules):
    with_account(services, account_id, lambda db, a: auth.set_policy(db, services.keyring, a, **rules))


def test_a_password_the_tightened_policy_refuses_must_be_changed(services, account, make_user):
    user_id, _ = make_user(account)
    assert with_user(services, user_id, lambda db, u: accounts.require_change_if_weak(db, u, STRONG_PASSWORD)) is False
    tighten(services, account.id, min_length=30)
    assert with_user(services, user_id, lambda db, u: accounts.require_change_if_weak(db, u, STRONG_PASSWORD)) is True
    assert with_user(services, user_id, lambda db, u: u.must_change_password) is True


def test_the_rules_of_a_basic_plan_never_force_a_change(services, make_account, make_user):
    basic = make_account("basic")
    user_id, _ = make_user(basic)
    assert with_user(services, user_id, lambda db, u: accounts.require_change_if_weak(db, u, STRONG_PASSWORD)) is False


def test_changing_the_password_clears_the_flag(services, account, make_user):
    user_id, _ = make_user(account)
    tighten(services, account.id, symbol=True, min_length=12)
    with_user(services, user_id, lambda db, u: accounts.require_change_if_weak(db, u, "VelvetHarborQuince42"))
    assert with_user(services, user_id, lambda db, u: u.must_change_password) is True
    with pytest.raises(PermissionDenied):  # a wrong current password changes nothing, the flag stays
        with_user(services, user_id, lambda db, u: accounts.change_password(
            db, services.keyring, u, "wrong", "Lantern-Orchid-Basalt-77"))
    assert with_user(services, user_id, lambda db, u: u.must_change_password) is True
    with_user(services, user_id, lambda db, u: accounts.change_password(
        db, services.keyring, u, STRONG_PASSWORD, "Lantern-Orchid-Basalt-77"))
    with services.db.session() as db:
        assert db.get(User, user_id).must_change_password is False
