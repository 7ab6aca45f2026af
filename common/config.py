"""Every setting, read from the environment once (12-factor) into one typed object.

`load_settings(environ)` is a pure function of a mapping, so tests build settings directly.
`settings_from_environment()` is what processes call: the real environment, plus
`var/dev.env` from the checkout when `APP_ENV` is unset (the real environment wins).
In production a missing secret is a clear start-up error, never a default.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from common.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_ENV_FILE = REPO_ROOT / "var" / "dev.env"

# Settings without which production must not start: there is no safe default for them.
PRODUCTION_REQUIRED = (
    "DATABASE_URL", "REDIS_URL", "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY",
    "MASTER_KEYS", "SECRET_KEY", "PUBLIC_URL",
)


@dataclass(frozen=True)
class MasterKey:
    kid: str
    key: bytes = field(repr=False)


# URL settings that may carry a password: shown without it wherever settings are printed.
URL_SETTINGS = ("database_url", "redis_url", "smtp_url")
SECRET_QUERY_WORDS = ("password", "secret", "token", "key")


@dataclass(frozen=True, repr=False)
class Settings:
    app_env: str
    database_url: str
    redis_url: str
    s3_endpoint: str
    s3_access_key: str = field(repr=False)
    s3_secret_key: str = field(repr=False)
    s3_bucket: str
    s3_secure: bool
    s3_sse: str
    master_keys: tuple[MasterKey, ...] = field(repr=False)
    secret_key: str = field(repr=False)
    spool_dir: Path
    spool_id: str
    ingest_mode: str
    port: int
    ftps_port: int
    ftps_implicit_port: int | None
    ftps_passive_ports: range
    ftps_masquerade_address: str | None
    ftps_require_session_reuse: bool
    tls_cert_file: Path | None
    tls_key_file: Path | None
    sftp_port: int
    sftp_host_key_file: Path | None
    ftps_processes: int
    sftp_processes: int
    public_url: str
    public_transfer_host: str | None
    public_ftps_port: int | None
    public_sftp_port: int | None
    smtp_url: str | None
    mail_from: str
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    lockout_threshold: int
    lockout_seconds: int
    defender_max_failures: int
    defender_min_users: int
    defender_window_seconds: int
    defender_ban_seconds: int
    max_sessions_per_ip: int
    login_timeout_seconds: int
    max_unauthenticated_per_ip: int
    max_concurrent_hashes: int
    export_tmpdir: str

    def __repr__(self) -> str:
        # Secrets are left out (repr=False fields) and URLs lose their passwords, so settings
        # printed in a log or a traceback give nothing away.
        shown = []
        for item in fields(self):
            if item.repr:
                value = getattr(self, item.name)
                if item.name in URL_SETTINGS:
                    value = redact_url(value)
                shown.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @property
    def is_development(self) -> bool:
        return self.app_env == "development"

    @property
    def transfer_host(self) -> str:
        """The host name users give their FTPS and SFTP clients."""
        return self.public_transfer_host or urlsplit(self.public_url).hostname or "localhost"

    @property
    def shown_ftps_port(self) -> int:
        """The explicit FTPS port as users reach it (a load balancer may map it)."""
        return self.public_ftps_port or self.ftps_port

    @property
    def shown_sftp_port(self) -> int:
        """The SFTP port as users reach it (a load balancer may map it)."""
        return self.public_sftp_port or self.sftp_port

    @property
    def mail_dir(self) -> Path:
        """Where development mail is written as .eml files when no SMTP_URL is set."""
        return self.spool_dir.parent / "mail"


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build the settings from a mapping of environment variables, refusing bad or missing ones."""
    env = {k: v for k, v in environ.items() if v != ""}
    app_env = env.get("APP_ENV", "production")
    if app_env not in ("production", "development", "test"):
        raise ConfigError(f"APP_ENV must be production, development or test, not {app_env!r}")
    if app_env == "production":
        missing = [name for name in PRODUCTION_REQUIRED if name not in env]
        if missing:
            raise ConfigError("missing required setting(s) for production: " + ", ".join(missing))
    dev = app_env != "production"
    s3_secure = _flag(env, "S3_SECURE", default=not dev)
    s3_sse = env.get("S3_SSE", "none")
    if s3_sse not in ("none", "s3"):
        raise ConfigError("S3_SSE must be 'none' or 's3'")
    if app_env == "production" and not s3_secure:
        raise ConfigError("S3_SECURE=0 is refused in production: the object store needs TLS")
    ingest_mode = env.get("INGEST_MODE", "worker")
    if ingest_mode not in ("worker", "inline"):
        raise ConfigError("INGEST_MODE must be 'worker' or 'inline'")
    spool_dir = Path(env.get("SPOOL_DIR", str(REPO_ROOT / "var" / "spool")))
    return Settings(
        app_env=app_env,
        database_url=normalise_database_url(env.get("DATABASE_URL", "")),
        redis_url=env.get("REDIS_URL", ""),
        s3_endpoint=env.get("S3_ENDPOINT", ""),
        s3_access_key=env.get("S3_ACCESS_KEY", ""),
        s3_secret_key=env.get("S3_SECRET_KEY", ""),
        s3_bucket=env.get("S3_BUCKET", "sealdrop"),
        s3_secure=s3_secure,
        s3_sse=s3_sse,
        master_keys=parse_master_keys(env.get("MASTER_KEYS", "")) if "MASTER_KEYS" in env else (),
        secret_key=env.get("SECRET_KEY", ""),
        spool_dir=spool_dir,
        spool_id=_spool_id(env.get("SPOOL_ID") or socket.gethostname()),
        ingest_mode=ingest_mode,
        port=_int(env, "PORT", 5000),
        ftps_port=_int(env, "FTPS_PORT", 2121),
        ftps_implicit_port=_int(env, "FTPS_IMPLICIT_PORT", None),
        ftps_passive_ports=_port_range(env.get("FTPS_PASSIVE_PORTS", "30000-30099")),
        ftps_masquerade_address=env.get("FTPS_MASQUERADE_ADDRESS"),
        ftps_require_session_reuse=_flag(env, "FTPS_REQUIRE_SESSION_REUSE", default=True),
        tls_cert_file=_path(env, "TLS_CERT_FILE"),
        tls_key_file=_path(env, "TLS_KEY_FILE"),
        sftp_port=_int(env, "SFTP_PORT", 2222),
        sftp_host_key_file=_path(env, "SFTP_HOST_KEY_FILE"),
        # A process per core: each door process is one interpreter, one core's worth of Python.
        ftps_processes=_positive(env, "FTPS_PROCESSES", os.cpu_count() or 1),
        sftp_processes=_positive(env, "SFTP_PROCESSES", os.cpu_count() or 1),
        public_url=env.get("PUBLIC_URL", "http://127.0.0.1:5000").rstrip("/"),
        public_transfer_host=env.get("PUBLIC_TRANSFER_HOST"),
        public_ftps_port=_int(env, "PUBLIC_FTPS_PORT", None),
        public_sftp_port=_int(env, "PUBLIC_SFTP_PORT", None),
        smtp_url=env.get("SMTP_URL"),
        mail_from=env.get("MAIL_FROM", "sealdrop@localhost"),
        trusted_proxies=_networks(env.get("TRUSTED_PROXIES", "")),
        lockout_threshold=_int(env, "LOCKOUT_THRESHOLD", 3),
        lockout_seconds=_int(env, "LOCKOUT_SECONDS", 600),
        defender_max_failures=_int(env, "DEFENDER_MAX_FAILURES", 20),
        defender_min_users=_int(env, "DEFENDER_MIN_USERS", 5),
        defender_window_seconds=_int(env, "DEFENDER_WINDOW_SECONDS", 600),
        defender_ban_seconds=_int(env, "DEFENDER_BAN_SECONDS", 600),
        max_sessions_per_ip=_int(env, "MAX_SESSIONS_PER_IP", 50),
        login_timeout_seconds=_positive(env, "LOGIN_TIMEOUT_SECONDS", 30),
        max_unauthenticated_per_ip=_positive(env, "MAX_UNAUTHENTICATED_PER_IP", 10),
        # argon2id takes 19 MiB and a core per check: more at once only queues on the cores.
        max_concurrent_hashes=_positive(env, "MAX_CONCURRENT_HASHES", 2 * (os.cpu_count() or 1)),
        export_tmpdir=env.get("EXPORT_TMPDIR", "/dev/shm"),
    )


