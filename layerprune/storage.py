"""Where published job outputs live: the artifact store.

A job's output directory is published in one step: every file is copied, fsynced and hashed into
a temporary folder beside its final place, then the folder is renamed into place. Only after
that does the worker commit the artifact rows, so a reader never sees a half-written file and a
failed or cancelled job exposes nothing. Keys are ``<tenant>/<job_id>/<relative path>`` under the
store's root (settings.effective_storage_dir).

This module is the stores' interface (``ArtifactStore``, ``StoredFile``, key rules) and the local
store; ``layerprune.storage_s3`` builds on it, and ``layerprune.artifact_store.get_store`` picks
the one the settings name (so neither store module imports the other's).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, TypedDict

from layerprune.core.fsutil import fsync_dir

CHUNK = 1024 * 1024


class StoredFile(TypedDict):
    path: str  # relative path inside the published directory ("model.safetensors")
    size_bytes: int
    sha256: str
    storage_key: str  # where the store keeps it ("tenant/job_x/model.safetensors")


class ArtifactStore(Protocol):
    def put_dir(self, local_dir: Path, key_prefix: str) -> list[StoredFile]: ...

    def open(self, storage_key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...

    def local_path(self, storage_key: str) -> Path | None: ...

    def delete_prefix(self, prefix: str) -> None: ...


def _clean_key(key: str) -> str:
    """Refuse keys that could leave the store's root (absolute, '..', empty parts)."""
    if not key or "\\" in key or "\x00" in key:
        raise ValueError(f"bad storage key {key!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):  # also refuses "/abs" (leading "") and "a//b"
        raise ValueError(f"bad storage key {key!r}")
    return key


def copy_hashed(src: Path, dst: Path) -> tuple[int, str]:
    """Copy ``src`` to ``dst`` in chunks, fsync it; return (size, sha256 hex) of what was written."""
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return size, digest.hexdigest()


def list_files(local_dir: Path) -> list[Path]:
    """Regular files under ``local_dir``, relative, sorted; symlinks are refused (never followed)."""
    out: list[Path] = []
    for root, dirs, files in os.walk(local_dir):
        dirs.sort()
        for name in sorted(files):
            full = Path(root) / name
            if full.is_symlink():
                raise ValueError(f"refusing to publish symlink {full}")
            out.append(full.relative_to(local_dir))
    return out


class LocalStore:
    """Artifacts on a local (or network-mounted) file system."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        return self.root / _clean_key(key)

    def put_dir(self, local_dir: Path, key_prefix: str) -> list[StoredFile]:
        prefix = _clean_key(key_prefix)
        target = self.root / prefix
        target.parent.mkdir(parents=True, exist_ok=True)
        # The temporary folder sits beside the target so the final rename stays on one file system.
        tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        stored: list[StoredFile] = []
        try:
            for rel in list_files(Path(local_dir)):
                dst = tmp / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                size, sha = copy_hashed(Path(local_dir) / rel, dst)
                rel_posix = rel.as_posix()
                stored.append(StoredFile(path=rel_posix, size_bytes=size, sha256=sha,
                                         storage_key=f"{prefix}/{rel_posix}"))
            fsync_dir(tmp)
            if target.exists():
                # A retry republishes: move the old copy aside first (rename onto a non-empty dir fails).
                trash = target.parent / f".old-{target.name}-{uuid.uuid4().hex[:8]}"
                target.rename(trash)
                tmp.rename(target)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                tmp.rename(target)
            fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return stored

    def open(self, storage_key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield the bytes of ``storage_key`` from ``start`` up to ``end`` (exclusive; None = to EOF)."""
        path = self._path(storage_key)
        fh = open(path, "rb")  # opened now so a missing file raises here, not at first iteration

        def chunks() -> Iterator[bytes]:
            with fh:
                fh.seek(start)
                remaining = None if end is None else max(end - start, 0)
                while remaining is None or remaining > 0:
                    n = CHUNK if remaining is None else min(CHUNK, remaining)
                    chunk = fh.read(n)
                    if not chunk:
                        return
                    if remaining is not None:
                        remaining -= len(chunk)
                    yield chunk

        return chunks()

    def local_path(self, storage_key: str) -> Path | None:
        return self._path(storage_key)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)
