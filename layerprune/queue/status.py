"""A job's statuses and the moves allowed between them: the one definition every layer reads.

- ``queued``      accepted and committed; waiting for a worker to claim it
- ``running``     claimed by exactly one worker, whose lease (``lease_expires_at``) it extends
- ``cancelling``  a cancel was requested while running; the worker stops at its next check
- ``succeeded`` | ``failed`` | ``cancelled``  terminal: never change again

Each move of :data:`TRANSITIONS`, and who makes it (``layerprune.queue.transitions``):

- queued → running         a worker claims the job (``claim_job``)
- queued → cancelled       cancelled before any worker took it (``request_cancel``)
- running → running        another worker takes over a job whose lease expired (``claim_job``)
- running → cancelling     a cancel was requested (``request_cancel``)
- running → succeeded      the worker published the outputs (``finish_job``)
- running → failed         the job raised (``fail_job``), or its worker was lost too often (``reap_expired``)
- running → cancelled      the worker stopped on its own check of the cancel flag (``cancel_finish``)
- running → queued         its worker stopped heart-beating; another attempt (``reap_expired``)
- cancelling → cancelled   the worker stopped (``cancel_finish``) or is gone (``reap_expired``)

Pure Python with no imports beyond the standard library, so the database models, the API, the
metrics, the worker and the client's tests can all read it without an upward import.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_STATUSES: tuple[str, ...] = tuple(s.value for s in JobStatus)
TERMINAL_STATUSES: tuple[str, ...] = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)
LIVE_STATUSES: tuple[str, ...] = tuple(s for s in JOB_STATUSES if s not in TERMINAL_STATUSES)
# A worker holds the job (and its lease) in these.
HELD_STATUSES: tuple[str, ...] = (JobStatus.RUNNING.value, JobStatus.CANCELLING.value)

# The statuses as a type, for pydantic models and query parameters (same enum in the OpenAPI
# document as a spelled-out Literal would give).
StatusLiteral = Literal[JOB_STATUSES]  # type: ignore[valid-type]

TRANSITIONS: dict[str, frozenset[str]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.SUCCEEDED,
                                  JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def allowed(old: str, new: str) -> bool:
    """Whether a job may move from ``old`` to ``new``."""
    return new in TRANSITIONS.get(old, frozenset())


def sources(new: str, among: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The statuses a job may reach ``new`` from (restricted to ``among``, which must all be allowed).

    Each guarded UPDATE of ``queue.transitions`` names its expected statuses through this, so a
    transition that contradicts the table fails at import time rather than moving a job wrongly.
    """
    if among is None:
        return tuple(s for s in JOB_STATUSES if allowed(s, new))
    for old in among:
        if not allowed(old, new):
            raise ValueError(f"{old} → {new} is not an allowed job transition")
    return tuple(among)
