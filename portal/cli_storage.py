"""Operator commands for keys and erasure: `keys rotate [--account NAME]`, `accounts delete NAME`.

These commit in batches (rotation) or purge after their transaction (deletion), so they take
the services rather than one session from `operator_command`.
"""
from __future__ import annotations

import functools

import click
from flask import current_app

from common import accounts, rotation
from common.errors import SealdropError
from portal.cli import accounts_cli, fail

keys_cli = click.Group("keys", help="Rotate the keys that wrap stored keys.")


def services_command(func):
    """Give the command the app's services; turn failures into one line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(current_app.extensions["sealdrop"], *args, **kwargs)
        except SealdropError as exc:
            fail(exc.message, exc.exit_code)
        except LookupError:
            fail("No such account.", 1)

    return wrapper


def _account_id(services, name: str) -> int:
    with services.db.session() as session:
        return accounts.find_account(session, services.keyring, name).id


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
    report = rotation.rotate_account(services, _account_id(services, account_name), wait_seconds=wait_seconds)
    how = "new" if report.new_version else "resumed"
    click.echo(f"Re-wrapped {report.rewrapped_keys} key(s) under master key "
               f"{services.keyring.master.active.kid}; file-wrapping key version "
               f"{report.file_key_version} ({how}): {report.rewrapped_files} file key(s) re-wrapped, "
               f"{report.deleted_versions} old version(s) deleted.")


@accounts_cli.command("delete")
@click.argument("name")
@services_command
def delete_account(services, name):
    """Delete an account, its users and files for good (its keys are destroyed)."""
    report = rotation.delete_account(services, _account_id(services, name))
    click.echo(f"Deleted account {report.account_id}: {report.versions} file version(s) erased "
               f"or queued for erasure, {report.purged} erased now.")
