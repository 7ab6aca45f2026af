"""`make run`: the backing services, migrations, the demo account, then every Procfile process.

Everything lives under `var/`: the services' data, the secrets (made once, reused), the TLS
certificate and SSH host key, the spool, development mail and `var/dev.env`. Ctrl-C or SIGTERM
stops honcho (which stops the processes) and then the backing services.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sysconfig
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from devstack import keys, secretstore
from devstack.files import write_env_file
from devstack.backing import (DEV_PORTS, ensure_database, service_environment, start_services,
                               stop_services)


REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASE = "sealdrop"
LONG_RUNNING = ("web", "ftps", "sftp", "worker", "clock")  # web first: honcho gives it $PORT
DEMO = {"account": "demo", "tier": "t10", "admin": "demo", "email": "demo@example.com"}
# Settings bound to the data in var/: the real environment must not redirect them.
STACK_BOUND = frozenset({"APP_ENV", "DATABASE_URL", "REDIS_URL", "S3_ENDPOINT", "S3_ACCESS_KEY",
                         "S3_SECRET_KEY", "S3_SECURE", "MASTER_KEYS"})


class RunError(RuntimeError):
    """A step of `make run` failed; the message is one line for the terminal."""


@dataclass(frozen=True)
class DevPaths:
    """The files of a development stack under one `var/` folder."""

    var: Path

    @property
    def secrets(self) -> Path:
        return self.var / "secrets.json"

    @property
    def env_file(self) -> Path:
        return self.var / "dev.env"

    @property
    def tls_cert(self) -> Path:
        return self.var / "tls" / "cert.pem"

    @property
    def tls_key(self) -> Path:
        return self.var / "tls" / "key.pem"

    @property
    def ssh_host_key(self) -> Path:
        return self.var / "ssh" / "host_ed25519_key"

    @property
    def spool(self) -> Path:
        return self.var / "spool"

    @property
    def mail(self) -> Path:
        return self.var / "mail"


def run(repo_root: Path = REPO_ROOT) -> int:
    """Bring the whole development stack up and keep it running until Ctrl-C; the exit status."""
    paths = prepare_files(repo_root / "var")
    dev_secrets = secretstore.load_or_create(paths.secrets)
    with _sigterm_as_exit():
        try:
            start_services(paths.var, DEV_PORTS, dev_secrets.services)
            ensure_database(DEV_PORTS, dev_secrets.services, DATABASE)
            values = dev_environment(paths, dev_secrets, os.environ)
            write_env_file(paths.env_file, values, header="Written by `make run`; rewritten on "
                           "every run. The real environment overrides it.")
            env = process_environment(values)
            release(repo_root, env)
            seed_demo_account(repo_root, env, dev_secrets.demo_password)
            print_banner(values, dev_secrets.demo_password)
            return run_honcho(repo_root, paths.env_file, env)
        finally:
            _stop_uninterrupted(paths.var)


def prepare_files(var: Path) -> DevPaths:
    """Create var/ and the keys and folders the processes need; return where they are."""
    # 0711: a postgres system account (root without user namespaces) must traverse var/.
    var.mkdir(mode=0o711, exist_ok=True)
    paths = DevPaths(var.resolve())
    for folder in (paths.tls_cert.parent, paths.ssh_host_key.parent):
        folder.mkdir(mode=0o700, exist_ok=True)
    for folder in (paths.spool, paths.mail):
        folder.mkdir(mode=0o700, exist_ok=True)
    keys.ensure_tls_certificate(paths.tls_cert, paths.tls_key)
    keys.ensure_ssh_host_key(paths.ssh_host_key)
    return paths


def dev_environment(paths: DevPaths, dev_secrets: secretstore.DevSecrets,
                    environ: Mapping[str, str]) -> dict[str, str]:
    """Every setting of the development stack; the real environment overrides the free ones."""
    values = {"APP_ENV": "development",
              **service_environment(DEV_PORTS, dev_secrets.services, database=DATABASE),
              "S3_BUCKET": "sealdrop", "S3_SSE": "none",
              "MASTER_KEYS": dev_secrets.master_keys, "SECRET_KEY": dev_secrets.secret_key,
              "SPOOL_DIR": str(paths.spool), "SPOOL_ID": "dev", "INGEST_MODE": "worker",
              "PORT": "5000", "FTPS_PORT": "2121", "FTPS_PASSIVE_PORTS": "30000-30099",
              "FTPS_MASQUERADE_ADDRESS": "", "TLS_CERT_FILE": str(paths.tls_cert),
              "TLS_KEY_FILE": str(paths.tls_key), "SFTP_PORT": "2222",
              "SFTP_HOST_KEY_FILE": str(paths.ssh_host_key), "PUBLIC_URL": "",
              "SMTP_URL": "", "MAIL_FROM": "sealdrop@localhost"}
    for key in values.keys() - STACK_BOUND:
        if key in environ:
            values[key] = environ[key]
    values["PUBLIC_URL"] = values["PUBLIC_URL"] or f"http://127.0.0.1:{values['PORT']}"
    return values


def process_environment(values: Mapping[str, str]) -> dict[str, str]:
    """The environment of release, the operator CLI and honcho: ours, with the venv on PATH."""
    scripts = sysconfig.get_path("scripts")
    path = os.environ.get("PATH", os.defpath)
    return {**os.environ, **values, "PATH": f"{scripts}{os.pathsep}{path}"}


def release(repo_root: Path, env: Mapping[str, str]) -> None:
    """Run the Procfile's `release` command (the migrations)."""
    command = procfile_commands(repo_root / "Procfile")["release"]
    print(f"release: {command}", flush=True)
    if subprocess.run(command, shell=True, cwd=repo_root, env=env).returncode != 0:
        raise RunError("the release command failed (see above)")


