"""The artifact store on S3-compatible object storage (AWS S3, MinIO, Ceph, moto…).

Selected by ``LAYERPRUNE_STORAGE_URL=s3://bucket/optional/prefix``; ``LAYERPRUNE_S3_ENDPOINT_URL``
points at a non-AWS server. Credentials and region come from boto3's usual sources
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_DEFAULT_REGION``, profiles, instance roles).

Publishing (``put_dir``) hashes each file while uploading it — one read per file — as a single PUT
below ``s3_multipart_threshold_bytes`` and as a multipart upload above it. Object storage has no
rename, so atomicity is kept by the caller's order plus cleanup here: the worker writes artifact
rows only after ``put_dir`` returns, and when any upload fails every object this call wrote is
deleted and open multipart uploads are aborted before the error propagates. Errors surface as
``StorageError`` (code ``storage_error``) or ``DiskFullError`` (code ``disk_full``), which the
worker turns into the job's ``error``; ``storage_failure`` maps any OSError the same way for the
local store.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from layerprune.core.errors import LayerPruneError
from layerprune.storage import StoredFile, _clean_key, list_files

PART_BYTES = 8 * 1024 * 1024  # multipart part size (S3 needs ≥ 5 MiB for every part but the last)


class StorageError(LayerPruneError):
    """The artifact store failed (unreachable, refused, bucket missing…)."""

    code = "storage_error"


class DiskFullError(StorageError):
    """No space left where artifacts or scratch files are written."""

    code = "disk_full"


def storage_failure(exc: BaseException) -> StorageError:
    """The typed error of a storage failure (publishing, or a full scratch disk): ENOSPC/EDQUOT → disk_full,
    else storage_error."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left on the worker's disk or the artifact store: {exc}")
    return StorageError(f"storing artifacts failed: {type(exc).__name__}: {exc}")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ("bucket", "some/prefix"); the prefix may be empty."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"storage url must look like s3://bucket/prefix, got {url!r}")
    return parts.netloc, parts.path.strip("/")


