"""A forked child (Celery's prefork pool: one per job) never inherits the parent's engines or a held lock."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from layerprune.db import session


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_forked_while_another_thread_holds_the_lock_gets_fresh_engines(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fork.db'}"
    parent_engine = session.get_engine(url)
    holding, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:  # what the sweeper thread does for a moment on every sweep
        with session._lock:  # noqa: SLF001
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold_the_lock)
    thread.start()
    holding.wait(5)
    try:
        pid = os.fork()
        if pid == 0:  # the child: only this thread exists, and the lock was held at the fork
            code = 1
            try:
                engine = session.get_engine(url)
                with session.session_scope(url) as s:
                    s.connection().exec_driver_sql("select 1")
                code = 0 if engine is not parent_engine else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child deadlocked on the parent's lock")
            time.sleep(0.05)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        thread.join()
    # The parent keeps its engine.
    assert session.get_engine(url) is parent_engine