def seed_demo_account(repo_root: Path, env: Mapping[str, str], password: str) -> None:
    """Create the demo account with the operator CLI, unless it already exists."""
    command = [_script("flask"), "--app", "portal", "accounts", "create", DEMO["account"],
               "--tier", DEMO["tier"], "--admin", DEMO["admin"], "--email", DEMO["email"],
               "--password", "-"]
    result = subprocess.run(command, cwd=repo_root, env=env, input=password + "\n",
                            capture_output=True, text=True, timeout=120)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 and "already exists" not in output:
        raise RunError(f"seeding the demo account failed: {output or result.returncode}")


def print_banner(values: Mapping[str, str], demo_password: str) -> None:
    """Tell the developer where everything is and how to log in."""
    print(f"""
Sealdrop development stack
  portal   {values['PUBLIC_URL']}
  login    user {DEMO['admin']}  password {demo_password}
  FTPS     127.0.0.1:{values['FTPS_PORT']} (explicit TLS, passive {values['FTPS_PASSIVE_PORTS']})
  SFTP     127.0.0.1:{values['SFTP_PORT']}
  settings var/dev.env (operator commands: .venv/bin/flask --app portal ...)
Ctrl-C stops everything.
""", flush=True)


def run_honcho(repo_root: Path, env_file: Path, env: Mapping[str, str]) -> int:
    """Run every long-running Procfile process under honcho until it exits; its exit status."""
    command = [_script("honcho"), "start", "--app-root", str(repo_root),
               "--procfile", str(repo_root / "Procfile"), "--env", str(env_file), *LONG_RUNNING]
    # honcho gets a session of its own, so a Ctrl-C reaches it once, forwarded by us, and not
    # also straight from the terminal; it then stops every process group it started.
    honcho = subprocess.Popen(command, cwd=repo_root, env=dict(env), start_new_session=True)

    stop_requested = []

    def forward(signum, _frame):
        stop_requested.append(signum)
        if honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = honcho.wait()
        # A stop the developer asked for is a success; otherwise a process died and took all down.
        return 0 if stop_requested else status
    finally:
        if honcho.poll() is None:  # we are leaving on an exception: do not orphan it
            honcho.terminate()
            honcho.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def procfile_commands(procfile: Path) -> dict[str, str]:
    """The Procfile's `name: command` lines as a mapping."""
    commands = {}
    for line in procfile.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.lstrip().startswith("#") and " " not in name.strip():
            commands[name.strip()] = command.strip()
    return commands


def _script(name: str) -> str:
    return str(Path(sysconfig.get_path("scripts")) / name)


def _stop_uninterrupted(var: Path) -> None:
    # A second Ctrl-C must not cut the shutdown short and leave a service running.
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop_services(var)
        print("Backing services stopped.", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    # SIGTERM would otherwise end us without running `finally`, leaving the services running.
    def leave(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
