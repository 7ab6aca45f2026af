"""`shares add`: share a user's folder with another user or a contact (who gets a link by mail)."""
from __future__ import annotations

import click
from flask import current_app

from common import sharing
from common.jobs.invitations import enqueue_share_invitation
from portal.cli.base import account_user, operator_command

shares_cli = click.Group("shares", help="Share folders with users and contacts.")


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
        enqueue_share_invitation(current_app.extensions["sealdrop"], share.id)
        click.echo(f"Shared folder {node.id} ({perm}) as share {share.id}; the invitation with its link is queued.")
    else:
        click.echo(f"Shared folder {node.id} ({perm}) as share {share.id}.")
