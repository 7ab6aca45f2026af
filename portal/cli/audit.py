"""`audit verify` and `audit export`: check an account's audit hash chain, write a day's files."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import click

from common import accounts, audit, audit_export
from portal.cli.base import fail, operator_command, services_command

audit_cli = click.Group("audit", help="Verify and export the audit trail.")


@audit_cli.command("verify")
@click.argument("account_name", metavar="ACCOUNT")
@click.option("--until", "until_day", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Check only the events up to the end of this UTC day (YYYY-MM-DD).")
@operator_command
def verify_audit(session, keyring, account_name, until_day):
    """Check the account's audit hash chain; exit non-zero if any event was altered or removed."""
    account = accounts.find_account(session, keyring, account_name)
    until = audit_export.day_bounds(until_day.date())[1] if until_day else None
    report = audit.verify_chain(session, account.id, until=until)
    if not report.ok:
        fail(f"audit chain broken: {report.problem}", 3)
    click.echo(f"Audit chain intact: {report.count} events, head {report.head.hex()}.")


@audit_cli.command("export")
@click.argument("account_name", metavar="ACCOUNT")
@click.option("--date", "day", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="The UTC day to export (YYYY-MM-DD); yesterday by default.")
@services_command
def export_audit(services, account_name, day):
    """Write (or rewrite) the day's CSV and XLSX into the account's /Audit Logs and print their paths."""
    with services.db.session() as session:
        account_id = accounts.find_account(session, services.keyring, account_name).id
    the_day = day.date() if day else datetime.now(timezone.utc).date() - timedelta(days=1)
    result = audit_export.export_day(services, account_id, the_day)
    for path in result.paths:
        click.echo(path)
    click.echo(f"{result.events} events, chain head {result.chain_head.hex()}.")
