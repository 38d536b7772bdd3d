"""The Dockerfile's install steps, replayed in a fresh virtual environment (Docker cannot run here).

The test reads the Dockerfile itself -- its ``COPY`` lines, its ``RUN pip
install`` command, ``ENV``, ``USER``, ``VOLUME``, ``HEALTHCHECK`` and
``ENTRYPOINT`` -- copies exactly the listed paths into an empty folder (the
image's ``WORKDIR``), creates a new venv, runs the same pip command, and then
starts the entry point and runs the health check command against it.  What
it proves: the image's file list is complete (``ota serve`` migrates and
serves from an installed package, not from a source tree), and the health
check works.  pip uses its local cache (the image build disables it) so the
test stays within a minute.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from server.process import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in steps:
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_dockerfile_declares_a_slim_non_root_image_with_a_volume_health_check_and_ota_serve() -> None:
    steps = instructions()
    words = dict(steps)
    assert words["FROM"].startswith("python:3.11-slim")
    user = [rest for word, rest in steps if word == "USER"]
    assert user and user[-1] not in ("root", "0")
    data_dir = env_of(steps)["OTA_DATA_DIR"]
    assert data_dir in json.loads(words["VOLUME"])
    assert json.loads(words["ENTRYPOINT"])[:2] == ["ota", "serve"]
    assert env_of(steps)["OTA_ENVIRONMENT"] == "production"  # secrets are required, never generated, in the image
    assert "/healthz" in words["HEALTHCHECK"]


def test_install_steps_succeed_in_a_fresh_venv_and_the_entrypoint_serves(tmp_path: Path) -> None:
    steps = instructions()
    app, venv = tmp_path / "app", tmp_path / "venv"
    app.mkdir()
    for word, rest in steps:  # COPY <src...> <dest> relative to WORKDIR
        if word == "COPY":
            *sources, dest = shlex.split(rest)
            for src in sources:
                target = app / dest / src if dest.endswith("/") or dest == "./" else app / dest
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / src, target)
    pip_commands = [part.strip() for word, rest in steps if word == "RUN"
                    for part in rest.split("&&") if part.strip().startswith("pip install")]
    assert pip_commands, "the Dockerfile installs nothing with pip"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_") and k not in ("DATABASE_URL", "VIRTUAL_ENV",
                                                                                          "PYTHONPATH")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    for command in pip_commands:
        args = shlex.split(command)
        done = subprocess.run([str(bin_dir / "python"), "-m", *args], cwd=app, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    outside = tmp_path / "elsewhere"  # run from a folder with no source tree: only the installed package counts
    outside.mkdir()
    entry = json.loads(dict(steps)["ENTRYPOINT"])
    for argv in (["ota", "--help"], [*entry, "--help"]):
        done = subprocess.run([str(bin_dir / argv[0]), *argv[1:]], cwd=outside, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0 and "usage: ota" in done.stdout, done.stderr

    port = free_port()
    image_env = {**env, **env_of(steps), "OTA_DATA_DIR": str(tmp_path / "data")}  # the volume, here a temp folder
    # The image runs in production (OTA_ENVIRONMENT=production): the operator passes the secrets, as `docker run -e`.
    image_env.update(OTA_ADMIN_TOKEN="a" * 32, OTA_ENROLLMENT_TOKEN="e" * 32)
    # ... and provisions the fleet keys once, the root key going offline (here: outside the volume).
    done = subprocess.run([str(bin_dir / "ota"), "keys", "init", "--root-key-out", str(tmp_path / "offline-root.pem")],
                          cwd=outside, env=image_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    log = tmp_path / "entrypoint.log"
    with log.open("wb") as out:
        server = subprocess.Popen([str(bin_dir / entry[0]), *entry[1:], "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=outside, env=image_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server, 40, log=lambda: log.read_text(errors="replace"),
                   name="the image's entry point")
        check = shlex.split(dict(steps)["HEALTHCHECK"].split(" CMD ", 1)[1].replace("8000", str(port)))
        assert check[0] == "python"
        done = subprocess.run([str(bin_dir / "python"), *check[1:]], env=image_env, capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "data" / "registry.db").exists()  # migrated into the volume
    finally:
        server.terminate()
        server.wait(timeout=20)
