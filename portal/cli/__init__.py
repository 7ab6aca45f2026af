"""The operator CLI (`flask --app portal ...`): stable commands for operators and automation.

One module per command group (`accounts`, `users`, `access` (policy and ip), `keys`, `audit`,
`shares`), sharing only `portal.cli.base`; no command module imports another. Every command
runs in one transaction (or, for batch work, takes the services); any failure is one line on
stderr and a non-zero exit.
"""
from __future__ import annotations

from flask import Flask

from portal.cli.access import ip_cli, policy_cli
from portal.cli.accounts import accounts_cli
from portal.cli.audit import audit_cli
from portal.cli.keys import keys_cli
from portal.cli.shares import shares_cli
from portal.cli.users import users_cli

GROUPS = (accounts_cli, users_cli, audit_cli, shares_cli, keys_cli, policy_cli, ip_cli)


def register(app: Flask) -> None:
    for group in GROUPS:
        app.cli.add_command(group)
