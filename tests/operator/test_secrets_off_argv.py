"""Tokens stay out of the process list: every token flag has a file form and an environment variable.

``--enroll-token=SECRET`` shows in ``ps`` and ``/proc/PID/cmdline`` to every user of the machine.  These
tests start a real ``ota agent`` with the token in a file (or the environment) against a real registry,
read its ``/proc/PID/cmdline`` while it runs, and check that it enrolled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.live_server import LiveServer

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "models" / "zoo"


def _start_agent(server: LiveServer, state: Path, device_id: str, *extra: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "cli.main", "agent", "--server", server.url, "--device-id", device_id,
           "--state-dir", str(state), "--root-key", str(server.data_dir / "root.pub"), "--poll-interval", "0.3", "-q",
           *extra]
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTA_")}
    return subprocess.Popen(cmd, cwd=ROOT, env={**base, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _wait_enrolled(server: LiveServer, device_id: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while server.admin().get(f"/api/v1/devices/{device_id}").status_code != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise AssertionError(f"the agent never enrolled (exit {proc.poll()}):\n{out[-3000:]}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()


@pytest.mark.parametrize("how", ["file", "env"])
def test_ota_agent_takes_the_enrolment_token_from_a_file_or_the_environment_not_argv(
        live_server: LiveServer, tmp_path: Path, how: str) -> None:
    live_server.publish(ZOO / "v1.onnx")
    secret = live_server.enrollment_token
    token_file = tmp_path / "enroll-token"
    token_file.write_text(secret + "\n")
    token_file.chmod(0o600)
    device = f"argv-{how}"
    if how == "file":
        proc = _start_agent(live_server, tmp_path / "car", device, "--enroll-token-file", str(token_file))
    else:
        proc = _start_agent(live_server, tmp_path / "car", device, env={"OTA_ENROLL_TOKEN": secret})
    try:
        _wait_enrolled(live_server, device, proc)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"agent" in cmdline and device.encode() in cmdline  # it is the agent's own command line
        assert secret.encode() not in cmdline
    finally:
        _stop(proc)


def test_a_missing_token_file_is_a_clear_error(live_server: LiveServer, tmp_path: Path) -> None:
    proc = _start_agent(live_server, tmp_path / "car", "no-file", "--enroll-token-file", str(tmp_path / "absent"))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert b"cannot read the enrollment token file" in out and str(tmp_path / "absent").encode() in out


def test_admin_commands_take_the_token_from_a_file(live_server: LiveServer, tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(live_server.admin_token + "\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTA_")}
    done = subprocess.run([sys.executable, "-m", "cli.main", "devices", "list", "--server", live_server.url,
                           "--data-dir", str(tmp_path / "nowhere"), "--token-file", str(token_file)],
                          cwd=ROOT, env=base, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert b"no devices" in done.stdout


def test_model_host_hands_its_agent_daemon_the_config_without_putting_the_token_on_argv(
        live_server: LiveServer, tmp_path: Path) -> None:
    from client import AgentConfig
    from client.modelhost import ModelHost

    live_server.publish(ZOO / "v1.onnx")
    secret = live_server.enrollment_token
    host = ModelHost(AgentConfig(server_url=live_server.url, device_id="hosted", state_dir=tmp_path / "car",
                                 enroll_token=secret, root_public_key=live_server.root_public_key,
                                 poll_interval_s=0.2), poll=True)
    host.start()
    try:
        assert host.pid is not None
        cmdline = Path(f"/proc/{host.pid}/cmdline").read_bytes()
        assert b"client.agentd" in cmdline
        assert secret.encode() not in cmdline
        deadline = time.monotonic() + 60  # and the daemon still enrols with it
        while live_server.admin().get("/api/v1/devices/hosted").status_code != 200:
            assert time.monotonic() < deadline, "the daemon never enrolled"
            time.sleep(0.1)
    finally:
        host.close()
