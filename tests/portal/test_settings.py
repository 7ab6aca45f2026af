"""The account's settings page (admins): password rules, required MFA, the IP allow-list with its
lock-out warning, the link policy; the basic plan's locks; the forced password change."""
from __future__ import annotations

import html
import re

import pyotp
import pytest
from sqlalchemy import select

from common.models import Account, AuditEvent, IpRule, PasswordPolicy
from tests.factories import allow, enrol, require_mfa, with_user
from tests.fixtures import STRONG_PASSWORD
from tests.portal.conftest import PortalClient

NEW_PASSWORD = "Lantern-Orchid-Basalt-77-Quartz"
SECRET_SHOWN = re.compile(r'id="totp-secret">([A-Z2-7 ]+)<')
POST_ACTIONS = ["/settings/policy", "/settings/mfa", "/settings/allow-list", "/settings/links"]
ALL_FORMS = {"min_length": "20", "upper": "y", "require_mfa": "y", "cidr": "192.0.2.0/24",
             "link_max_days": "3", "link_password_required": "y"}


def text_of(page) -> str:
    return html.unescape(page.get_data(as_text=True))


def sign_in_as(app, username, password=STRONG_PASSWORD) -> PortalClient:
    client = app.test_client()
    assert client.sign_in(username, password).status_code == 302
    return client


def state_of(services, account_id) -> tuple:
    """Everything the settings page can change, to show that a refused request changed nothing."""
    with services.db.session() as db:
        policy = db.get(PasswordPolicy, account_id)
        account = db.get(Account, account_id)
        rules = sorted(str(c) for c in db.scalars(select(IpRule.cidr).where(IpRule.account_id == account_id)))
        return ((policy.min_length, policy.require_upper, policy.require_lower, policy.require_digit,
                 policy.require_symbol, policy.require_mfa),
                (account.link_max_days, account.link_password_required, account.request_links_allowed), rules)


def admin_changes(services, account_id) -> list[str]:
    with services.db.session() as db:
        return list(db.scalars(select(AuditEvent.detail).where(
            AuditEvent.account_id == account_id, AuditEvent.action == "admin_change").order_by(AuditEvent.seq)))


def rule_id(services, account_id, cidr) -> int:
    with services.db.session() as db:
        return db.scalar(select(IpRule.id).where(IpRule.account_id == account_id, IpRule.cidr == cidr))


def my_address(client) -> str:
    return client.environ_base["REMOTE_ADDR"]


# -- who may --------------------------------------------------------------------------------------

def test_the_page_shows_every_setting(signed_in):
    page = signed_in.get("/settings/")
    assert page.status_code == 200
    body = text_of(page)
    for anchor in ('id="password-policy"', 'id="mfa"', 'id="allow-list"', 'id="link-policy"'):
        assert anchor in body
    assert 'value="30"' in body and "No rules: every address may sign in" in body
    assert my_address(signed_in) in body and "Locked." not in body
    assert 'href="/settings/"' in text_of(signed_in.get("/files/"))  # in the navigation


@pytest.mark.parametrize("url", ["/settings/", "/settings/allow-list/1/remove"])
def test_a_signed_out_visitor_is_sent_to_sign_in(client, url):
    response = client.get(url)
    assert response.status_code == 302 and response.headers["Location"].startswith("/signin")


def test_a_user_who_is_not_an_admin_is_refused(signed_in, services, portal_app, make_user):
    account = signed_in.account
    allow(services, account.id, my_address(signed_in) + "/32")
    rule = rule_id(services, account.id, my_address(signed_in) + "/32")
    _, name = make_user(account)
    user = portal_app.test_client()
    user.environ_base["REMOTE_ADDR"] = my_address(signed_in)
    assert user.sign_in(name, STRONG_PASSWORD).status_code == 302
    before = state_of(services, account.id)
    for url in ("/settings/", f"/settings/allow-list/{rule}/remove"):
        assert user.get(url).status_code == 403
    for url in [*POST_ACTIONS, f"/settings/allow-list/{rule}/remove"]:
        assert user.submit(url, {**ALL_FORMS, "confirmed": my_address(signed_in) + "/32"},
                           form_page="/files/").status_code == 403
    assert state_of(services, account.id) == before
    assert 'href="/settings/"' not in text_of(user.get("/files/"))


