"""`audit verify`: check an account's audit hash chain."""
from __future__ import annotations

import click

from common import accounts, audit
from portal.cli.base import fail, operator_command

audit_cli = click.Group("audit", help="Verify and export the audit trail.")


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
