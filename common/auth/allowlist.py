"""IP allow-lists (enterprise plans): per account and per user, a login must satisfy both.

An empty list allows every address. Entries are single addresses or CIDR ranges, stored in
canonical form (IPv4-mapped IPv6 ranges as IPv4).
"""
from __future__ import annotations

import ipaddress

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from common.accounts import SYSTEM, Actor
from common.auth.addresses import client_ip
from common.auth.admin import audit_change, require_enterprise
from common.crypto import Keyring
from common.errors import AlreadyExists, InvalidInput, NotFound
from common.models import Account, IpRule, User


def is_address_allowed(session: Session, account_id: int, user_id: int, ip: str | None) -> bool:
    """Whether the address satisfies both the account's and the user's list (an empty list allows all)."""
    return _allows(_rules_for(session, account_id, user_id), ip)


def is_address_allowed_after(session: Session, account_id: int, user_id: int, ip: str | None, *,
                             adding: str | None = None, removing: str | None = None) -> bool:
    """Whether the address would still be allowed once `adding` joins the account's list or
    `removing` leaves it (the check behind the warning before an admin locks themselves out)."""
    rules = [(owner, str(cidr)) for owner, cidr in _rules_for(session, account_id, user_id)]
    if removing is not None:
        rules = [(owner, cidr) for owner, cidr in rules if owner is not None or cidr != parse_cidr(removing)]
    if adding is not None:
        rules.append((None, parse_cidr(adding)))
    return _allows(rules, ip)


def would_lock_out(session: Session, account: Account, user_id: int, ip: str | None, *,
                   adding: str | None = None, removing: str | None = None) -> bool:
    """Whether this change of the account's list would refuse the user's sign-in from `ip`
    (an addition is refused first on a basic plan, as add_ip_rule would)."""
    if adding is not None:
        require_enterprise(account, "IP allow-lists")
    return not is_address_allowed_after(session, account.id, user_id, ip, adding=adding, removing=removing)


def account_rules(session: Session, account_id: int) -> list[IpRule]:
    """The account-wide allow-list, in the order the rules were added."""
    return list(session.scalars(select(IpRule).where(IpRule.account_id == account_id, IpRule.user_id.is_(None))
                                .order_by(IpRule.id)))


def account_rule(session: Session, account_id: int, rule_id: int) -> IpRule:
    """One rule of the account-wide list by id; NotFound for any other (another account's too)."""
    rule = session.get(IpRule, rule_id)
    if rule is None or rule.account_id != account_id or rule.user_id is not None:
        raise NotFound("No such rule on this account's allow-list.")
    return rule


def _rules_for(session: Session, account_id: int, user_id: int) -> list[tuple[int | None, str]]:
    return session.execute(select(IpRule.user_id, IpRule.cidr).where(
        IpRule.account_id == account_id,
        or_(IpRule.user_id.is_(None), IpRule.user_id == user_id))).all()


def _allows(rules, ip: str | None) -> bool:
    account_nets = [cidr for owner, cidr in rules if owner is None]
    user_nets = [cidr for owner, cidr in rules if owner is not None]
    return all(_within(ip, nets) for nets in (account_nets, user_nets) if nets)


def parse_cidr(value: str) -> str:
    """A single address or CIDR range in canonical form (IPv4-mapped ranges as IPv4), or InvalidInput."""
    try:
        network = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise InvalidInput("Give an IP address or a CIDR range such as 203.0.113.0/24.") from None
        raise InvalidInput(f"That range has host bits set; did you mean {loose}?") from None
    mapped = ipaddress.ip_network("::ffff:0:0/96")
    if network.version == 6 and network.subnet_of(mapped):
        network = ipaddress.ip_network(f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}")
    return str(network)


def add_ip_rule(session: Session, keyring: Keyring, account: Account, cidr: str, *,
                user: User | None = None, actor: Actor = SYSTEM) -> IpRule:
    """Add an allow-list entry for the account or one of its users (enterprise tiers only)."""
    require_enterprise(account, "IP allow-lists")
    if user is not None and user.account_id != account.id:
        raise NotFound("No such user in this account.")
    network = parse_cidr(cidr)
    user_id = user.id if user is not None else None
    if _find_ip_rule(session, account, network, user_id) is not None:
        raise AlreadyExists("That address or range is already on this allow-list.")
    rule = IpRule(account_id=account.id, user_id=user_id, cidr=network)
    session.add(rule)
    session.flush()
    scope = f"user {user_id}" if user_id else "the account"
    audit_change(session, keyring, actor, account.id, f"allow-list of {scope}: added {network}")
    return rule


def remove_ip_rule(session: Session, keyring: Keyring, account: Account, cidr: str, *,
                   user: User | None = None, actor: Actor = SYSTEM) -> None:
    """Remove an allow-list entry of the account or one of its users, audited."""
    if user is not None and user.account_id != account.id:
        raise NotFound("No such user in this account.")
    user_id = user.id if user is not None else None
    rule = _find_ip_rule(session, account, parse_cidr(cidr), user_id)
    if rule is None:
        raise NotFound("That address or range is not on this allow-list.")
    session.delete(rule)
    scope = f"user {user_id}" if user_id else "the account"
    audit_change(session, keyring, actor, account.id, f"allow-list of {scope}: removed {rule.cidr}")


def _within(ip: str | None, networks) -> bool:
    address = client_ip(ip)
    if address is None:
        return False
    parsed = ipaddress.ip_address(address)
    return any(parsed in ipaddress.ip_network(str(net)) for net in networks)


def _find_ip_rule(session: Session, account: Account, network: str, user_id: int | None) -> IpRule | None:
    return session.scalar(select(IpRule).where(
        IpRule.account_id == account.id, IpRule.cidr == network,
        IpRule.user_id.is_(None) if user_id is None else IpRule.user_id == user_id))
