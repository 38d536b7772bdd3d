"""The car installs without the registry: its code and its commands never import the server's dependencies.

The base install (`pip install ota-models`) is the car's light set; FastAPI, SQLAlchemy and the rest
come only with the ``[server]`` extra, and rich only with ``[simulator]``.  The test environment has
them all, so a fresh Python refuses them instead: an import hook that records and fails every import
of a server or simulator dependency (or of our ``server``, ``simulator`` and ``migrations``
packages), then the car's modules are imported and the car's commands run through the real ``ota``
entry point.  The import contracts in pyproject.toml check the same statically; this checks what
really runs, including third parties and imports done inside functions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
V1 = ROOT / "models" / "zoo" / "v1.onnx"

REFUSED = ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "sqlalchemy", "alembic", "psycopg",
           "psycopg_binary", "prometheus_client", "jinja2", "pydantic", "pydantic_settings", "multipart", "rich",
           "server", "simulator", "migrations")

CAR = r'''
import contextlib, importlib.abc, io, json, sys

REFUSED = set(sys.argv[1].split(","))
attempts = []

class RefuseServerSide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            frame = sys._getframe(1)
            while frame.f_code.co_filename.startswith("<frozen"):
                frame = frame.f_back
            attempts.append([name, frame.f_code.co_filename])  # who asked: ours, or a third party's optional import
            raise ModuleNotFoundError(f"the car imported {name}", name=name)
        return None

sys.meta_path.insert(0, RefuseServerSide())

import client, client.agent, client.modelhost, client.agentd, client.decode_worker, models.codec  # noqa: E401
from cli.main import main

codes = {}
for argv in (["--help"], ["agent", "--help"], ["classify", "--help"], ["model", "--help"],
             ["model", "pack", sys.argv[2], "-o", sys.argv[3], "--codec", "lossless", "--json"],
             ["model", "inspect", sys.argv[3], "--json"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            codes[" ".join(argv[:2])] = main(argv)
        except SystemExit as e:  # argparse's --help
            codes[" ".join(argv[:2])] = e.code
    last = out.getvalue().strip().splitlines()[-1] if out.getvalue().strip() else ""
print(json.dumps({"attempts": attempts, "codes": codes, "inspect": json.loads(last),
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in REFUSED)}))
'''


def test_the_car_modules_and_commands_run_with_every_server_dependency_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CAR, ",".join(REFUSED), str(V1), str(tmp_path / "v1.pkg")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ours = [(name, where) for name, where in result["attempts"] if not Path(where).is_relative_to(sys.prefix)]
    assert ours == [], "the car's own code imported a server or simulator dependency"
    # Third parties may try an optional extra and carry on without it (httpx's command line wants rich).
    assert {name.split(".")[0] for name, _ in result["attempts"]} <= {"rich"}
    assert result["loaded"] == []
    assert result["codes"] == {"--help": 0, "agent --help": 0, "classify --help": 0, "model --help": 0,
                               "model pack": 0, "model inspect": 0}
    assert result["inspect"]["codec"] == "lossless"


def test_a_car_install_asked_to_serve_names_the_extra_to_install(tmp_path: Path) -> None:
    """The check above can fail: the same hook stops ``ota serve``, which says what to install."""
    third_parties = ",".join(name for name in REFUSED if name not in ("server", "simulator", "migrations"))
    probe = CAR.split("import client,")[0] + (
        "from cli.main import main\n"
        f"code = main(['serve', '--data-dir', {str(tmp_path / 'data')!r}])\n"
        "print(json.dumps({'code': code, 'attempts': attempts}))\n")
    done = subprocess.run([sys.executable, "-c", probe, third_parties], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 2 and result["attempts"], done.stderr
    assert "needs the [server] extra" in done.stderr and "pip install 'ota-models[server]'" in done.stderr
    assert not (tmp_path / "data" / "registry.db").exists()  # refused before anything was written
