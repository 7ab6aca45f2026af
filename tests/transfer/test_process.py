"""The frame both transfer doors share: caps from the door table and one total, one config-error line."""
import dataclasses
import os
import subprocess
import sys

import pytest
from pyftpdlib.ioloop import IOLoop

from common.errors import ConfigError
from common.services import Services
from transfer import ftps, sessions
from transfer.sessions import MAX_SESSIONS, SessionLimits
from transfer.sftp import Limits, SftpServer, load_host_key

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("door", ["ftps", "sftp"])
def test_a_door_capped_per_client_refuses_the_next_connection_of_that_client(door):
    admission = sessions.admission(door, SessionLimits(10, max_sessions_per_ip=2, max_unauthenticated_per_ip=1))
    assert admission.admit("192.0.2.1") is not None
    assert admission.admit("192.0.2.1") is None  # one not logged in per client
    assert admission.admit("192.0.2.2") is not None


def test_a_door_without_session_caps_counts_only_the_total():
    admission = sessions.admission("web", SessionLimits(2, max_sessions_per_ip=1, max_unauthenticated_per_ip=1))
    assert admission.admit("192.0.2.1") is not None and admission.admit("192.0.2.1") is not None
    assert admission.admit("192.0.2.1") is None


def test_both_doors_take_every_session_cap_from_the_frame(settings, tls_files, sftp_host_key_file):
    services = Services(dataclasses.replace(settings, tls_cert_file=tls_files.cert, tls_key_file=tls_files.key,
                                            max_sessions_per_ip=7, max_unauthenticated_per_ip=3))
    ftps_server = ftps.FTPSServer(("127.0.0.1", 0), ftps.handler_class(services), ioloop=IOLoop())
    sftp_server = SftpServer(services, load_host_key(sftp_host_key_file),
                             limits=Limits.from_settings(services.settings))
    try:
        for admission in (ftps_server.admission, sftp_server.admission):
            caps = admission.max_total, admission.max_per_client, admission.max_unauthenticated_per_client
            assert caps == (MAX_SESSIONS, 7, 3)
        assert (ftps_server.max_cons, ftps_server.max_cons_per_ip) == (MAX_SESSIONS, 7)  # pyftpdlib's own
    finally:
        ftps_server.close_all()
        services.close()


@pytest.mark.parametrize("door", ["ftps", "sftp"])
def test_both_doors_refuse_a_bad_configuration_with_the_same_one_line(door):
    env = {"PATH": os.environ.get("PATH", ""), "APP_ENV": "production", "PYTHONPATH": REPO_ROOT}
    done = subprocess.run([sys.executable, "-m", f"transfer.{door}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == ConfigError.exit_code, lines
    assert len(lines) == 1 and f"ERROR transfer.{door}: {door} cannot start: missing required" in lines[0], lines
