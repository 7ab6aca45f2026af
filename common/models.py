"""The shared schema: every table of every door, job and account feature.

Conventions: columns ending in `_sealed` hold AES-256-GCM ciphertext (common.crypto.seal);
columns ending in `_index` hold HMAC-SHA256 blind indexes for exact lookups. No name, email,
path or secret is ever stored in clear. Times are timezone-aware UTC.
"""
from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    BigInteger, Boolean, CheckConstraint, Date, DateTime, ForeignKey, Index, Integer, LargeBinary,
    String, Text, UniqueConstraint, func, text,
)
from sqlalchemy.dialects.postgresql import ARRAY, CIDR, INET, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from common.db import Base

TIERS = ("basic", "t2", "t5", "t10")
ENTERPRISE_TIERS = ("t2", "t5", "t10")
ROLES = ("admin", "user")
PERMISSIONS = ("read", "write")  # what a user of the account may be given
# What a share or link may carry: a contact's request link ("send me files") uploads only.
SHARE_PERMISSIONS = (*PERMISSIONS, "request")
VERSION_STATES = ("spooled", "stored", "failed")


def _now():
    return mapped_column(DateTime(timezone=True), server_default=func.now())


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class ServiceState(Base):
    """The single row holding the service audit chain (events that belong to no account)."""

    __tablename__ = "service_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    audit_head: Mapped[bytes] = mapped_column(LargeBinary(32))
    audit_count: Mapped[int] = mapped_column(BigInteger, default=0)
    __table_args__ = (CheckConstraint("id = 1", name="singleton"),)


class WrappedKey(Base):
    """A key wrapped by a master key: the service key (account NULL) or an account's keys.

    purpose: `service` (sealing and indexing user names), `data` (an account's names, emails
    and secrets), `file` (an account's file-wrapping key; versioned, the newest is active).
    """

    __tablename__ = "wrapped_keys"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    master_kid: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()
    __table_args__ = (
        UniqueConstraint("account_id", "purpose", "version", postgresql_nulls_not_distinct=True),
        CheckConstraint(_in("purpose", ("service", "data", "file")), name="purpose"),
    )


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    name_index: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    tier: Mapped[str] = mapped_column(String(8))
    audit_head: Mapped[bytes] = mapped_column(LargeBinary(32))
    audit_count: Mapped[int] = mapped_column(BigInteger, default=0)
    audit_folder_id: Mapped[int | None] = mapped_column(
        ForeignKey("nodes.id", ondelete="SET NULL", use_alter=True))
    # The link policy: the longest expiry a share link may have, whether it needs a password,
    # whether "send me files" request links may be made.
    link_max_days: Mapped[int] = mapped_column(Integer, default=30, server_default=text("30"))
    link_password_required: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    request_links_allowed: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    # Which mails users get unless they chose otherwise (users.notify_*).
    notify_uploads_default: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    notify_alerts_default: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    notify_exports_default: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = _now()
    __table_args__ = (CheckConstraint(_in("tier", TIERS), name="tier"),)

    @property
    def is_enterprise(self) -> bool:
        return self.tier in ENTERPRISE_TIERS


class PasswordPolicy(Base):
    __tablename__ = "password_policies"
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    min_length: Mapped[int] = mapped_column(Integer, default=8)
    require_upper: Mapped[bool] = mapped_column(Boolean, default=False)
    require_lower: Mapped[bool] = mapped_column(Boolean, default=False)
    require_digit: Mapped[bool] = mapped_column(Boolean, default=False)
    require_symbol: Mapped[bool] = mapped_column(Boolean, default=False)
    require_mfa: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = _now()


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    username_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    username_index: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    email_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    email_index: Mapped[bytes] = mapped_column(LargeBinary(32))
    role: Mapped[str] = mapped_column(String(8), default="user")
    status: Mapped[str] = mapped_column(String(8), default="active")
    password_hash: Mapped[str | None] = mapped_column(Text)
    password_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    totp_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    totp_enrolled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)  # replay guard
    mfa_exempt: Mapped[bool] = mapped_column(Boolean, default=False)
    home_folder_id: Mapped[int | None] = mapped_column(
        ForeignKey("nodes.id", ondelete="SET NULL", use_alter=True))
    session_version: Mapped[int] = mapped_column(Integer, default=1)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when the policy tightens: the next web sign-in goes to the password page first.
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # The user's own choice of mails; None: the account's default.
    notify_uploads: Mapped[bool | None] = mapped_column(Boolean)
    notify_alerts: Mapped[bool | None] = mapped_column(Boolean)
    notify_exports: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = _now()
    __table_args__ = (
        CheckConstraint(_in("role", ROLES), name="role"),
        CheckConstraint(_in("status", ("active", "disabled")), name="status"),
        Index("ix_users_account_email", "account_id", "email_index"),
    )

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class PasswordLink(Base):
    """A single-use set-password link (an invitation or a reset); only the token's SHA-256 is kept."""

    __tablename__ = "password_links"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(8))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (CheckConstraint(_in("purpose", ("invite", "reset")), name="purpose"),)