@pytest.mark.parametrize("url", POST_ACTIONS + ["/settings/allow-list/{rule}/remove"])
def test_every_change_wants_its_csrf_token(signed_in, services, url):
    account = signed_in.account
    allow(services, account.id, "10.0.0.0/8")
    url = url.format(rule=rule_id(services, account.id, "10.0.0.0/8"))
    before = state_of(services, account.id)
    response = signed_in.post(url, data=ALL_FORMS)
    assert response.status_code == 400 and "This form has expired" in text_of(response)
    assert state_of(services, account.id) == before


# -- password rules and MFA ------------------------------------------------------------------------

def test_the_password_rules_are_saved_and_audited(signed_in, services):
    account = signed_in.account
    response = signed_in.submit("/settings/policy", {"min_length": "14", "upper": "y", "digit": "y"},
                                form_page="/settings/")
    assert response.status_code == 302 and response.headers["Location"] == "/settings/#password-policy"
    assert "The password rules are saved" in text_of(signed_in.get("/settings/"))
    assert state_of(services, account.id)[0] == (14, True, False, True, False, False)
    assert admin_changes(services, account.id)[-1] == (
        "password policy set: min_length=14, require_upper=True, require_lower=False, require_digit=True, "
        "require_symbol=False")
    assert "At least 14 characters." in text_of(signed_in.get("/profile/password"))


@pytest.mark.parametrize("length, message", [("3", "from 8 to 256"), ("", "This field is required"),
                                             ("many", "Not a valid integer")])
def test_a_wrong_minimum_length_is_explained(signed_in, services, length, message):
    before = state_of(services, signed_in.account.id)
    response = signed_in.submit("/settings/policy", {"min_length": length, "upper": "y"}, form_page="/settings/")
    assert response.status_code == 400 and message in text_of(response)
    assert state_of(services, signed_in.account.id) == before


def test_requiring_mfa_is_saved_and_audited(signed_in, services):
    account = signed_in.account
    response = signed_in.submit("/settings/mfa", {"require_mfa": "y"}, form_page="/settings/")
    assert response.status_code == 302 and response.headers["Location"] == "/settings/#mfa"
    assert "Two-step sign-in is now required" in text_of(signed_in.get("/settings/"))
    assert state_of(services, account.id)[0][-1] is True
    assert admin_changes(services, account.id)[-1] == "password policy set: require_mfa=True"
    signed_in.submit("/settings/mfa", {}, form_page="/settings/")
    assert state_of(services, account.id)[0][-1] is False


# -- the basic plan --------------------------------------------------------------------------------

@pytest.fixture
def basic_admin(portal_app, make_account) -> PortalClient:
    info = make_account("basic")
    client = sign_in_as(portal_app, info.admin_username)
    client.account = info
    return client


def test_the_basic_plan_shows_rules_and_allow_list_locked_with_the_reason(basic_admin):
    body = text_of(basic_admin.get("/settings/"))
    assert body.count("Locked.") == 2
    assert "Password rules are available on enterprise plans (t2, t5, t10) only" in body
    assert "IP allow-lists are available on enterprise plans" in body
    assert 'id="policy"' not in body and 'id="add-rule"' not in body  # no forms for them
    assert 'id="mfa-form"' in body and 'id="links"' in body  # every plan has these


@pytest.mark.parametrize("url, data", [("/settings/policy", {"min_length": "12", "upper": "y"}),
                                       ("/settings/allow-list", {"cidr": "10.0.0.0/8"}),
                                       ("/settings/allow-list", {"cidr": "192.0.2.0/24", "confirmed": "192.0.2.0/24"})])
def test_the_basic_plan_is_refused_enterprise_settings_by_the_core(basic_admin, services, url, data):
    before = state_of(services, basic_admin.account.id)
    response = basic_admin.submit(url, data, form_page="/settings/")
    assert response.status_code == 403 and "available on enterprise plans" in text_of(response)
    assert state_of(services, basic_admin.account.id) == before


