"""Blobs on any S3-compatible store (AWS S3, MinIO, Ceph, moto), behind the ``BlobStore`` interface.

Selected with ``OTA_BLOB_BACKEND=s3`` (see ``server/config.py``).  Keys are
``<prefix><sha256>``; blobs are content-addressed and immutable, so ``put``
skips the upload when the key exists, and every object is written with a
long ``Cache-Control`` so a CDN in front of the bucket may keep it forever.
S3's PUT is atomic (an object is visible whole or not at all), so there is
no temp-file dance as in ``LocalBlobStore``.  ``presigned_url`` lets the
download route redirect a client to the store instead of streaming the
bytes itself (``OTA_S3_REDIRECT_DOWNLOADS``).

boto3 is an optional dependency (the ``s3`` extra); it is imported here only,
and this module is imported only when the S3 backend is configured.
"""

from __future__ import annotations

import hashlib
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from server.blobs import BlobNotFound, is_sha256
from server.config import Settings

IMMUTABLE = "public, max-age=31536000, immutable"


class BlobStoreUnavailable(RuntimeError):
    """The S3-compatible store cannot be reached or refused the request (not a missing blob)."""


def _missing(error: ClientError) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


class S3BlobStore:
    """Content-addressed blobs as objects ``<prefix><sha256>`` in one bucket."""

    def __init__(self, client: Any, bucket: str, prefix: str = "blobs/", presign_ttl_s: int = 300) -> None:
        self.client, self.bucket, self.prefix, self.presign_ttl_s = client, bucket, prefix, presign_ttl_s

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        """A store for ``settings.s3_*``; credentials from the settings or boto3's usual chain.

        Raises:
            BlobStoreUnavailable: the bucket is missing or the store does not answer.
        """
        if not settings.s3_bucket:
            raise BlobStoreUnavailable("OTA_BLOB_BACKEND=s3 needs OTA_S3_BUCKET (the bucket to keep blobs in)")
        client = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id, aws_secret_access_key=settings.s3_secret_access_key,
            config=BotoConfig(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"},
                              connect_timeout=5, read_timeout=60),
        )
        store = cls(client, settings.s3_bucket, settings.s3_prefix, settings.s3_presign_ttl_s)
        store.check_bucket()
        return store

    def check_bucket(self) -> None:
        """Raises BlobStoreUnavailable with the endpoint and bucket when the bucket cannot be used."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as e:
            raise BlobStoreUnavailable(f"S3 bucket {self.bucket!r} at {self.client.meta.endpoint_url} is not "
                                       f"usable ({e}); create it or fix OTA_S3_ENDPOINT_URL / credentials") from e

    def _key(self, sha256: str) -> str:
        if not is_sha256(sha256):
            raise BlobNotFound(sha256)  # never build a key from untrusted text
        return f"{self.prefix}{sha256}"

    def _head(self, sha256: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(sha256))
        except ClientError as e:
            if _missing(e):
                return None
            raise BlobStoreUnavailable(f"S3 HEAD {sha256[:12]} failed: {e}") from e

    def put(self, data: bytes) -> str:
        """Store ``data`` (idempotent) and return its SHA-256.

        Raises:
            BlobStoreUnavailable: the upload failed (nothing is stored under the digest).
        """
        digest = hashlib.sha256(data).hexdigest()
        if self._head(digest) is not None:
            return digest
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(digest), Body=data,
                                   ContentType="application/octet-stream", CacheControl=IMMUTABLE,
                                   Metadata={"sha256": digest})
        except (ClientError, BotoCoreError) as e:
            raise BlobStoreUnavailable(f"S3 PUT of blob {digest[:12]} ({len(data)} bytes) failed: {e}") from e
        return digest

    def get(self, sha256: str) -> bytes:
        """Raises BlobNotFound, or BlobStoreUnavailable when the store fails."""
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(sha256))
            return obj["Body"].read()
        except ClientError as e:
            if _missing(e):
                raise BlobNotFound(sha256) from e
            raise BlobStoreUnavailable(f"S3 GET {sha256[:12]} failed: {e}") from e

    def exists(self, sha256: str) -> bool:
        try:
            return self._head(sha256) is not None
        except BlobNotFound:
            return False

    def size(self, sha256: str) -> int:
        head = self._head(sha256)
        if head is None:
            raise BlobNotFound(sha256)
        return int(head["ContentLength"])

    def count(self) -> int:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        return sum(page.get("KeyCount", 0) for page in pages)

    def presigned_url(self, sha256: str) -> str:
        """A time-limited GET URL for the blob (the client fetches it from the store, Range included)."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(sha256)}, ExpiresIn=self.presign_ttl_s)
