"""The operator CLI (`flask --app portal ...`): stable commands for operators and automation.

Every command runs in one transaction; any failure is one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import functools
import sys

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from common import accounts, audit, jobs, sharing
from common.errors import SealdropError

accounts_cli = click.Group("accounts", help="Create and delete accounts.")
users_cli = click.Group("users", help="Manage the users of an account.")
audit_cli = click.Group("audit", help="Verify and export the audit trail.")
shares_cli = click.Group("shares", help="Share folders with users and contacts.")


def register(app: Flask) -> None:
    # Importing these attaches their commands to the groups above and defines new groups.
    from portal import cli_access, cli_storage
    for group in (accounts_cli, users_cli, audit_cli, shares_cli, cli_storage.keys_cli,
                  cli_access.policy_cli, cli_access.ip_cli):
        app.cli.add_command(group)


def operator_command(func):
    """Give the command a session and keyring; turn failures into one line and an exit code."""

    @functools.wraps(func)
    @with_appcontext
    def wrapper(*args, **kwargs):
        services = current_app.extensions["sealdrop"]
        try:
            with services.db.session() as session:
                return func(session, services.keyring, *args, **kwargs)
        except SealdropError as exc:
            fail(exc.message, exc.exit_code)

    return wrapper


def fail(message: str, code: int = 1) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def account_user(session, keyring, account_name: str, username: str):
    """The account and its user (a user of another account is refused as unknown)."""
    account = accounts.find_account(session, keyring, account_name)
    return account, accounts.find_account_user(session, keyring, account, username)


def read_secret(value: str) -> str:
    """`-` means: read the secret from standard input (first line), keeping it off argv."""
    if value != "-":
        return value
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        fail("no password on standard input", 2)
    return line


@accounts_cli.command("create")
@click.argument("name")
@click.option("--tier", type=click.Choice(["basic", "t2", "t5", "t10"]), required=True)
@click.option("--admin", "admin_username", required=True, help="User name of the first admin.")
@click.option("--email", required=True, help="Email of the first admin.")
@click.option("--password", required=True, help="The admin's password, or - to read it from stdin.")
@operator_command
def create_account(session, keyring, name, tier, admin_username, email, password):
    """Create an account with its first admin."""
    account, admin = accounts.create_account(
        session, keyring, name=name, tier=tier, admin_username=admin_username,
        admin_email=email, admin_password=read_secret(password))
    click.echo(f"Created account {account.id} with admin user {admin.id}.")


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


@audit_cli.command("verify")
@click.argument("account_name", metavar="ACCOUNT")
@operator_command
def verify_audit(session, keyring, account_name):
    """Check the account's audit hash chain; exit non-zero if any event was altered or removed."""
    account = accounts.find_account(session, keyring, account_name)
    report = audit.verify_chain(session, account.id)
    if not report.ok:
        fail(f"audit chain broken: {report.problem}", 3)
    click.echo(f"Audit chain intact: {report.count} events.")


@users_cli.command("delete")
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("username", metavar="USER")
@operator_command
def delete_user(session, keyring, account_name, username):
    """Delete a user and everything they own; they remain as a contact."""
    account, user = account_user(session, keyring, account_name, username)
    accounts.delete_user(session, keyring, account, user)
    session.commit()
    jobs.enqueue_purge(current_app.extensions["sealdrop"])
    click.echo("Deleted the user and their files; they are kept as a contact.")


@shares_cli.command("add")
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("owner_name", metavar="OWNER")
@click.argument("folder", metavar="FOLDER")
@click.option("--to", "to", required=True, help="A user name of the same account, or an email.")
@click.option("--perm", type=click.Choice(["read", "write"]), required=True)
@operator_command
def add_share(session, keyring, account_name, owner_name, folder, to, perm):
    """Share one of OWNER's folders with a user or an email (a contact, who gets a link)."""
    account, owner = account_user(session, keyring, account_name, owner_name)
    node = sharing.find_folder(session, keyring, owner, folder)
    share = sharing.share_folder(session, keyring, account, owner, node, to=to, permission=perm)
    session.commit()
    if share.grantee_contact_id is not None:
        jobs.enqueue_share_invitation(current_app.extensions["sealdrop"], share.id)
        click.echo(f"Shared folder {node.id} ({perm}) as share {share.id}; the invitation with its link is queued.")
    else:
        click.echo(f"Shared folder {node.id} ({perm}) as share {share.id}.")
