"""`keys rotate [--account NAME]`: re-wrap stored keys under the active master key, and
optionally replace an account's file-wrapping key. Commits in batches, so it takes the services."""
from __future__ import annotations

import click

from common import rotation
from portal.cli.base import account_id, services_command

keys_cli = click.Group("keys", help="Rotate the keys that wrap stored keys.")


@keys_cli.command("rotate")
@click.option("--account", "account_name", metavar="NAME",
              help="Also replace this account's file-wrapping key and re-wrap its file keys.")
@click.option("--wait", "wait_seconds", type=click.FloatRange(min=0), default=rotation.LOCK_WAIT_SECONDS,
              show_default=True, help="Seconds to wait for keys locked by uploads committing meanwhile.")
@services_command
def rotate_keys(services, account_name, wait_seconds):
    """Re-wrap stored keys under the active master key (the first in MASTER_KEYS).

    Exits 1, with the count left under each old master key, if any key could not be re-wrapped.
    """
    if account_name is None:
        moved = rotation.rotate_master(services, wait_seconds=wait_seconds)
        click.echo(f"Re-wrapped {moved} key(s) under master key {services.keyring.master.active.kid}.")
        return
    report = rotation.rotate_account(services, account_id(services, account_name), wait_seconds=wait_seconds)
    how = "new" if report.new_version else "resumed"
    click.echo(f"Re-wrapped {report.rewrapped_keys} key(s) under master key "
               f"{services.keyring.master.active.kid}; file-wrapping key version "
               f"{report.file_key_version} ({how}): {report.rewrapped_files} file key(s) re-wrapped, "
               f"{report.deleted_versions} old version(s) deleted.")
