"""The handles a process needs (settings, database, keys, spool, store, Redis), built once from
settings. The bottom of the core: it imports no job, workspace or door (a process that receives
uploads prepares its spool with common.jobs.sweep.prepare_spool_host)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from redis import Redis

from common import passwords
from common.config import Settings
from common.crypto import Keyring, MasterKeyRing
from common.db import Database
from common.storage import ObjectStore, Spool


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
    def spool(self) -> Spool:
        return Spool(self.settings.spool_dir, self.settings.spool_id)

    @cached_property
    def store(self) -> ObjectStore:
        return ObjectStore(self.settings)

    @cached_property
    def redis(self) -> Redis:
        return Redis.from_url(self.settings.redis_url)

    def close(self) -> None:
        self.db.dispose()
        if "redis" in self.__dict__:
            self.redis.close()
