"""Follow a running job to its end: events from the SSE stream drive a ProgressView."""

from __future__ import annotations

import time

from layerprune.cli.progress import ProgressView
from layerprune.client import Job, LayerPruneAPIError, LayerPruneClient

_JOB_POLL_SECONDS = 3.0


def follow(client: LayerPruneClient, job_id: str, view: ProgressView, *, poll_interval: float = 1.0) -> Job:
    """Draw the job's progress until it is terminal and return its final state.

    The server-sent event stream is the source; the job object is read every few seconds as well,
    for the overall progress fraction. Where the stream is unavailable, the JSON events endpoint
    is polled instead, so the view works against any contract-conforming server.
    """
    job = client.get_job(job_id)
    view.on_job(job)
    if job.is_terminal:
        _replay(client, job_id, view)
        return job
    last_poll = time.monotonic()
    last_event: str | None = None
    try:
        for event in client.stream_events(job_id):
            last_event = event.id or last_event
            view.on_event(event)
            if time.monotonic() - last_poll >= _JOB_POLL_SECONDS:
                last_poll = time.monotonic()
                job = client.get_job(job_id)
                view.on_job(job)
    except LayerPruneAPIError as exc:
        if exc.status in (401, 404):
            raise
    # The stream ends with the job, but a stream cut short by a proxy must not end the wait.
    while True:
        job = client.get_job(job_id)
        for event in client.events(job_id, after=last_event):
            last_event = event.id or last_event
            view.on_event(event)
        view.on_job(job)
        if job.is_terminal:
            return job
        time.sleep(poll_interval)


def _replay(client: LayerPruneClient, job_id: str, view: ProgressView) -> None:
    for event in client.events(job_id):
        view.on_event(event)
