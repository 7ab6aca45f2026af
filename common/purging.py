"""What a deletion in an account's tree needs, shared by the Workspace and account
administration: the per-account tree lock, the lock on a subtree, and the erasure record that
sends a version's ciphertext to the purge (common.jobs.purge)."""
from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from common.models import FileVersion, Node, PendingPurge

TREE_LOCK_SPACE = 0x5EA1  # first key of the per-account advisory lock on moves and deletions


def purge_record(version: FileVersion) -> PendingPurge:
    """The erasure to do for a version: a stored one is in the bucket, which any host can clean."""
    return PendingPurge(storage_key=version.storage_key,
                        spool_id=None if version.state == "stored" else version.spool_id)


def lock_tree(session: Session, account_id: int) -> None:
    """Serialise moves and deletions within the account (transaction-scoped)."""
    session.execute(select(func.pg_advisory_xact_lock((TREE_LOCK_SPACE << 40) + account_id)))


def lock_subtree(session: Session, node: Node) -> None:
    """Lock a node and everything below it: an upload committing there waits, or finished first."""
    session.execute(text("""
        WITH RECURSIVE tree(id) AS (
            SELECT CAST(:root AS bigint) UNION ALL SELECT n.id FROM nodes n JOIN tree t ON n.parent_id = t.id)
        SELECT id FROM nodes WHERE id IN (SELECT id FROM tree) FOR UPDATE"""), {"root": node.id})
