"""Operator commands for access: lockouts, SSH keys, MFA, app passwords, policy and allow-lists.

Importing this module attaches the `users` commands to portal.cli's group; `policy_cli` and
`ip_cli` are new groups for the app's CLI. Every command is one transaction through
`operator_command`: failures are one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import sys

import click

from common import accounts, auth, totp
from portal.cli import account_user, fail, operator_command, users_cli

policy_cli = click.Group("policy", help="Set an account's password and MFA policy.")
ip_cli = click.Group("ip", help="Manage the IP allow-lists of an account and its users.")


def _read_key_file(path: str) -> str:
    """The key file's text (`-`: standard input), read with a size cap."""
    try:
        if path == "-":
            return sys.stdin.read(auth.MAX_KEY_LINE + 1)
        with open(path, encoding="utf-8") as handle:
            text = handle.read(auth.MAX_KEY_LINE + 1)
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the key file: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}", 2)
    if len(text) > auth.MAX_KEY_LINE:
        fail("the key file is too large for one public key", 2)
    return text


@users_cli.command("unlock")
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("username", metavar="USER")
@operator_command
def unlock_user(session, keyring, account_name, username):
    """Lift a user's lockout and clear their failed-login count."""
    _, user = account_user(session, keyring, account_name, username)
    auth.unlock_user(session, keyring, user)
    click.echo(f"Unlocked user {user.id}.")


@users_cli.command("add-key")
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("username", metavar="USER")
@click.argument("key_file", metavar="PUBKEY_FILE")
@operator_command
def add_key(session, keyring, account_name, username, key_file):
    """Authorise an OpenSSH public key (a .pub file, or - for stdin) for SFTP."""
    _, user = account_user(session, keyring, account_name, username)
    key = auth.add_ssh_key(session, keyring, user, _read_key_file(key_file))
    click.echo(f"Added key {key.fingerprint} ({key.key_type}) to user {user.id}.")


@users_cli.command("mfa-enrol")
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("username", metavar="USER")
@operator_command
def mfa_enrol(session, keyring, account_name, username):
    """Enrol a user in TOTP and print the otpauth URI once (it replaces any earlier secret)."""
    _, user = account_user(session, keyring, account_name, username)
    click.echo(totp.enrol_totp(session, keyring, user))


@users_cli.command("app-password")
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("username", metavar="USER")
@click.option("--label", default="created by an operator", help="What the password is for.")
@operator_command
def app_password(session, keyring, account_name, username, label):
    """Create an FTPS app password and print it once."""
    _, user = account_user(session, keyring, account_name, username)
    click.echo(auth.create_app_password(session, keyring, user, label))


@users_cli.command("mfa-exempt")
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("username", metavar="USER")
@click.option("--off", "lift", is_flag=True, help="End the exemption.")
@operator_command
def mfa_exempt(session, keyring, account_name, username, lift):
    """Exempt a named service user from the account's MFA requirement (audited)."""
    _, user = account_user(session, keyring, account_name, username)
    auth.set_mfa_exempt(session, keyring, user, not lift)
    click.echo(f"User {user.id} is {'no longer ' if lift else ''}exempt from MFA.")


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
