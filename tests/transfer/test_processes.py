"""A door on every core: several processes on one port, sharing the per-client session caps.

The doors run as in production (`python -m transfer.ftps|sftp` with FTPS_PROCESSES or
SFTP_PROCESSES = 2) and are driven by real clients: ftplib over TLS and paramiko.
"""
from __future__ import annotations

import contextlib
import ftplib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from common.admission import SharedAdmission
from common.errors import ConfigError
from tests.fixtures import REPO_ROOT, client_env, free_port_block
from tests.transfer.ftps_door import HOST, SessionReusingFTP_TLS, client_context, quit_quietly
from tests.transfer.sftp_door import connect as sftp_connect
from tests.transfer.sftp_door import fresh_source, write_host_key
from transfer import process

SESSIONS = 16


# -- the pieces ------------------------------------------------------------------------------

def test_passive_ports_are_split_into_disjoint_runs_one_per_process():
    parts = process.split_range(range(30000, 30100), 3)
    assert [len(part) for part in parts] == [33, 33, 34]
    assert parts[0].start == 30000 and parts[-1].stop == 30100
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    with pytest.raises(ConfigError, match="fewer than the 4 FTPS processes"):
        process.split_range(range(30000, 30003), 4)


def _shared(settings, door: str, **caps) -> SharedAdmission:
    return SharedAdmission(settings.redis_url, door, max_total=100, **caps)


def test_two_processes_share_the_per_client_caps(settings):
    door = f"test-{os.getpid()}-{time.monotonic_ns()}"
    first, second = (_shared(settings, door, max_per_client=3, max_unauthenticated_per_client=2)
                     for _ in range(2))
    client = fresh_source()
    a, b = first.admit(client), second.admit(client)
    assert first.admit(client) is None  # two waiting to log in, whichever process asks
    a.logged_in()
    c = second.admit(client)
    assert c is not None and first.admit(client) is None and second.admit(client) is None  # three in all
    assert first.admit(fresh_source()) is not None  # another client is not affected
    b.release()
    assert first.admit(client) is not None