class S3Store:
    """ArtifactStore on one bucket, every key below ``prefix``."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", *,
                 multipart_threshold: int = 64 * 1024 * 1024, part_bytes: int = PART_BYTES,
                 presign_seconds: int = 300, cache_dir: Path | None = None) -> None:
        self.client = client
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.multipart_threshold = multipart_threshold
        self.part_bytes = part_bytes
        self.presign_seconds = presign_seconds

    @classmethod
    def from_settings(cls, settings: Any) -> S3Store:
        import boto3  # noqa: PLC0415 - boto3 is optional (layerprune[s3])
        from botocore.config import Config  # noqa: PLC0415 - boto3 is optional (layerprune[s3])

        bucket, prefix = parse_s3_url(settings.storage_url)
        client = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url or None,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"}))
        return cls(client, bucket, prefix, multipart_threshold=settings.s3_multipart_threshold_bytes,
                   presign_seconds=settings.s3_presign_seconds, cache_dir=settings.data_dir / "s3-cache")

    # -------------------------------------------------------------- keys

    def _object_key(self, storage_key: str) -> str:
        key = _clean_key(storage_key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # -------------------------------------------------------------- protocol

    def put_dir(self, local_dir: Path, key_prefix: str) -> list[StoredFile]:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - boto3 is optional (layerprune[s3])

        prefix = _clean_key(key_prefix)
        written: list[str] = []
        stored: list[StoredFile] = []
        try:
            for rel in list_files(Path(local_dir)):
                rel_posix = rel.as_posix()
                storage_key = f"{prefix}/{rel_posix}"
                object_key = self._object_key(storage_key)
                written.append(object_key)  # before the upload: a half-done one must be cleaned too
                size, sha = self._upload_file(Path(local_dir) / rel, object_key)
                stored.append(StoredFile(path=rel_posix, size_bytes=size, sha256=sha, storage_key=storage_key))
        except BaseException as exc:
            self._delete_keys(written)
            if isinstance(exc, (BotoCoreError, ClientError, OSError)):
                raise storage_failure(exc) from exc
            raise
        # Like the local store, a publish replaces the prefix: drop objects an earlier (crashed)
        # attempt left there that this output does not have.
        new = {f["storage_key"] for f in stored}
        self._delete_keys([self._object_key(k) for k in self.list_keys(prefix) if k not in new])
        return stored

    def open(self, storage_key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream bytes ``start`` .. ``end`` (exclusive; None = to the end) of one object."""
        from botocore.exceptions import ClientError  # noqa: PLC0415 - boto3 is optional (layerprune[s3])

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._object_key(storage_key)}
        if start > 0 or end is not None:
            kwargs["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        try:
            body = self.client.get_object(**kwargs)["Body"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(storage_key) from exc
            raise storage_failure(exc) from exc

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(1024 * 1024)
            finally:
                body.close()

        return chunks()

    def local_path(self, storage_key: str) -> Path | None:
        """A local copy of a stored file or directory (``tenant/job_x``), or None when absent.

        Workers need a directory for ``job:<id>`` model references. Published outputs never
        change, so a copy downloaded once into ``cache_dir`` is reused; the store is still asked
        what exists on every call, so deleted artifacts (retention) are never served from cache.
        Without a ``cache_dir`` nothing is downloaded and the answer is None.
        """
        if self.cache_dir is None:
            return None
        key = _clean_key(storage_key)
        rels = [k[len(key) + 1 :] for k in self.list_keys(key)]
        target = self.cache_dir / key
        if not rels:
            if not self._exists(key):
                return None
            rels, target = [""], self.cache_dir / key
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
        try:
            for rel in rels:
                dst = tmp / rel if rel else tmp
                dst.parent.mkdir(parents=True, exist_ok=True)
                with open(dst, "wb") as fh:
                    for chunk in self.open(f"{key}/{rel}" if rel else key):
                        fh.write(chunk)
            tmp.rename(target)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and target.exists():
                return target  # another process finished the same copy first
            raise
        return target

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError  # noqa: PLC0415 - boto3 is optional (layerprune[s3])

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError:
            return False
        return True

    def delete_prefix(self, prefix: str) -> None:
        object_prefix = self._object_key(prefix) + "/"
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=object_prefix):
            for item in page.get("Contents", []):
                keys.append(item["Key"])
        self._delete_keys(keys, best_effort=False)

    # -------------------------------------------------------------- extras

    def presigned_url(self, storage_key: str, filename: str | None = None,
                      expires_s: int | None = None) -> str:
        """A time-limited GET URL of one object (for download redirects)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._object_key(storage_key)}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        return self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_s or self.presign_seconds)

    def list_keys(self, prefix: str = "") -> list[str]:
        """Storage keys (relative to the store's prefix) below ``prefix``: for tests and audits."""
        object_prefix = self._object_key(prefix) + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                         Prefix=object_prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                out.append(key[len(self.prefix) + 1 :] if self.prefix else key)
        return sorted(out)

    # -------------------------------------------------------------- internals

    def _upload_file(self, path: Path, object_key: str) -> tuple[int, str]:
        size = path.stat().st_size
        if size < self.multipart_threshold:
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            self.client.put_object(Bucket=self.bucket, Key=object_key, Body=data,
                                   Metadata={"sha256": sha})
            return len(data), sha
        return self._upload_multipart(path, object_key)

    def _upload_multipart(self, path: Path, object_key: str) -> tuple[int, str]:
        digest = hashlib.sha256()
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=object_key)["UploadId"]
        parts: list[dict[str, Any]] = []
        size = 0
        try:
            with open(path, "rb") as fh:
                number = 1
                while chunk := fh.read(self.part_bytes):
                    digest.update(chunk)
                    size += len(chunk)
                    etag = self.client.upload_part(Bucket=self.bucket, Key=object_key, UploadId=upload_id,
                                                   PartNumber=number, Body=chunk)["ETag"]
                    parts.append({"PartNumber": number, "ETag": etag})
                    number += 1
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})
        except BaseException:
            # An aborted upload leaves no object and frees the stored parts.
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
            raise
        return size, digest.hexdigest()

    def _delete_keys(self, keys: list[str], *, best_effort: bool = True) -> None:
        """Delete ``keys``; during cleanup after a failure errors are swallowed (the caller re-raises)."""
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:
                if not best_effort:
                    raise storage_failure(exc) from exc
