"""What every command group shares: the session and services wrappers, the one-line failure,
reading a secret from stdin, and finding an account and its user."""
from __future__ import annotations

import functools
import sys

import click
from flask import current_app
from flask.cli import with_appcontext

from common import accounts
from common.errors import SealdropError


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


def services_command(func):
    """Give the command the app's services; turn failures into one line and an exit code.

    For commands that commit in batches (rotation) or purge after their transaction (deletion).
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(current_app.extensions["sealdrop"], *args, **kwargs)
        except SealdropError as exc:
            fail(exc.message, exc.exit_code)
        except LookupError:
            fail("No such account.", 1)

    return wrapper


def fail(message: str, code: int = 1) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def account_user(session, keyring, account_name: str, username: str):
    """The account and its user (a user of another account is refused as unknown)."""
    account = accounts.find_account(session, keyring, account_name)
    return account, accounts.find_account_user(session, keyring, account, username)


def account_id(services, name: str) -> int:
    """The id of the named account, looked up in a session of its own."""
    with services.db.session() as session:
        return accounts.find_account(session, services.keyring, name).id


def read_secret(value: str) -> str:
    """`-` means: read the secret from standard input (first line), keeping it off argv."""
    if value != "-":
        return value
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        fail("no password on standard input", 2)
    return line