def test_the_basic_plan_may_require_mfa_and_set_the_link_policy(basic_admin, services):
    basic_admin.submit("/settings/mfa", {"require_mfa": "y"}, form_page="/settings/")
    basic_admin.submit("/settings/links", {"link_max_days": "5"}, form_page="/settings/")
    policy, links, _ = state_of(services, basic_admin.account.id)
    assert policy[-1] is True and links == (5, False, False)


# -- the allow-list --------------------------------------------------------------------------------

def test_a_rule_that_keeps_my_address_is_added_at_once(signed_in, services):
    account = signed_in.account
    response = signed_in.submit("/settings/allow-list", {"cidr": f" {my_address(signed_in)} "},
                                form_page="/settings/")
    assert response.status_code == 302 and response.headers["Location"] == "/settings/#allow-list"
    assert state_of(services, account.id)[2] == [my_address(signed_in) + "/32"]
    assert admin_changes(services, account.id)[-1] == f"allow-list of the account: added {my_address(signed_in)}/32"
    page = text_of(signed_in.get("/settings/"))
    assert "is on the allow-list" in page and f"<code>{my_address(signed_in)}/32</code>" in page


@pytest.mark.parametrize("cidr, message", [("10.0.0.1/8", "did you mean 10.0.0.0/8"),
                                           ("not an address", "Give an IP address or a CIDR range"),
                                           ("", "This field is required")])
def test_a_wrong_rule_is_explained(signed_in, services, cidr, message):
    before = state_of(services, signed_in.account.id)
    response = signed_in.submit("/settings/allow-list", {"cidr": cidr}, form_page="/settings/")
    assert response.status_code == 400 and message in text_of(response)
    assert state_of(services, signed_in.account.id) == before


def test_a_rule_already_on_the_list_is_explained(signed_in, services):
    allow(services, signed_in.account.id, "10.0.0.0/8")
    response = signed_in.submit("/settings/allow-list", {"cidr": "10.0.0.0/8"}, form_page="/settings/")
    assert response.status_code == 400 and "already on this allow-list" in text_of(response)


def test_a_rule_that_shuts_out_my_address_needs_a_confirmation(signed_in, services):
    account = signed_in.account
    warning = signed_in.submit("/settings/allow-list", {"cidr": "192.0.2.0/24"}, form_page="/settings/")
    body = text_of(warning)
    assert warning.status_code == 200 and 'id="lockout-warning"' in body and my_address(signed_in) in body
    assert state_of(services, account.id)[2] == []  # nothing added yet
    # A confirmation given for another rule does not count for this one.
    again = signed_in.submit("/settings/allow-list", {"cidr": "198.51.100.0/24", "confirmed": "192.0.2.0/24"},
                             form_page="/settings/")
    assert 'id="lockout-warning"' in text_of(again) and state_of(services, account.id)[2] == []
    confirmed = signed_in.submit("/settings/allow-list", {"cidr": "192.0.2.0/24", "confirmed": "192.0.2.0/24"},
                                 form_page="/settings/")
    assert confirmed.status_code == 302
    assert state_of(services, account.id)[2] == ["192.0.2.0/24"]
    # The admin is now outside the list: a new sign-in from this address is refused.
    again = signed_in.application.test_client()
    again.environ_base["REMOTE_ADDR"] = my_address(signed_in)
    assert again.sign_in(account.admin_username, account.password).status_code == 200


def test_removing_a_rule_goes_through_a_confirmation_page(signed_in, services):
    account = signed_in.account
    allow(services, account.id, my_address(signed_in))
    allow(services, account.id, "192.0.2.0/24")
    rule = rule_id(services, account.id, "192.0.2.0/24")
    page = signed_in.get(f"/settings/allow-list/{rule}/remove")
    assert page.status_code == 200 and "192.0.2.0/24" in text_of(page) and "lockout-warning" not in text_of(page)
    response = signed_in.submit(f"/settings/allow-list/{rule}/remove")
    assert response.status_code == 302 and response.headers["Location"] == "/settings/#allow-list"
    assert state_of(services, account.id)[2] == [my_address(signed_in) + "/32"]
    assert admin_changes(services, account.id)[-1] == "allow-list of the account: removed 192.0.2.0/24"
    assert "192.0.2.0/24 is off the allow-list" in text_of(signed_in.get("/settings/"))


