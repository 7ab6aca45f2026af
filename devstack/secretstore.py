"""The development secrets: made on the first `make run`, reused by every later one."""
from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from devstack.files import write_private
from devstack.backing import ServiceSecrets


@dataclass(frozen=True)
class DevSecrets:
    """Everything secret about a development stack."""

    services: ServiceSecrets
    secret_key: str = field(repr=False)
    master_keys: str = field(repr=False)
    demo_password: str = field(repr=False)

    @classmethod
    def generate(cls) -> DevSecrets:
        """Fresh random secrets."""
        return cls(services=ServiceSecrets.generate(),
                   secret_key=secrets.token_urlsafe(48),
                   master_keys="k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
                   demo_password=_memorable_password())

    def to_json(self) -> str:
        """Serialised form for the secrets file."""
        return json.dumps({"services": self.services.to_dict(), "secret_key": self.secret_key,
                           "master_keys": self.master_keys,
                           "demo_password": self.demo_password}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> DevSecrets:
        """Parse `to_json()` output."""
        values = json.loads(text)
        return cls(services=ServiceSecrets.from_dict(values["services"]),
                   secret_key=values["secret_key"], master_keys=values["master_keys"],
                   demo_password=values["demo_password"])


def load_or_create(path: Path) -> DevSecrets:
    """The secrets in path, creating the file (mode 0600) on first use."""
    if path.exists():
        return DevSecrets.from_json(path.read_text())
    made = DevSecrets.generate()
    write_private(path, made.to_json())
    return made


def _memorable_password() -> str:
    # Long enough for any password policy the demo account gets, easy to type into a login form.
    words = [secrets.token_hex(3) for _ in range(3)]
    return "Demo-" + "-".join(words) + "-" + str(secrets.randbelow(90) + 10)
