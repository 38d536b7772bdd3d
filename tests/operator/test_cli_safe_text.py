"""Device-supplied text never reaches the operator's terminal as control sequences.

A car chooses its tags and its failure reasons; ``ota devices list/show`` used to print them raw, so a
car could retitle the operator's terminal (OSC), clear it (CSI), hide text, or reorder a line with bidi
overrides.  These tests run the real ``ota`` command as a subprocess against a real registry and look
at the bytes it writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.safe_text import safe
from tests.server.factories import Car, create_rollout
from tests.support.live_server import LiveServer

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "models" / "zoo"

HOSTILE = "\x1b]0;pwned\x07|\x1b[2J|[red]x[/red]|\u202eevil|\x9b31m|line\nbreak"
FORBIDDEN = [b"\x1b", b"\x07", "\u202e".encode(), "\x9b".encode()]


def ota(server: LiveServer, *argv: str) -> subprocess.CompletedProcess[bytes]:
    """The real ``ota`` entry point in a child process; the admin token travels in the environment."""
    env = {**os.environ, "OTA_ADMIN_TOKEN": server.admin_token, "OTA_SERVER": server.url}
    return subprocess.run([sys.executable, "-m", "cli.main", *argv], env=env, capture_output=True, timeout=120,
                          cwd=ROOT)


@pytest.fixture
def hostile_car(live_server: LiveServer) -> Car:
    live_server.publish(ZOO / "v1.onnx")
    car = Car(live_server, "evil-car", {"region": HOSTILE, HOSTILE: "k"})
    create_rollout(live_server, line="road-signs", version=1, selector={}, stages=[{"percent": 100}])
    offer = car.poll()
    assert offer is not None
    car.fail(offer, reason=HOSTILE)
    return car


def _assert_clean(output: bytes) -> None:
    for seq in FORBIDDEN:
        assert seq not in output, f"{seq!r} reached the terminal: {output!r}"


def test_devices_list_and_show_escape_control_sequences_tags_and_reasons(live_server: LiveServer,
                                                                         hostile_car: Car) -> None:
    listed = ota(live_server, "devices", "list")
    assert listed.returncode == 0, listed.stderr
    _assert_clean(listed.stdout + listed.stderr)
    assert b"\\x1b]0;pwned\\x07" in listed.stdout  # visible, not swallowed
    assert b"[red]x[/red]" in listed.stdout  # markup is printed literally
    assert len(listed.stdout.strip().splitlines()) == 1  # a newline in a tag cannot forge a second row

    shown = ota(live_server, "devices", "show", hostile_car.device_id)
    assert shown.returncode == 0, shown.stderr
    _assert_clean(shown.stdout + shown.stderr)
    assert b"\\x1b[2J" in shown.stdout and b"\\u202eevil" in shown.stdout
    assert b"line\\nbreak" in shown.stdout  # the failure reason, on the update's own row

    as_json = ota(live_server, "devices", "list", "--json")  # JSON escapes control characters itself
    assert as_json.returncode == 0, as_json.stderr
    _assert_clean(as_json.stdout)
    assert b"\\u001b]0;pwned\\u0007" in as_json.stdout


def test_rollout_show_and_errors_escape_remote_text(live_server: LiveServer, hostile_car: Car) -> None:
    rollouts = ota(live_server, "rollout", "list")
    assert rollouts.returncode == 0, rollouts.stderr
    shown = ota(live_server, "rollout", "show", "1")
    assert shown.returncode == 0, shown.stderr
    _assert_clean(shown.stdout + shown.stderr)
    missing = ota(live_server, "devices", "show", "no\x1b[2Jsuch")  # the server echoes the id in its 404
    assert missing.returncode == 1
    _assert_clean(missing.stdout + missing.stderr)
    assert b"404" in missing.stderr


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text, accents: é ü 日本", "plain text, accents: é ü 日本"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("bell\x07", "bell\\x07"),
    ("c1\x9bcsi", "c1\\x9bcsi"),
    ("del\x7f", "del\\x7f"),
    ("rtl\u202eoverride\u2066isolate", "rtl\\u202eoverride\\u2066isolate"),
    ("tab\there", "tab\\there"),
    ("[bold]literal[/bold]", "[bold]literal[/bold]"),
])
def test_safe_escapes_controls_and_bidi_and_keeps_printable_text(raw: str, shown: str) -> None:
    assert safe(raw) == shown