def test_removing_the_rule_that_lets_me_in_needs_a_confirmation(signed_in, services):
    account = signed_in.account
    mine = my_address(signed_in) + "/32"
    allow(services, account.id, mine)
    allow(services, account.id, "192.0.2.0/24")
    rule = rule_id(services, account.id, mine)
    page = text_of(signed_in.get(f"/settings/allow-list/{rule}/remove"))
    assert 'id="lockout-warning"' in page and "Remove it anyway" in page
    unconfirmed = signed_in.submit(f"/settings/allow-list/{rule}/remove", {"confirmed": ""})
    assert unconfirmed.status_code == 200 and 'id="lockout-warning"' in text_of(unconfirmed)
    assert mine in state_of(services, account.id)[2]
    confirmed = signed_in.submit(f"/settings/allow-list/{rule}/remove", {"confirmed": mine})
    assert confirmed.status_code == 302
    assert state_of(services, account.id)[2] == ["192.0.2.0/24"]


def test_another_accounts_rules_are_not_found(signed_in, services, make_account, make_user):
    other = make_account()
    allow(services, other.id, "203.0.113.0/24")
    theirs = rule_id(services, other.id, "203.0.113.0/24")
    user_id, _ = make_user(signed_in.account)
    allow(services, signed_in.account.id, "198.51.100.0/24", user_id=user_id)  # a user's list, not this page's
    users_rule = rule_id(services, signed_in.account.id, "198.51.100.0/24")
    before = state_of(services, other.id), state_of(services, signed_in.account.id)
    for rule in (theirs, users_rule, theirs + 100000):
        assert signed_in.get(f"/settings/allow-list/{rule}/remove").status_code == 404
        response = signed_in.submit(f"/settings/allow-list/{rule}/remove", {"confirmed": "203.0.113.0/24"},
                                    form_page="/settings/")
        assert response.status_code == 404
    assert (state_of(services, other.id), state_of(services, signed_in.account.id)) == before
    assert "<code>203.0.113.0/24</code>" not in text_of(signed_in.get("/settings/"))


# -- the link policy -------------------------------------------------------------------------------

def test_the_link_policy_is_saved_and_audited(signed_in, services):
    account = signed_in.account
    response = signed_in.submit("/settings/links", {"link_max_days": "90", "link_password_required": "y"},
                                form_page="/settings/")
    assert response.status_code == 302 and response.headers["Location"] == "/settings/#link-policy"
    assert state_of(services, account.id)[1] == (90, True, False)
    assert admin_changes(services, account.id)[-1] == (
        "link policy set: max_days=90, password_required=True, request_links_allowed=False")
    assert 'value="90"' in text_of(signed_in.get("/settings/"))


@pytest.mark.parametrize("days", ["0", "366", "", "soon"])
def test_a_wrong_link_expiry_is_explained(signed_in, services, days):
    before = state_of(services, signed_in.account.id)
    response = signed_in.submit("/settings/links", {"link_max_days": days}, form_page="/settings/")
    assert response.status_code == 400 and 'class="invalid-feedback' in text_of(response)
    assert state_of(services, signed_in.account.id) == before


# -- tightened rules: change the password at the next web sign-in -------------------------------

def tighten(admin: PortalClient) -> None:
    response = admin.submit("/settings/policy", {"min_length": "24", "symbol": "y"}, form_page="/settings/")
    assert response.status_code == 302


def must_change(services, user_id) -> bool:
    return with_user(services, user_id, lambda db, u: u.must_change_password)


def assert_only_the_password_page(client) -> None:
    for url in ("/files/", "/profile/", "/profile/keys", "/settings/"):
        response = client.get(url)
        assert response.status_code == 302 and response.headers["Location"] == "/profile/password", url
    page = client.get("/profile/password")
    assert page.status_code == 200 and 'id="must-change"' in text_of(page)
    assert "At least 24 characters." in text_of(page)


