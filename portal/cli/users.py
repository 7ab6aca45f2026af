"""`users ...`: create and delete users, lift lockouts, and manage their SSH keys, MFA and app
passwords."""
from __future__ import annotations

import sys

import click
from flask import current_app

from common import accounts, auth
from common.auth import totp
from common.jobs.purge import enqueue_purge
from portal.cli.base import account_user, fail, operator_command, read_secret

users_cli = click.Group("users", help="Manage the users of an account.")


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


@users_cli.command("create")
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("username", metavar="USER")
@click.option("--email", required=True)
@click.option("--admin", "is_admin", is_flag=True, help="Make the user an account admin.")
@click.option("--password", required=True, help="The password, or - to read it from stdin.")
@operator_command
def create_user(session, keyring, account_name, username, email, is_admin, password):
    """Create a user in an account."""
    account = accounts.find_account(session, keyring, account_name)
    user = accounts.create_user(session, keyring, account, username=username, email=email,
                                password=read_secret(password), role="admin" if is_admin else "user")
    click.echo(f"Created user {user.id}.")


@users_cli.command("delete")
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("username", metavar="USER")
@operator_command
def delete_user(session, keyring, account_name, username):
    """Delete a user and everything they own; they remain as a contact."""
    account, user = account_user(session, keyring, account_name, username)
    accounts.delete_user(session, keyring, account, user)
    session.commit()
    enqueue_purge(current_app.extensions["sealdrop"])
    click.echo("Deleted the user and their files; they are kept as a contact.")


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
