"""S3Store against a real S3-compatible server (moto in server mode) on a loopback port."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import httpx
import pytest

from layerprune.artifact_store import get_store
from layerprune.settings import Settings
from layerprune.storage import copy_hashed
from layerprune.storage_s3 import DiskFullError, S3Store, StorageError, parse_s3_url, storage_failure


@pytest.fixture
def store(s3_endpoint, aws_env, tmp_path):
    bucket = "lp-" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]
    settings = Settings(data_dir=tmp_path / "data", storage_url=f"s3://{bucket}/artifacts/v1",
                        s3_endpoint_url=s3_endpoint, s3_multipart_threshold_bytes=5 * 1024 * 1024)
    s = get_store(settings)
    assert isinstance(s, S3Store)
    s.client.create_bucket(Bucket=bucket)
    s.part_bytes = 5 * 1024 * 1024  # S3's smallest part: the 11 MiB file below takes 3 parts
    return s


def _make_dir(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"num_hidden_layers": 6}',
        "tokenizer/vocab.txt": b"a\nb\nc\n",
        "model.safetensors": bytes(range(256)) * (11 * 4096),  # 11 MiB: multipart
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_parse_s3_url():
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError):
        parse_s3_url("file:///tmp/x")


def test_put_get_range_delete(store, tmp_path):
    src = tmp_path / "out"
    files = _make_dir(src)
    stored = store.put_dir(src, "tenant-a/job_x")
    by_path = {f["path"]: f for f in stored}
    assert set(by_path) == set(files)
    for rel, data in files.items():
        entry = by_path[rel]
        assert entry["size_bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["storage_key"] == f"tenant-a/job_x/{rel}"
        assert b"".join(store.open(entry["storage_key"])) == data
    # the objects really live under the configured prefix of the bucket
    raw = store.client.list_objects_v2(Bucket=store.bucket)["Contents"]
    assert sorted(o["Key"] for o in raw) == sorted(f"artifacts/v1/tenant-a/job_x/{r}" for r in files)
    big = files["model.safetensors"]
    assert b"".join(store.open("tenant-a/job_x/model.safetensors", 10, 20)) == big[10:20]
    assert b"".join(store.open("tenant-a/job_x/model.safetensors", len(big) - 5)) == big[-5:]
    with pytest.raises(FileNotFoundError):
        store.open("tenant-a/job_x/missing.bin")
    # presigned URL is a plain GET that works without credentials (still loopback: the moto server)
    url = store.presigned_url("tenant-a/job_x/config.json", filename="config.json")
    assert url.startswith(store.client.meta.endpoint_url)
    assert httpx.get(url, trust_env=False).content == files["config.json"]
    store.delete_prefix("tenant-a/job_x")
    assert store.list_keys("tenant-a/job_x") == []


def test_bad_keys_refused(store):
    for key in ("../x", "/abs", "a/../b", ""):
        with pytest.raises(ValueError):
            store.open(key)


class _FailsOnSecondFile(S3Store):
    """A store whose second upload dies mid-way, as a dropped connection would."""

    def _upload_file(self, path, object_key):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            self.client.put_object(Bucket=self.bucket, Key=object_key, Body=b"half")
            raise OSError(errno.ECONNRESET, "connection reset by peer")
        return super()._upload_file(path, object_key)


def test_failed_publish_leaves_nothing(store, tmp_path):
    src = tmp_path / "out"
    _make_dir(src)
    failing = _FailsOnSecondFile(store.client, store.bucket, store.prefix,
                                 multipart_threshold=store.multipart_threshold, part_bytes=store.part_bytes)
    with pytest.raises(StorageError) as info:
        failing.put_dir(src, "tenant-a/job_fail")
    assert info.value.code == "storage_error"
    assert store.list_keys("tenant-a/job_fail") == []
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert uploads == []


def test_missing_bucket_is_storage_error(s3_endpoint, aws_env, tmp_path):
    settings = Settings(data_dir=tmp_path, storage_url="s3://no-such-bucket-lp/x", s3_endpoint_url=s3_endpoint)
    s = S3Store.from_settings(settings)
    src = tmp_path / "out"
    (src).mkdir()
    (src / "a.txt").write_text("x")
    with pytest.raises(StorageError) as info:
        s.put_dir(src, "t/job_1")
    assert info.value.code == "storage_error"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_disk_full_maps_to_disk_full(tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 100_000)
    with pytest.raises(OSError) as info:
        copy_hashed(src, Path("/dev/full"))  # a real ENOSPC from the kernel
    err = storage_failure(info.value)
    assert isinstance(err, DiskFullError) and err.code == "disk_full"
    assert storage_failure(OSError(errno.EIO, "io")).code == "storage_error"


def test_local_path_downloads_a_cached_copy(store, tmp_path):
    src = tmp_path / "out"
    files = _make_dir(src)
    store.put_dir(src, "tenant-a/job_model")
    store.cache_dir = None
    assert store.local_path("tenant-a/job_model") is None  # no cache dir: nothing downloaded
    store.cache_dir = tmp_path / "cache"
    local = store.local_path("tenant-a/job_model")
    assert local == tmp_path / "cache" / "tenant-a" / "job_model" and local.is_dir()
    for rel, data in files.items():
        assert (local / rel).read_bytes() == data
    assert store.local_path("tenant-a/job_model") == local  # reused
    single = store.local_path("tenant-a/job_model/config.json")
    assert single is not None and single.read_bytes() == files["config.json"]
    store.delete_prefix("tenant-a/job_model")
    assert store.local_path("tenant-a/job_model") is None  # deleted artifacts are not served from cache
    assert store.local_path("tenant-a/never") is None


def test_republish_replaces_the_prefix(store, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "leftover.bin").write_bytes(b"from a crashed attempt")
    (old / "config.json").write_bytes(b"{}")
    store.put_dir(old, "tenant-a/job_re")
    new = tmp_path / "new"
    new.mkdir()
    (new / "config.json").write_bytes(b'{"v": 2}')
    store.put_dir(new, "tenant-a/job_re")
    assert store.list_keys("tenant-a/job_re") == ["tenant-a/job_re/config.json"]
    assert b"".join(store.open("tenant-a/job_re/config.json")) == b'{"v": 2}'
