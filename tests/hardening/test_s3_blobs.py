"""The S3-compatible blob store, against a real S3-compatible server running locally.

moto's ThreadedMotoServer speaks the S3 HTTP API on a loopback port; it plays
the outside world here (AWS S3, MinIO, Ceph).  The registry itself is the real
one (uvicorn, real database) configured with ``blob_backend="s3"``; models are
published, polled and downloaded over real HTTP, and the bytes are checked.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from client import Agent, AgentConfig
from server.blobs import BlobNotFound
from server.blobs_s3 import BlobStoreUnavailable, S3BlobStore
from server.config import Settings
from tests.support.live_server import LiveServer, run_live_server

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"
CREDENTIALS = {"s3_access_key_id": "testing", "s3_secret_access_key": "testing", "s3_region": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def new_bucket(endpoint: str) -> str:
    name = f"ota-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return name


def s3_settings(endpoint: str, bucket: str, **extra: Any) -> dict[str, Any]:
    return {"blob_backend": "s3", "s3_endpoint_url": endpoint, "s3_bucket": bucket, **CREDENTIALS, **extra}


@pytest.fixture(scope="module")
def s3_registry(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    bucket = new_bucket(s3_endpoint)
    with run_live_server(tmp_path_factory.mktemp("s3srv"), **s3_settings(s3_endpoint, bucket)) as srv:
        srv.publish(ZOO / "v1.onnx")
        srv.publish(ZOO / "v2.onnx")
        yield srv, bucket


def test_blob_store_round_trips_and_refuses_unsafe_or_unknown_keys(s3_endpoint: str, tmp_path: Path) -> None:
    store = S3BlobStore.from_settings(Settings(data_dir=tmp_path, **s3_settings(s3_endpoint, new_bucket(s3_endpoint))))
    digest = store.put(b"model bytes")
    assert digest == hashlib.sha256(b"model bytes").hexdigest()
    assert store.put(b"model bytes") == digest and store.count() == 1  # idempotent, content-addressed
    assert store.get(digest) == b"model bytes" and store.size(digest) == 11 and store.exists(digest)
    assert not store.exists("0" * 64) and not store.exists("../../etc/passwd")
    with pytest.raises(BlobNotFound):
        store.get("0" * 64)
    with pytest.raises(BlobNotFound):
        store.get("../" + digest)
    head = store.client.head_object(Bucket=store.bucket, Key=f"blobs/{digest}")
    assert "immutable" in head["CacheControl"]  # a CDN in front of the bucket may keep it forever


def test_missing_bucket_or_unreachable_store_stops_startup_with_the_bucket_named(
        s3_endpoint: str, tmp_path: Path) -> None:
    with pytest.raises(BlobStoreUnavailable, match="no-such-bucket"):
        S3BlobStore.from_settings(Settings(data_dir=tmp_path, **s3_settings(s3_endpoint, "no-such-bucket")))
    with pytest.raises(BlobStoreUnavailable, match="OTA_S3_BUCKET"):
        S3BlobStore.from_settings(Settings(data_dir=tmp_path, blob_backend="s3"))
    dead = Settings(data_dir=tmp_path, **s3_settings("http://127.0.0.1:9", "b"))
    with pytest.raises(BlobStoreUnavailable, match="127.0.0.1:9"):
        S3BlobStore.from_settings(dead)


def test_published_blobs_live_in_the_bucket_not_on_the_local_disk(s3_registry: tuple[LiveServer, str]) -> None:
    srv, bucket = s3_registry
    assert srv.ctx.blobs.count() >= 2
    assert not (srv.data_dir / "blobs").exists() or not any((srv.data_dir / "blobs").rglob("*"))
    listed = srv.ctx.blobs.client.list_objects_v2(Bucket=bucket)["Contents"]  # type: ignore[attr-defined]
    assert all(obj["Key"].startswith("blobs/") for obj in listed)


def test_artifacts_served_from_s3_are_byte_exact_cacheable_and_resumable(s3_registry: tuple[LiveServer, str]) -> None:
    srv, _ = s3_registry
    versions = srv.admin().get("/api/v1/lines/road-signs/versions").json()
    for v in versions:  # v2's package is stored as a delta on v1: rebuilt from S3 blobs
        pkg = v["packages"]["lossless"]
        r = srv.admin().get(f"/api/v1/artifacts/{pkg['sha256']}")
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == pkg["sha256"]
        assert r.headers["etag"] == f'"{pkg["sha256"]}"' and "immutable" in r.headers["cache-control"]
        half = pkg["bytes"] // 2
        tail = srv.admin().get(f"/api/v1/artifacts/{pkg['sha256']}", headers={"Range": f"bytes={half}-"})
        assert tail.status_code == 206 and tail.content == r.content[half:]


def test_real_agent_installs_a_model_whose_blobs_are_in_s3(s3_registry: tuple[LiveServer, str],
                                                           tmp_path: Path) -> None:
    srv, _ = s3_registry
    agent = Agent(AgentConfig(server_url=srv.url, device_id="car-s3", state_dir=tmp_path,
                              enroll_token=srv.enrollment_token, root_public_key=srv.root_public_key,
                              tags={"region": "eu"}))
    agent.run_once()
    assert agent.running_version == 1  # the stable version, fetched through the registry from S3


def test_redirect_mode_sends_whole_downloads_to_a_presigned_url_and_serves_resumes_itself(
        s3_endpoint: str, tmp_path: Path) -> None:
    bucket = new_bucket(s3_endpoint)
    with run_live_server(tmp_path, **s3_settings(s3_endpoint, bucket, s3_redirect_downloads=True)) as srv:
        pkg = srv.publish(ZOO / "v1.onnx")["packages"]["lossless"]
        r = srv.admin().get(f"/api/v1/artifacts/{pkg['sha256']}")
        assert r.status_code == 307 and r.headers["location"].startswith(s3_endpoint)
        assert "X-Amz-Signature" in r.headers["location"] and r.headers["etag"] == f'"{pkg["sha256"]}"'
        fetched = httpx.get(r.headers["location"], timeout=30)  # no registry credential needed, nor sent
        assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == pkg["sha256"]
        resumed = srv.admin().get(f"/api/v1/artifacts/{pkg['sha256']}", headers={"Range": "bytes=10-"})
        assert resumed.status_code == 206 and resumed.content == fetched.content[10:]
        device = srv.device(srv.enroll("car-x")["device_token"])
        assert device.get(f"/api/v1/artifacts/{pkg['sha256']}").status_code == 403  # not offered: no URL either