class RecoveryCode(Base):
    __tablename__ = "recovery_codes"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SshKey(Base):
    __tablename__ = "ssh_keys"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_type: Mapped[str] = mapped_column(String(64))
    key_blob: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint: Mapped[str] = mapped_column(String(128))
    comment_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = _now()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (UniqueConstraint("user_id", "fingerprint"),)


class AppPassword(Base):
    """An FTPS-only password: `sdap_<public_id>_<secret>`, the secret checked with a keyed hash."""

    __tablename__ = "app_passwords"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    label_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = _now()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Contact(Base):
    """An external person with no login who receives share links."""

    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    email_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    email_index: Mapped[bytes] = mapped_column(LargeBinary(32))
    name_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = _now()
    __table_args__ = (UniqueConstraint("account_id", "email_index"),)


class Node(Base):
    """A folder or a file. Roots (a user's home, the account's Audit Logs) have no parent."""

    __tablename__ = "nodes"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))
    root_kind: Mapped[str | None] = mapped_column(String(8))
    name_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    name_index: Mapped[bytes] = mapped_column(LargeBinary(32))
    current_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("file_versions.id", ondelete="SET NULL", use_alter=True))
    mtime: Mapped[datetime] = _now()
    created_at: Mapped[datetime] = _now()
    __table_args__ = (
        UniqueConstraint("parent_id", "name_index"),
        CheckConstraint(_in("kind", ("folder", "file")), name="kind"),
        CheckConstraint("(parent_id IS NULL) = (root_kind IS NOT NULL)", name="root"),
    )


class FileVersion(Base):
    """One upload of a file: where its ciphertext is, its fingerprints and its wrapped key."""

    __tablename__ = "file_versions"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    storage_key: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    md5: Mapped[bytes] = mapped_column(LargeBinary(16))
    sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    cipher_size: Mapped[int] = mapped_column(BigInteger)
    cipher_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    key_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(8), default="spooled")  # failed: ciphertext lost before ingest
    ingest_failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    spool_id: Mapped[str] = mapped_column(String(64))
    mtime: Mapped[datetime] = _now()
    created_by_id: Mapped[int | None] = mapped_column(BigInteger)  # no FK: versions outlive uploaders
    door: Mapped[str | None] = mapped_column(String(8))  # the door it arrived through
    created_at: Mapped[datetime] = _now()
    stored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (
        CheckConstraint(_in("state", VERSION_STATES), name="state"),
        Index("ix_file_versions_state_spool", "state", "spool_id"),
    )


class PendingPurge(Base):
    """Ciphertext left to erase from the spool and the store after its rows and key are gone."""

    __tablename__ = "pending_purges"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    storage_key: Mapped[str] = mapped_column(String(64))
    spool_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()


class Share(Base):
    """A folder shared with a user of the same account or with a contact, read or write."""

    __tablename__ = "shares"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    grantee_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    grantee_contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    permission: Mapped[str] = mapped_column(String(8))
    # Files that arrived through the share's links since its owner was last told (one mail for many).
    arrivals_pending: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    arrivals_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    __table_args__ = (
        CheckConstraint("(grantee_user_id IS NULL) <> (grantee_contact_id IS NULL)", name="one_grantee"),
        CheckConstraint(_in("permission", SHARE_PERMISSIONS), name="permission"),
        UniqueConstraint("folder_id", "grantee_user_id"),
        UniqueConstraint("folder_id", "grantee_contact_id"),
    )


