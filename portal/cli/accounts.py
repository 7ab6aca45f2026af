"""`accounts create` and `accounts delete`: an account with its first admin, and its erasure."""
from __future__ import annotations

import click

from common import accounts
from portal.cli.base import account_id, operator_command, read_secret, services_command

accounts_cli = click.Group("accounts", help="Create and delete accounts.")


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


@accounts_cli.command("delete")
@click.argument("name")
@services_command
def delete_account(services, name):
    """Delete an account, its users and files for good (its keys are destroyed)."""
    report = accounts.delete_account(services, account_id(services, name))
    click.echo(f"Deleted account {report.account_id}: {report.versions} file version(s) erased "
               f"or queued for erasure, {report.purged} erased now.")
