"""core.fsutil and the atomic writes built on it: a process killed mid-write (SIGKILL: no
``finally``, no cleanup) leaves the previous version whole, never a half-written one.

Each crash runs in a forked child that kills itself in the middle of the write, after part of the
new bytes are on disk; the parent then reads what a restarted process would read.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from layerprune.core.finetune import checkpoint
from layerprune.core.fsutil import fsync_dir


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_fsync_dir_flushes_a_directory_and_closes_what_it_opened(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    before = open_fds()
    for _ in range(20):
        fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")
    assert open_fds() == before


def crash_in_child(work: Callable[[], None]) -> None:
    """Run ``work`` in a forked child, which must die by SIGKILL inside it."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            work()
        finally:
            os._exit(3)  # reached only if work() did not crash: the parent's assertion fails
    deadline = time.monotonic() + 60
    while True:  # bounded: a child stuck on a lock inherited from another thread must not hang the run
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the child neither crashed nor finished within 60 s")
        time.sleep(0.02)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def test_a_crash_mid_publish_leaves_the_old_artifacts(tmp_path: Path) -> None:
    from layerprune import storage
    from layerprune.storage import LocalStore

    store = LocalStore(tmp_path / "store")
    old, new = tmp_path / "old", tmp_path / "new"
    for d, fill in ((old, b"o"), (new, b"n")):
        d.mkdir()
        (d / "a.bin").write_bytes(fill * 4096)
        (d / "b.bin").write_bytes(fill * 4096)
    store.put_dir(old, "t1/job_1")

    def publish_and_die() -> None:
        copied = []

        def copy_then_die(src: Path, dst: Path) -> tuple[int, str]:
            if copied:  # the second file: half of it written, then killed
                dst.write_bytes(src.read_bytes()[:100])
                os.kill(os.getpid(), signal.SIGKILL)
            copied.append(src)
            return real_copy(src, dst)

        real_copy = storage.copy_hashed
        storage.copy_hashed = copy_then_die
        store.put_dir(new, "t1/job_1")

    crash_in_child(publish_and_die)
    published = store.root / "t1" / "job_1"
    assert sorted(p.name for p in published.iterdir()) == ["a.bin", "b.bin"]
    assert (published / "a.bin").read_bytes() == b"o" * 4096
    assert (published / "b.bin").read_bytes() == b"o" * 4096
    # The next publish (a retry) replaces it whole, leftovers of the crash notwithstanding.
    store.put_dir(new, "t1/job_1")
    assert (published / "b.bin").read_bytes() == b"n" * 4096


def test_a_crash_mid_checkpoint_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    trainable = {"w": torch.arange(6, dtype=torch.float32)}
    checkpoint.save_checkpoint(tmp_path, 10, trainable, {"step": 10})

    def save_and_die() -> None:
        def partial_save(obj, path) -> None:  # type: ignore[no-untyped-def]
            Path(path).write_bytes(b"PK\x03\x04 half a pickle")
            os.kill(os.getpid(), signal.SIGKILL)

        monkeypatch.setattr(checkpoint.torch, "save", partial_save)
        checkpoint.save_checkpoint(tmp_path, 20, {"w": torch.zeros(6)}, {"step": 20})

    crash_in_child(save_and_die)
    monkeypatch.undo()
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step_10"  # the half-written step_20 is not a checkpoint
    tensors, state = checkpoint.load_checkpoint(latest)
    assert torch.equal(tensors["w"], trainable["w"]) and state == {"step": 10}
    # Saving step 20 again after the restart works, and becomes the latest.
    checkpoint.save_checkpoint(tmp_path, 20, {"w": torch.zeros(6)}, {"step": 20})
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_20"
