"""Object storage behind one small interface: local disk (embedded) or MinIO/S3.

Objects are written once under random keys and never modified; callers keep each object's
sha256 in the database, so the audit can check that what is stored is what was recorded.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlparse

from .errors import ConfigurationError, Unavailable

STORAGE_DOWN = "image storage is unavailable; please retry shortly"


class StorageError(Unavailable):
    """The object store could not be reached or refused the operation."""


class ObjectNotFound(StorageError):
    status = 404
    code = "not_found"


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def ping(self) -> None: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key


class LocalDiskStore:
    """Objects as files under a root folder; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write object {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object {key}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read object {key}: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete object {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def ping(self) -> None:
        if not (self.root.is_dir() and os.access(self.root, os.W_OK)):
            raise StorageError(f"object store folder {self.root} is not writable")


class MinioStore:
    """MinIO (or any S3) through the MinIO Python SDK."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str,
                 secure: bool = False, region: str | None = None, create_bucket: bool = True):
        from minio import Minio
        import urllib3

        # Short timeouts and few retries: an unreachable store must turn into a quick 503,
        # not a request hanging for minutes.
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=3, read=30),
                                   retries=urllib3.Retry(total=2, backoff_factor=0.2,
                                                         status_forcelist=[500, 502, 503, 504]),
                                   maxsize=16)
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key,
                            secure=secure, region=region, http_client=http)
        self.bucket = bucket
        self._bucket_checked = False
        self._create_bucket = create_bucket

    def _errors(self):
        from minio.error import S3Error
        import urllib3
        return S3Error, urllib3.exceptions.HTTPError

    def _ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        S3Error, HTTPError = self._errors()
        try:
            if not self.client.bucket_exists(self.bucket):
                if not self._create_bucket:
                    raise StorageError(f"bucket {self.bucket} does not exist")
                self.client.make_bucket(self.bucket)
        except (S3Error, HTTPError, OSError) as exc:
            raise StorageError(f"object store unreachable: {exc}") from exc
        self._bucket_checked = True

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._ensure_bucket()
        S3Error, HTTPError = self._errors()
        try:
            self.client.put_object(self.bucket, _check_key(key), io.BytesIO(data), len(data),
                                   content_type=content_type)
        except (S3Error, HTTPError, OSError) as exc:
            raise StorageError(f"cannot write object {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        S3Error, HTTPError = self._errors()
        try:
            resp = self.client.get_object(self.bucket, _check_key(key))
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFound(f"no object {key}") from exc
            raise StorageError(f"cannot read object {key}: {exc}") from exc
        except (HTTPError, OSError) as exc:
            raise StorageError(f"cannot read object {key}: {exc}") from exc

    def delete(self, key: str) -> None:
        S3Error, HTTPError = self._errors()
        try:
            self.client.remove_object(self.bucket, _check_key(key))
        except (S3Error, HTTPError, OSError) as exc:
            raise StorageError(f"cannot delete object {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        S3Error, HTTPError = self._errors()
        try:
            self.client.stat_object(self.bucket, _check_key(key))
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise StorageError(str(exc)) from exc
        except (HTTPError, OSError) as exc:
            raise StorageError(f"object store unreachable: {exc}") from exc

    def ping(self) -> None:
        self._bucket_checked = False
        self._ensure_bucket()


def open_store(url: str) -> ObjectStore:
    """file:///path, or s3://KEY:SECRET@host:port/bucket?secure=false&region=..."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalDiskStore(Path(unquote(parsed.path)))
    if parsed.scheme in ("s3", "minio"):
        query = parse_qs(parsed.query)
        bucket = parsed.path.strip("/")
        if not bucket:
            raise ConfigurationError("object store URL needs a bucket: s3://KEY:SECRET@host:port/bucket")
        return MinioStore(f"{parsed.hostname}:{parsed.port or 9000}", unquote(parsed.username or ""),
                          unquote(parsed.password or ""), bucket,
                          secure=query.get("secure", ["false"])[0].lower() == "true",
                          region=query.get("region", [None])[0])
    raise ConfigurationError(f"unsupported object store URL scheme {parsed.scheme!r}")