def settings_from_environment(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for a process: the environment, over `var/dev.env` when APP_ENV is unset."""
    environ = dict(os.environ if environ is None else environ)
    if "APP_ENV" not in environ and DEV_ENV_FILE.exists():
        environ = {**read_env_file(DEV_ENV_FILE), **environ}
    return load_settings(environ)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse `KEY=value` lines (comments and blank lines ignored, optional quotes stripped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def parse_master_keys(text: str) -> tuple[MasterKey, ...]:
    """Parse `kid:base64,kid:base64` (first is active) into 256-bit master keys."""
    keys = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kid, sep, encoded = item.partition(":")
        if not sep or not kid:
            raise ConfigError("MASTER_KEYS entries must look like kid:base64key")
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"MASTER_KEYS entry {kid!r} is not valid base64") from None
        if len(key) != 32:
            raise ConfigError(f"MASTER_KEYS entry {kid!r} must decode to 32 bytes")
        keys.append(MasterKey(kid, key))
    if not keys:
        raise ConfigError("MASTER_KEYS holds no key")
    if len({k.kid for k in keys}) != len(keys):
        raise ConfigError("MASTER_KEYS has a key id twice")
    return tuple(keys)


def redact_url(url: str | None) -> str | None:
    """The URL with its password (and any secret query parameter) replaced by ***."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, host = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}:***@{host}"
        query = urlencode([(k, "***" if any(w in k.lower() for w in SECRET_QUERY_WORDS) else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "***"


def normalise_database_url(url: str) -> str:
    """Point postgres URLs at the psycopg 3 driver, whatever scheme the provider gives."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _flag(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    value = env.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 0 or 1, not {value!r}")


def _int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    value = env.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {value!r}") from None


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 1:
        raise ConfigError(f"{name} must be at least 1")
    return value


def _path(env: Mapping[str, str], name: str) -> Path | None:
    return Path(env[name]) if name in env else None


def _port_range(text: str) -> range:
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise ConfigError("FTPS_PASSIVE_PORTS must look like 30000-30099") from None
    if not 1024 <= first <= last <= 65535:
        raise ConfigError("FTPS_PASSIVE_PORTS must be an unprivileged range, low-high")
    return range(first, last + 1)


def _networks(text: str) -> tuple:
    try:
        return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in text.split(",") if p.strip())
    except ValueError:
        raise ConfigError("TRUSTED_PROXIES must be a comma-separated list of addresses or CIDRs") from None


def _spool_id(value: str) -> str:
    cleaned = "".join(c for c in value if c.isalnum() or c in "-_")[:64]
    if not cleaned:
        raise ConfigError("SPOOL_ID must contain letters or digits")
    return cleaned