def change_and_reach_my_files(client) -> None:
    response = client.submit("/profile/password", {"current": STRONG_PASSWORD, "new": NEW_PASSWORD,
                                                   "confirm": NEW_PASSWORD})
    assert response.status_code == 302 and response.headers["Location"] == "/profile/"
    assert client.get("/files/").status_code == 200
    assert 'id="must-change"' not in text_of(client.get("/profile/password"))


def test_a_weak_password_must_be_changed_at_the_next_sign_in(signed_in, services, portal_app, make_user):
    user_id, name = make_user(signed_in.account)
    before = sign_in_as(portal_app, name)  # a session from before the change goes on (not signed in again)
    tighten(signed_in)
    assert not must_change(services, user_id)  # the plaintext is known only at sign-in
    client = portal_app.test_client()
    response = client.sign_in(name, STRONG_PASSWORD)
    assert response.status_code == 302 and must_change(services, user_id)
    assert_only_the_password_page(client)
    assert before.get("/files/").headers["Location"] == "/profile/password"  # every session of theirs
    weak = client.submit("/profile/password", {"current": STRONG_PASSWORD, "new": "Quince-Harbor-Velvet-9",
                                               "confirm": "Quince-Harbor-Velvet-9"})
    assert weak.status_code == 400 and must_change(services, user_id)  # still too weak: still only this page
    change_and_reach_my_files(client)
    assert not must_change(services, user_id)
    assert sign_in_as(portal_app, name, NEW_PASSWORD).get("/files/").status_code == 200


def test_a_strong_enough_password_is_left_alone(signed_in, services, portal_app, make_user):
    user_id, name = make_user(signed_in.account)
    signed_in.submit("/settings/policy", {"min_length": "12", "upper": "y"}, form_page="/settings/")
    client = sign_in_as(portal_app, name)
    assert client.get("/files/").status_code == 200 and not must_change(services, user_id)


def test_a_weak_password_must_be_changed_after_the_code_step(signed_in, services, portal_app, make_user):
    user_id, name = make_user(signed_in.account)
    code = enrol(services, user_id)
    tighten(signed_in)
    client = portal_app.test_client()
    assert client.sign_in(name, STRONG_PASSWORD).headers["Location"] == "/signin/code"
    assert client.get("/profile/password").status_code == 302  # the password alone opens nothing
    response = client.submit("/signin/code", {"code": code.now()})
    assert response.status_code == 302 and response.headers["Location"] == "/files/"
    assert_only_the_password_page(client)
    change_and_reach_my_files(client)


def test_a_weak_password_must_be_changed_after_the_mfa_enrolment(signed_in, services, portal_app, make_user):
    user_id, name = make_user(signed_in.account)
    require_mfa(services, signed_in.account.id)
    tighten(signed_in)
    client = portal_app.test_client()
    assert client.sign_in(name, STRONG_PASSWORD).headers["Location"] == "/profile/mfa"
    client.submit("/profile/mfa/start", form_page="/profile/mfa")
    secret = SECRET_SHOWN.search(text_of(client.get("/profile/mfa"))).group(1).replace(" ", "")
    confirmed = client.submit("/profile/mfa/confirm", {"code": pyotp.TOTP(secret).now()}, form_page="/profile/mfa")
    assert confirmed.status_code == 200 and "Two-step sign-in is on" in text_of(confirmed)
    assert_only_the_password_page(client)
    change_and_reach_my_files(client)


def test_a_flag_set_at_an_earlier_sign_in_still_applies(signed_in, services, portal_app, make_user):
    user_id, name = make_user(signed_in.account)
    with_user(services, user_id, lambda db, u: setattr(u, "must_change_password", True))
    client = sign_in_as(portal_app, name)  # the password meets the rules, yet the flag stands
    assert_only_the_password_page_without_rules(client)
    sign_out = client.submit("/signout", form_page="/profile/password")
    assert sign_out.status_code == 302 and sign_out.headers["Location"] == "/signin"
    client = sign_in_as(portal_app, name)
    change_and_reach_my_files(client)
    assert not must_change(services, user_id)


def assert_only_the_password_page_without_rules(client) -> None:
    response = client.get("/files/")
    assert response.status_code == 302 and response.headers["Location"] == "/profile/password"
    assert 'id="must-change"' in text_of(client.get("/profile/password"))