def test_a_killed_process_slots_lapse_with_their_lease(settings):
    door, client = f"test-{os.getpid()}-{time.monotonic_ns()}", fresh_source()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from common.admission import SharedAdmission\n"
        "SharedAdmission.lease_seconds = 1.5\n"
        f"admission = SharedAdmission({settings.redis_url!r}, {door!r}, max_total=9, max_per_client=1,"
        " max_unauthenticated_per_client=1)\n"
        f"assert admission.admit({client!r}) is not None\n"
        "print('admitted', flush=True)\n"
        "time.sleep(60)\n")], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert holder.stdout.readline().strip() == "admitted"
        live = _shared(settings, door, max_per_client=1, max_unauthenticated_per_client=1)
        time.sleep(2.0)  # longer than a lease: the holder renewed it meanwhile
        assert live.admit(client) is None
        holder.kill()
        holder.wait(10)
        deadline = time.monotonic() + 5
        while (slot := live.admit(client)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert slot is not None, "the killed process's slot never lapsed"
    finally:
        holder.kill()
        holder.wait(10)


def test_without_redis_each_process_counts_its_own(settings, caplog):
    unreachable = SharedAdmission("redis://127.0.0.1:1/0", "sftp", max_total=100, max_per_client=2,
                                  max_unauthenticated_per_client=2)
    client = fresh_source()
    assert unreachable.admit(client) is not None and unreachable.admit(client) is not None
    assert unreachable.admit(client) is None  # never unlimited
    assert "shared session counts unavailable" in caplog.text


# -- the doors, two processes each ---------------------------------------------------------

@contextlib.contextmanager
def door_processes(door: str, env: dict[str, str], port: int):
    """`python -m transfer.<door>` until the block ends; yields the child pids."""
    proc = subprocess.Popen([sys.executable, "-m", f"transfer.{door}"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while len(psutil.Process(proc.pid).children()) < 2 or not _listening_in_all(proc.pid, port):
            assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "the door did not start its processes"
            time.sleep(0.2)
        yield proc, [child.pid for child in psutil.Process(proc.pid).children()]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def _listening_in_all(parent: int, port: int) -> bool:
    children = psutil.Process(parent).children()
    return bool(children) and all(
        any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in child.net_connections("tcp"))
        for child in children)


def _holders(children: list[int], port: int) -> dict[int, int]:
    """How many established connections to `port` each child holds."""
    return {pid: sum(1 for c in psutil.Process(pid).net_connections("tcp")
                     if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)
            for pid in children}


def _ftps_env(test_env, tls_files, port: int, passive_base: int, **extra) -> dict[str, str]:
    return {**client_env(test_env), "FTPS_PORT": str(port), "FTPS_PROCESSES": "2",
            "FTPS_PASSIVE_PORTS": f"{passive_base}-{passive_base + 19}", "TLS_CERT_FILE": str(tls_files.cert),
            "TLS_KEY_FILE": str(tls_files.key), **extra}


def _ftps_login(port: int, cert, account, source: str = HOST) -> ftplib.FTP_TLS:
    ftp = SessionReusingFTP_TLS(context=client_context(cert), timeout=20)
    ftp.connect(HOST, port, source_address=(source, 0))
    ftp.auth()
    ftp.login(account.admin_username, account.password)
    ftp.prot_p()
    return ftp


def test_ftps_on_two_processes_serves_every_transfer_and_its_data_connection(test_env, tls_files, account):
    base = free_port_block(21)
    port, passive = base, range(base + 1, base + 21)
    with door_processes("ftps", _ftps_env(test_env, tls_files, port, passive.start), port) as (_, children):
        sessions = [_ftps_login(port, tls_files.cert, account, fresh_source()) for _ in range(SESSIONS)]
        try:
            held = _holders(children, port)
            assert all(count > 0 for count in held.values()), held  # the sessions landed on both

            def round_trip(index: int) -> tuple[int, bytes]:
                ftp, data = sessions[index], os.urandom(200_000 + index)
                data_port = ftplib.parse227(ftp.sendcmd("PASV"))[1]
                ftp.storbinary(f"STOR /p{index}.bin", io.BytesIO(data))
                back = io.BytesIO()
                ftp.retrbinary(f"RETR /p{index}.bin", back.write)
                assert back.getvalue() == data
                return data_port, data

            with ThreadPoolExecutor(8) as pool:
                ports = [data_port for data_port, _ in pool.map(round_trip, range(SESSIONS))]
        finally:
            for ftp in sessions:
                quit_quietly(ftp)
    half = passive.start + len(passive) // 2
    # Each process gives out ports of its own half only, and both halves were used.
    assert all(p in passive for p in ports)
    assert any(p < half for p in ports) and any(p >= half for p in ports)


def test_the_per_client_cap_holds_across_the_processes(test_env, tls_files, account):
    base = free_port_block(21)
    env = _ftps_env(test_env, tls_files, base, base + 1, MAX_SESSIONS_PER_IP="3")
    source = fresh_source()
    with door_processes("ftps", env, base):
        held = [_ftps_login(base, tls_files.cert, account, source) for _ in range(3)]
        try:
            for _ in range(8):  # whichever process each lands on, it is refused
                with socket.create_connection((HOST, base), timeout=10, source_address=(source, 0)) as sock:
                    assert sock.recv(200).startswith(b"421"), "a 4th session from one client was admitted"
            assert all(ftp.voidcmd("NOOP").startswith("200") for ftp in held)
        finally:
            for ftp in held:
                quit_quietly(ftp)


def test_sftp_on_two_processes_spreads_sessions_and_stops_on_sigterm(test_env, account, tmp_path):
    port = free_port_block(1)
    env = {**client_env(test_env), "SFTP_PORT": str(port), "SFTP_PROCESSES": "2",
           "SFTP_HOST_KEY_FILE": str(write_host_key(tmp_path / "host_key"))}
    with door_processes("sftp", env, port) as (proc, children):
        sessions = [sftp_connect(port, account.admin_username, password=account.password, source=fresh_source())
                    for _ in range(SESSIONS)]
        try:
            held = _holders(children, port)
            assert all(count > 0 for count in held.values()), held
            for index, (_, client) in enumerate(sessions):
                data = os.urandom(100_000 + index)
                with client.open(f"/s{index}.bin", "wb") as handle:
                    handle.write(data)
                with client.open(f"/s{index}.bin", "rb") as handle:
                    assert handle.read() == data
        finally:
            for transport, _ in sessions:
                transport.close()
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
        assert proc.returncode == 0, output[-3000:]
        assert output.count("sftp stopped") == 2
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                       for pid in children)


def test_a_process_that_dies_takes_the_door_down_for_its_supervisor(test_env, account, tmp_path):
    port = free_port_block(1)
    env = {**client_env(test_env), "SFTP_PORT": str(port), "SFTP_PROCESSES": "2",
           "SFTP_HOST_KEY_FILE": str(write_host_key(tmp_path / "host_key"))}
    with door_processes("sftp", env, port) as (proc, children):
        os.kill(children[0], signal.SIGKILL)
        output = proc.communicate(timeout=30)[0].decode()
        assert proc.returncode != 0
        assert "ended on its own" in output
        assert not psutil.pid_exists(children[1]) or psutil.Process(children[1]).status() == psutil.STATUS_ZOMBIE


def test_too_few_passive_ports_for_the_processes_is_one_clear_line(test_env, tls_files):
    env = {**_ftps_env(test_env, tls_files, free_port_block(1), 41000), "FTPS_PASSIVE_PORTS": "41000-41000"}
    done = subprocess.run([sys.executable, "-m", "transfer.ftps"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == ConfigError.exit_code
    assert len(lines) == 1 and "fewer than the 2 FTPS processes" in lines[0], lines


def test_the_processes_stop_when_the_first_one_is_killed(test_env, account, tmp_path):
    port = free_port_block(1)
    env = {**client_env(test_env), "SFTP_PORT": str(port), "SFTP_PROCESSES": "2",
           "SFTP_HOST_KEY_FILE": str(write_host_key(tmp_path / "host_key"))}
    with door_processes("sftp", env, port) as (proc, children):
        proc.kill()  # as a supervisor that kills only the pid it started
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 20
        while any(_running(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(pid) for pid in children), "a door process outlived the door"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
