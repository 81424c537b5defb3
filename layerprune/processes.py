"""Stopping a child process and everything it started (the demo's servers, test and bench fixtures)."""

from __future__ import annotations

import os
import signal
import subprocess


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group of ``proc``, wait ``grace`` seconds, then SIGKILL what is left.

    ``proc`` must have been started with ``start_new_session=True`` so that its group holds its
    children (a worker's pool, a server's reloader) and nothing else. The final SIGKILL of the group
    also reaches children a dead parent left behind.
    """
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(5)
    _signal_group(proc.pid, signal.SIGKILL)