class ShareLink(Base):
    """A link to a shared folder; only the SHA-256 of its token is stored."""

    __tablename__ = "share_links"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    share_id: Mapped[int | None] = mapped_column(ForeignKey("shares.id", ondelete="CASCADE"))
    folder_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    permission: Mapped[str] = mapped_column(String(8))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    max_uses: Mapped[int | None] = mapped_column(Integer)
    use_count: Mapped[int] = mapped_column(Integer, default=0)
    created_by_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    password_hash: Mapped[str | None] = mapped_column(Text)  # argon2id; None: no password asked
    __table_args__ = (CheckConstraint(_in("permission", SHARE_PERMISSIONS), name="permission"),)


class AuditExport(Base):
    """One account's export of one UTC day: the CSV and XLSX in /Audit Logs and the day's chain head."""

    __tablename__ = "audit_exports"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    day: Mapped[date] = mapped_column(Date)
    csv_node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"))
    xlsx_node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"))
    events: Mapped[int] = mapped_column(BigInteger)
    chain_head: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = _now()
    __table_args__ = (UniqueConstraint("account_id", "day"),)


class ChainCheck(Base):
    """The result of one verification of an account's audit chain (run as a job from the portal)."""

    __tablename__ = "chain_checks"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    events: Mapped[int] = mapped_column(BigInteger)
    head: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    detail: Mapped[str | None] = mapped_column(Text)
    checked_at: Mapped[datetime] = _now()


class Follow(Base):
    """A user follows a folder: uploads into it reach them as a digest mail."""

    __tablename__ = "follows"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True, index=True)
    pending: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    pending_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


class IpRule(Base):
    """An allow-list entry for the whole account (user NULL) or one user."""

    __tablename__ = "ip_rules"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    cidr: Mapped[str] = mapped_column(CIDR)
    created_at: Mapped[datetime] = _now()
    __table_args__ = (
        UniqueConstraint("account_id", "user_id", "cidr", postgresql_nulls_not_distinct=True),
    )


class LoginThrottle(Base):
    """Failed logins of one user name (by blind index, known or not) in the sliding window."""

    __tablename__ = "login_throttles"
    subject: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    failures: Mapped[list[datetime]] = mapped_column(
        ARRAY(DateTime(timezone=True)), server_default=text("'{}'"))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = _now()


class DefenderFailure(Base):
    """One failed login from an address, for the per-IP defender."""

    __tablename__ = "defender_failures"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    ip: Mapped[str] = mapped_column(INET)
    subject: Mapped[bytes] = mapped_column(LargeBinary(32))
    at: Mapped[datetime] = _now()
    __table_args__ = (Index("ix_defender_failures_ip_at", "ip", "at"),)


class IpBan(Base):
    __tablename__ = "ip_bans"
    ip: Mapped[str] = mapped_column(INET, primary_key=True)
    banned_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


class AuditEvent(Base):
    """One append-only event in an account's hash chain (account NULL: the service chain)."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    user_id: Mapped[int | None] = mapped_column(BigInteger)  # no FK: events outlive users
    username_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    ip: Mapped[str | None] = mapped_column(String(64))
    protocol: Mapped[str] = mapped_column(String(8))
    action: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str | None] = mapped_column(String(4))
    path_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    nbytes: Mapped[int | None] = mapped_column("bytes", BigInteger)
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    __table_args__ = (
        UniqueConstraint("account_id", "seq", postgresql_nulls_not_distinct=True),
        Index("ix_audit_events_account_at", "account_id", "at"),
    )


class WebSession(Base):
    """A server-side portal session; the cookie carries a random token, the row its SHA-256.

    Before sign-in the row has no user (it holds the CSRF token and the pending TOTP step)."""

    __tablename__ = "web_sessions"
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    session_version: Mapped[int | None] = mapped_column(Integer)
    mfa_passed: Mapped[bool] = mapped_column(Boolean, default=False)
    data: Mapped[dict] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()
    last_seen_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DoorKey(Base):
    """A public key fingerprint a transfer door published at start-up, shown to users in the
    portal, so that web hosts never read a private key."""

    __tablename__ = "door_keys"
    door: Mapped[str] = mapped_column(String(8), primary_key=True)
    key_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(Text)
    published_at: Mapped[datetime] = _now()


class Spool(Base):
    """A spool host known to the service, so the clock can fan jobs out to its ingest queue."""

    __tablename__ = "spools"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seen_at: Mapped[datetime] = _now()
