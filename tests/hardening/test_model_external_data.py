"""A published model never reads the server's files (issue #15, finding 1).

ONNX "external data" lets any tensor of a model say "my bytes are in file X
at offset O".  ONNX Runtime resolves X against the working directory of a
process that loads the model from bytes, so an upload could make the smoke
test read the signing key and ship it, signed, to every car.  Each variant
below hides the reference somewhere else in the graph; every one must be
refused with 400 ``invalid_model`` and store nothing, and no answer may carry
a secret's bytes.  The server's data directory sits inside its working
directory here, as with ``ota serve --data-dir .ota-data``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models.zoo import ZOO_DIR
from tests.hardening import external_data
from tests.server.factories import stored_state
from tests.support.live_server import LiveServer, run_live_server

PUBLISH = "/api/v1/lines/leaky/versions"


@pytest.fixture(scope="module")
def planted() -> Iterator[dict[str, Any]]:
    """A registry whose data dir is under the working directory, a secret file in each, and their paths
    relative to the working directory (what an attacker writes into the model)."""
    cwd = Path.cwd()
    data_dir = Path(tempfile.mkdtemp(prefix=".ota-extdata-", dir=cwd))
    cwd_secret = cwd / f".ota-extdata-secret-{secrets.token_hex(4)}"
    try:
        cwd_secret.write_bytes(b"-----BEGIN CWD-SECRET " + secrets.token_hex(16).encode() + b"\n")
        with run_live_server(data_dir) as srv:
            (data_dir / "planted-secret").write_bytes(b"-----BEGIN DATA-SECRET " + secrets.token_hex(16).encode())
            files = {"signing key": data_dir / "signing-key.pem", "data dir secret": data_dir / "planted-secret",
                     "working dir secret": cwd_secret}
            assert all(p.is_file() for p in files.values()), files
            yield {"srv": srv, "files": files}
    finally:
        cwd_secret.unlink(missing_ok=True)
        shutil.rmtree(data_dir, ignore_errors=True)


def _secret_pieces(path: Path) -> list[bytes]:
    """What a leak would carry: the N bytes read from the start and from offset 11, and the whole file."""
    data = path.read_bytes()
    n = external_data.N
    return [data, data[:n], data[11 : 11 + n]]


@pytest.mark.parametrize("target", ["signing key", "data dir secret", "working dir secret"])
@pytest.mark.parametrize("variant", list(external_data.VARIANTS))
def test_model_with_external_data_is_refused_and_nothing_is_stored(
        planted: dict[str, Any], variant: str, target: str) -> None:
    srv: LiveServer = planted["srv"]
    path: Path = planted["files"][target]
    model = external_data.VARIANTS[variant](os.path.relpath(path, Path.cwd()))
    before = stored_state(srv)

    r = srv.admin().post(PUBLISH, files={"file": ("leak.onnx", model)})

    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_model", r.text
    detail = r.json()["detail"]
    assert "external data is not allowed" in detail and "save_as_external_data=False" in detail, detail
    for piece in _secret_pieces(path):
        assert piece not in r.content
    assert stored_state(srv) == before


def test_refusal_names_the_node_that_hides_the_reference(planted: dict[str, Any]) -> None:
    srv: LiveServer = planted["srv"]
    location = os.path.relpath(planted["files"]["signing key"], Path.cwd())
    r = srv.admin().post(PUBLISH, files={"file": ("leak.onnx", external_data.loop_body_constant(location))})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "body_c" in detail and "Loop" in detail, detail


def test_a_clean_model_still_publishes_after_the_refusals(planted: dict[str, Any]) -> None:
    srv: LiveServer = planted["srv"]
    # a real image classifier (the registry serves image classifiers: a [1, 11] vector input is a 422 of its own)
    version = srv.publish(ZOO_DIR / "v1.onnx", line="leaky")
    assert version["version"] == 1
