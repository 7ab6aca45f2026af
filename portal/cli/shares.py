"""`shares add`: share a user's folder with another user or a contact (who gets a link by mail)."""
from __future__ import annotations

import click
from flask.cli import with_appcontext

from common import sharing, shares
from portal.cli.base import account_user, read_secret, services_command

shares_cli = click.Group("shares", help="Share folders with users and contacts.")


@shares_cli.command("add")
@click.argument("account_name", metavar="ACCOUNT")
@click.argument("owner_name", metavar="OWNER")
@click.argument("folder", metavar="FOLDER")
@click.option("--to", "to", required=True, help="A user name of the same account, or an email.")
@click.option("--perm", type=click.Choice(["read", "write", "request"]), required=True,
              help="request: a contact's upload-only link (when the account allows request links).")
@click.option("--expires-days", type=int, default=None, help="A contact's link lasts this many days "
              "(default 30, at most the account's link policy).")
@click.option("--link-password", default=None, help="A password for a contact's link ('-' reads it from stdin).")
@click.option("--max-downloads", type=int, default=None, help="Whole-file downloads a contact's link allows.")
@with_appcontext
@services_command
def add_share(services, account_name, owner_name, folder, to, perm, expires_days, link_password, max_downloads):
    """Share one of OWNER's folders with a user or an email (a contact, who gets a link)."""
    with services.db.session() as session:
        _, owner = account_user(session, services.keyring, account_name, owner_name)
        owner_id, folder_id = owner.id, sharing.find_folder(session, services.keyring, owner, folder).id
    link = shares.LinkOptions(expires_days, read_secret(link_password) if link_password else None, max_downloads)
    shared = shares.share_with(services, owner_id, folder_id, to=to, permission=perm, link=link)
    if shared.link_id is not None:
        click.echo(f"Shared folder {folder_id} ({perm}) as share {shared.share_id}; "
                   "the invitation with its link is queued.")
    else:
        click.echo(f"Shared folder {folder_id} ({perm}) as share {shared.share_id}.")
