"""`policy set` and `ip allow|remove`: an account's password and MFA policy, and the IP
allow-lists of an account and its users."""
from __future__ import annotations

import click

from common import accounts, auth
from portal.cli.base import operator_command

policy_cli = click.Group("policy", help="Set an account's password and MFA policy.")
ip_cli = click.Group("ip", help="Manage the IP allow-lists of an account and its users.")


@policy_cli.command("set")
@click.argument("account_name", metavar="ACCOUNT")
@click.option("--min-length", type=int, default=None, help="Minimum password length.")
@click.option("--upper/--no-upper", default=None, help="Require an upper-case letter.")
@click.option("--lower/--no-lower", default=None, help="Require a lower-case letter.")
@click.option("--digit/--no-digit", default=None, help="Require a digit.")
@click.option("--symbol/--no-symbol", default=None, help="Require a non-alphanumeric character.")
@click.option("--require-mfa/--no-require-mfa", default=None, help="Require TOTP MFA on every door.")
@operator_command
def set_policy(session, keyring, account_name, min_length, upper, lower, digit, symbol, require_mfa):
    """Change the password policy; options left out keep their value."""
    account = accounts.find_account(session, keyring, account_name)
    policy = auth.set_policy(session, keyring, account, min_length=min_length, upper=upper,
                             lower=lower, digit=digit, symbol=symbol, require_mfa=require_mfa)
    flags = [name for name, on in (("upper", policy.require_upper), ("lower", policy.require_lower),
                                   ("digit", policy.require_digit), ("symbol", policy.require_symbol),
                                   ("require-mfa", policy.require_mfa)) if on]
    click.echo(f"Policy: min-length {policy.min_length}; {', '.join(flags) or 'no other rules'}.")


@ip_cli.command("allow")
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("cidr", metavar="CIDR")
@click.option("--user", "username", default=None, help="Add to this user's list, not the account's.")
@operator_command
def allow(session, keyring, account_name, cidr, username):
    """Allow an address or CIDR range (enterprise tiers)."""
    account = accounts.find_account(session, keyring, account_name)
    user = accounts.find_account_user(session, keyring, account, username) if username else None
    rule = auth.add_ip_rule(session, keyring, account, cidr, user=user)
    scope = f"user {user.id}" if user else "the account"
    click.echo(f"Allowed {rule.cidr} for {scope}.")


@ip_cli.command("remove")
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("cidr", metavar="CIDR")
@click.option("--user", "username", default=None, help="Remove from this user's list, not the account's.")
@operator_command
def remove(session, keyring, account_name, cidr, username):
    """Take an address or CIDR range off an allow-list (an empty list allows every address)."""
    account = accounts.find_account(session, keyring, account_name)
    user = accounts.find_account_user(session, keyring, account, username) if username else None
    auth.remove_ip_rule(session, keyring, account, cidr, user=user)
    click.echo(f"Removed {auth.parse_cidr(cidr)} from the allow-list of {'user ' + str(user.id) if user else 'the account'}.")
