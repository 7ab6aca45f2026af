"""The handles a process needs (settings, database, keys), built once from settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from common.config import Settings
from common.crypto import Keyring, MasterKeyRing
from common.db import Database


@dataclass
class Services:
    """Everything `common` needs, passed in explicitly rather than found at import time."""

    settings: Settings
    db: Database = field(init=False)
    keyring: Keyring = field(init=False)

    def __post_init__(self):
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

    def close(self) -> None:
        self.db.dispose()
        if "redis" in self.__dict__:
            self.redis.close()
