"""The handles a process needs (settings, database, keys), built once from settings."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property

from common import passwords
from common.config import Settings
from common.crypto import Keyring, MasterKeyRing
from common.db import Database

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything `common` needs, passed in explicitly rather than found at import time."""

    settings: Settings
    db: Database = field(init=False)
    keyring: Keyring = field(init=False)

    def __post_init__(self):
        passwords.limit_concurrent_hashes(self.settings.max_concurrent_hashes)
        self.db = Database(self.settings.database_url)
        self.keyring = Keyring(MasterKeyRing(self.settings.master_keys))

    @cached_property
    def spool(self):
        from common.storage import Spool
        return Spool(self.settings.spool_dir, self.settings.spool_id)

    @cached_property
    def store(self):
        from common.storage import ObjectStore
        return ObjectStore(self.settings)

    @cached_property
    def redis(self):
        from redis import Redis
        return Redis.from_url(self.settings.redis_url)

    def prepare_spool_host(self) -> None:
        """Start-up of a process that receives uploads: register its spool, check the bucket.

        A store outage is only a warning here: uploads are accepted into the spool meanwhile,
        and the store checks the bucket before its first write once it is back. A bucket or
        store that does not suit us (versioning, no server-side encryption when asked) raises
        ConfigError: the process stops with its one-line message.
        """
        from common import jobs
        from common.errors import TransientError
        self.spool.ensure()
        jobs.register_spool(self)
        try:
            self.store.ensure_bucket()
        except TransientError:
            log.warning("object store unreachable at start-up; uploads will wait in the spool")

    def close(self) -> None:
        self.db.dispose()
        if "redis" in self.__dict__:
            self.redis.close()
