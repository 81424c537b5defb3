"""LocalStore: atomic directory publish, hashes, ranges, key safety."""

from __future__ import annotations

import hashlib

import pytest

from layerprune.storage import LocalStore


def _tree(root):
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(bytes(range(256)) * 10)
    (root / "sub" / "b.txt").write_text("hello")
    return root


def test_put_dir_hashes_and_replaces_atomically(tmp_path):
    src = _tree(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    files = store.put_dir(src, "t1/job_a")
    assert [f["path"] for f in files] == ["a.bin", "sub/b.txt"]
    for f in files:
        data = (src / f["path"]).read_bytes()
        assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["size_bytes"] == len(data)
        assert store.local_path(f["storage_key"]).read_bytes() == data
    (src / "sub" / "b.txt").unlink()
    store.put_dir(src, "t1/job_a")  # a retry republishes: the old copy is replaced whole
    assert not (tmp_path / "store" / "t1" / "job_a" / "sub" / "b.txt").exists()
    assert [p.name for p in (tmp_path / "store" / "t1").iterdir()] == ["job_a"]  # no temp dirs left


def test_open_ranges_and_delete(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_dir(_tree(tmp_path / "src"), "t1/j")
    whole = b"".join(store.open("t1/j/a.bin"))
    assert whole == bytes(range(256)) * 10
    assert b"".join(store.open("t1/j/a.bin", 10, 20)) == whole[10:20]
    assert b"".join(store.open("t1/j/a.bin", 2550)) == whole[2550:]
    store.delete_prefix("t1/j")
    with pytest.raises(FileNotFoundError):
        store.open("t1/j/a.bin")


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "", "a//b", "a\\b"])
def test_bad_keys_refused(tmp_path, key):
    with pytest.raises(ValueError):
        LocalStore(tmp_path).local_path(key)


def test_symlinks_are_not_published(tmp_path):
    src = _tree(tmp_path / "src")
    (src / "link").symlink_to("/etc/passwd")
    with pytest.raises(ValueError):
        LocalStore(tmp_path / "store").put_dir(src, "t/j")
    assert not (tmp_path / "store" / "t" / "j").exists()
