"""The frame both transfer doors share: caps from the door table, one config-error line."""
import os
import subprocess
import sys

import pytest

from common.errors import ConfigError
from transfer import process

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("door", ["ftps", "sftp"])
def test_a_door_capped_per_client_refuses_the_next_connection_of_that_client(door):
    admission = process.session_admission(door, 10, per_client=2, unauthenticated_per_client=1)
    assert admission.admit("192.0.2.1") is not None
    assert admission.admit("192.0.2.1") is None  # one not logged in per client
    assert admission.admit("192.0.2.2") is not None


def test_a_door_without_session_caps_counts_only_the_total():
    admission = process.session_admission("web", 2, per_client=1, unauthenticated_per_client=1)
    assert admission.admit("192.0.2.1") is not None and admission.admit("192.0.2.1") is not None
    assert admission.admit("192.0.2.1") is None


@pytest.mark.parametrize("door", ["ftps", "sftp"])
def test_both_doors_refuse_a_bad_configuration_with_the_same_one_line(door):
    env = {"PATH": os.environ.get("PATH", ""), "APP_ENV": "production", "PYTHONPATH": REPO_ROOT}
    done = subprocess.run([sys.executable, "-m", f"transfer.{door}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == ConfigError.exit_code, lines
    assert len(lines) == 1 and f"ERROR transfer.{door}: {door} cannot start: missing required" in lines[0], lines
