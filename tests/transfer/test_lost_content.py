"""A file whose ciphertext was lost before ingest, downloaded through the real doors."""
from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import select

from common.errors import IntegrityFailure
from common.jobs.ingest import LOST_CIPHERTEXT_TRIES, ingest_version
from common.models import FileVersion, Node
from tests.doors import DoorError, make_door


@pytest.mark.parametrize("door_name", ["sftp", "ftps"])
def test_a_file_whose_ciphertext_was_lost_fails_at_once(request, door_name, services, account):
    services.store.ensure_bucket()
    door = make_door(request, door_name, services, account)
    door.upload("/lost.bin", os.urandom(70_000))
    version = _newest_version(services, account.id)
    services.spool.remove(version.storage_key)  # the spool volume lost it before ingest
    for _ in range(LOST_CIPHERTEXT_TRIES):  # the worker's tries (RQ retries and the sweeper)
        try:
            ingest_version(services, version.id)
        except IntegrityFailure:
            pass
    started = time.monotonic()
    with pytest.raises(DoorError) as refused:
        door.download("/lost.bin")
    assert refused.value.kind == "failed"
    assert time.monotonic() - started < 10  # no 30 s wait for an ingest that cannot come
    _drop_alert(services, account.id)


def _newest_version(services, account_id: int) -> FileVersion:
    with services.db.session() as session:
        return session.scalars(select(FileVersion).join(Node, Node.id == FileVersion.node_id)
                               .where(Node.account_id == account_id)
                               .order_by(FileVersion.created_at.desc())).first()


def _drop_alert(services, account_id: int) -> None:
    from rq.job import Job
    Job.fetch(f"integrity-alert-{account_id}", connection=services.redis).delete()
