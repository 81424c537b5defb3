"""``one_thread``: an autouse fixture for test modules that run tiny models.

Import it into a test module (``from tests.torch_threads import one_thread  # noqa: F401``).
Tiny models run faster on one thread: with several, a busy machine makes every op wait for its
slowest thread (a 20-token forward of a tiny Llama took 2.5 s on two threads and 0.05 s on one,
at load 16 on 2 cores). Restored after the module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
