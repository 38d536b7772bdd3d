"""A real registry in a thread of this process: uvicorn on a free port, fresh data dir, migrated database.

The tests' ``live_server`` fixtures and ``bench/faults.py`` use it; ``server.process`` is its sibling
for a real ``ota serve`` child process.  Use it as a context manager::

    with run_in_thread(tmp / "srv", database=None) as srv:   # SQLite in the data dir
        srv.publish(ZOO / "v1.onnx")

What you get (``LiveServer``): ``url`` (base URL, no trailing slash),
``admin_token``, ``enrollment_token``, ``public_key`` (raw Ed25519 bytes of the online key),
``root_public_key`` (the root key cars are provisioned with; the file is ``data_dir / "root.pub"``),
``data_dir``, ``database_url``, ``settings``, ``ctx`` (the app's context, for
driving services directly), and helpers ``admin()`` (an httpx.Client with the
admin token), ``publish(path_or_bytes, line=..., codecs=...)``,
``enroll(device_id, tags)`` and ``device(token)``.

Database: a SQLite file in the data dir, or, when ``database`` names a PostgreSQL cluster
(e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``), a freshly created database
``ota_test_<random>`` on it, dropped when the server stops (``server.scratchdb``).  Either way the
schema is built with ``alembic upgrade head``, as ``ota serve`` does.

The app is the real one from ``server.app.create_app``; HTTP goes over a real socket.  Codecs
default to ``lossless`` here because it packs in well under a second;
pass ``codecs="deep"`` (publish) or ``default_codecs=...`` (server) to test others.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from models import zoo
from models.zoo import ZOO_DIR
from server.app import create_app
from server.config import Settings
from server.db import upgrade_to_head
from server.deps import AppContext
from server.httpproto import HTTP_PROTOCOL
from server.scratchdb import temporary_database

FAST_SETTINGS: dict[str, Any] = {
    "default_codecs": "lossless",
    "last_seen_flush_s": 0.5,
    "rollout_tick_s": 0.5,
}


@dataclass
class LiveServer:
    url: str
    admin_token: str
    enrollment_token: str
    public_key: bytes  # the online key that signs offers
    root_public_key: bytes  # what cars are provisioned with (AgentConfig.root_public_key)
    data_dir: Path
    database_url: str
    settings: Settings
    ctx: AppContext
    _clients: list[httpx.Client] = field(default_factory=list)

    def _client(self, token: str | None, timeout: float) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._clients.append(client)
        return client

    def admin(self, timeout: float = 120.0) -> httpx.Client:
        """An httpx client that sends the admin token (closed when the server stops)."""
        return self._client(self.admin_token, timeout)

    def anonymous(self, timeout: float = 30.0) -> httpx.Client:
        return self._client(None, timeout)

    def device(self, token: str, timeout: float = 30.0) -> httpx.Client:
        return self._client(token, timeout)

    def publish(self, model: Path | bytes, line: str = "road-signs", codecs: str | None = None,
                probe: Path | bytes | None = None, **form: Any) -> dict[str, Any]:
        """Publish a model over HTTP; returns the VersionOut JSON (raises on non-201).

        A shipped zoo file (``models/zoo/vN.onnx``) is published with its contract (``models.zoo.contract``)
        unless ``contract`` is given, as ``ota demo`` does; ``probe`` (an .npz path or bytes, e.g.
        ``models/zoo/probe.npz``) is sent as the line's calibration images.
        """
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        fields = {k: str(v) for k, v in form.items() if v is not None}
        if codecs:
            fields["codecs"] = codecs
        if "contract" not in fields and isinstance(model, Path) and model.resolve().parent == ZOO_DIR:
            fields["contract"] = json.dumps(zoo.contract(model.stem).to_dict())
        files = {"file": ("model.onnx", data)}
        if probe is not None:
            files["probe"] = ("probe.npz", probe if isinstance(probe, bytes) else Path(probe).read_bytes())
        r = self.admin().post(f"/api/v1/lines/{line}/versions", files=files, data=fields)
        if r.status_code != 201:
            raise AssertionError(f"publish failed: {r.status_code} {r.text}")
        return r.json()

    def enroll(self, device_id: str, tags: dict[str, str] | None = None) -> dict[str, Any]:
        """Enroll a device; returns the EnrollOut JSON (device_token, public_key, key_id, ...)."""
        r = self._client(self.enrollment_token, 30.0).post("/api/v1/devices/enroll",
                                                            json={"device_id": device_id, "tags": tags or {}})
        if r.status_code != 201:
            raise AssertionError(f"enroll failed: {r.status_code} {r.text}")
        return r.json()

    def reenroll(self, device_id: str, tags: dict[str, str] | None = None) -> dict[str, Any]:
        """Rotate an enrolled device's token the operator's way: reauthorise it, then enrol it again."""
        r = self.admin().post(f"/api/v1/devices/{device_id}/reauthorize", json={})
        if r.status_code != 200:
            raise AssertionError(f"reauthorize failed: {r.status_code} {r.text}")
        return self.enroll(device_id, tags)

    def close_clients(self) -> None:
        for c in self._clients:
            c.close()
        self._clients.clear()


@contextmanager
def run_in_thread(data_dir: Path, *, database: str | None = None, socket_sndbuf: int | None = None,
                  **overrides: Any) -> Iterator[LiveServer]:
    """Start a migrated registry on a free port; stop it (and drop its database) on exit.

    ``database``: a PostgreSQL cluster to make a throwaway database on; None for SQLite in ``data_dir``.

    ``overrides`` are Settings fields (e.g. ``default_codecs="lossless,deep"``, ``keyframe_interval=2``).
    ``socket_sndbuf`` shrinks the kernel send buffer of every accepted connection (Linux inherits it
    from the listening socket), so that a client that stops reading stalls the server quickly, as a
    slow cellular link would, instead of the whole artifact vanishing into loopback buffers.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    with temporary_database(database) as pg_url:
        url = pg_url or f"sqlite:///{(data_dir / 'registry.db').resolve()}"
        upgrade_to_head(url)
        settings = Settings(**{"environment": "development", "data_dir": data_dir, "database_url": url,
                               **FAST_SETTINGS, **overrides})
        app = create_app(settings)
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when the
        # listening socket says TCP, and without it every request waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if socket_sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, socket_sndbuf)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=30,
                                               http=HTTP_PROTOCOL))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"ota-{port}")
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError("live server did not start (see the log above)")
            time.sleep(0.02)
        ctx: AppContext = app.state.ctx
        live = LiveServer(url=f"http://127.0.0.1:{port}", admin_token=ctx.settings.admin_token or "",
                          enrollment_token=ctx.settings.enrollment_token or "",
                          public_key=base64.b64decode(ctx.signer.public_b64), root_public_key=ctx.keys.root_public,
                          data_dir=data_dir, database_url=url,
                          settings=ctx.settings, ctx=ctx)
        try:
            yield live
        finally:
            live.close_clients()
            server.should_exit = True
            thread.join(timeout=15)
            sock.close()
