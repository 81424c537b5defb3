"""Prometheus metrics of the service, served at ``GET /metrics`` in the text exposition format.

Two kinds of numbers:
- measured in the API process: HTTP requests and latencies by route *template*
  (``/v1/jobs/{job_id}``, so ids never explode the label set) and status, and the webhook outcomes
  of the senders running in this process;
- read from the database at scrape time, because jobs run in other processes (Celery workers whose
  children exit after every task) and the database is the one place that knows: jobs by state,
  queue depth per queue, queue-wait and run durations (per stage), and worker heartbeats. These
  are cached for ``DB_CACHE_SECONDS`` so frequent scrapes cost one set of queries. The duration
  histograms are computed over every finished job still in the table, so they only grow, as
  Prometheus histograms should (jobs rows are never deleted; retention removes artifacts only).

``registry_for(app)`` builds an app's registry (process-wide families plus its DB view);
``layerprune.api.routes.metrics.install(app)`` adds the middleware and ``GET /metrics``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from sqlalchemy import func, select

from layerprune.db.models import Job, JobEvent, WebhookDelivery
from layerprune.queue.status import HELD_STATUSES, JOB_STATUSES, TERMINAL_STATUSES, JobStatus

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

HTTP_REQUESTS = Counter("layerprune_http_requests", "HTTP requests answered, by route template and status",
                        ["method", "route", "status"], registry=REGISTRY)
HTTP_LATENCY = Histogram("layerprune_http_request_duration_seconds",
                         "Time to answer an HTTP request (streams: until the last byte)",
                         ["method", "route"], registry=REGISTRY,
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
WEBHOOK_DELIVERIES = Counter("layerprune_webhook_deliveries",
                             "Webhook delivery attempts made by this process, by outcome "
                             "(delivered|retry|failed)", ["outcome"], registry=REGISTRY)

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
DB_CACHE_SECONDS = 5.0


# ------------------------------------------------------------------ HTTP middleware


class MetricsMiddleware:
    """Pure ASGI middleware (streams such as SSE pass through untouched)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}  # what the client sees if the app raises before answering

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_template(scope)
            if route != "/metrics":  # scrapes would dominate the numbers
                method = scope.get("method", "GET")
                HTTP_REQUESTS.labels(method, route, str(status["code"])).inc()
                HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - start)


def _route_template(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    # Unmatched requests share one label value, so probing random URLs cannot grow the label set.
    return "<unmatched>"


# ------------------------------------------------------------------ database collector


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    if later.tzinfo is None:
        later = later.replace(tzinfo=UTC)
    if earlier.tzinfo is None:
        earlier = earlier.replace(tzinfo=UTC)
    return max(0.0, (later - earlier).total_seconds())


def _histogram(name: str, doc: str, labels: list[str],
               samples: dict[tuple[str, ...], list[float]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for label_values, values in sorted(samples.items()):
        buckets: list[tuple[str, float]] = []
        for bound in DURATION_BUCKETS:
            buckets.append((str(float(bound)), float(sum(1 for v in values if v <= bound))))
        buckets.append(("+Inf", float(len(values))))
        family.add_metric(list(label_values), buckets, sum_value=float(sum(values)))
    return family


def read_job_metrics(session: Any, now: datetime | None = None) -> list[Metric]:
    """Every DB-derived metric family, from one consistent read of the tables."""
    now = now or datetime.now(UTC)
    jobs_by_state = GaugeMetricFamily("layerprune_jobs", "Jobs by state (all tenants)", labels=["status"])
    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    for status in JOB_STATUSES:
        jobs_by_state.add_metric([status], float(counts.get(status, 0)))

    depth = GaugeMetricFamily("layerprune_queue_depth", "Queued jobs waiting for a worker, by queue",
                              labels=["queue"])
    queued = dict(session.execute(select(Job.queue, func.count()).where(Job.status == JobStatus.QUEUED)
                                  .group_by(Job.queue)).all())
    for queue in sorted(set(queued) | {"gpu", "cpu"}):
        depth.add_metric([queue], float(queued.get(queue, 0)))
    oldest = session.scalar(select(func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED))
    oldest_age = GaugeMetricFamily("layerprune_queue_oldest_age_seconds",
                                   "Age of the oldest queued job (0 when the queue is empty)")
    oldest_age.add_metric([], _seconds(now, oldest) or 0.0)

    # Worker heartbeats: the newest heartbeat of each worker that holds a live job.
    beats = GaugeMetricFamily("layerprune_worker_last_heartbeat_timestamp_seconds",
                              "Unix time of each busy worker's latest heartbeat", labels=["worker_id"])
    busy = session.execute(
        select(Job.worker_id, func.max(Job.heartbeat_at))
        .where(Job.status.in_(HELD_STATUSES), Job.worker_id.is_not(None))
        .group_by(Job.worker_id)).all()
    for worker_id, beat in busy:
        if beat is not None:
            stamp = beat if beat.tzinfo else beat.replace(tzinfo=UTC)
            beats.add_metric([worker_id], stamp.timestamp())
    busy_workers = GaugeMetricFamily("layerprune_workers_busy", "Workers holding a live job")
    busy_workers.add_metric([], float(len(busy)))

    # Deliveries are sent by threads in every API and worker process: count them where they all meet.
    hooks = GaugeMetricFamily("layerprune_webhook_deliveries_by_status",
                              "Webhook deliveries by status (pending|delivered|failed), all processes",
                              labels=["status"])
    by_status = dict(session.execute(select(WebhookDelivery.status, func.count())
                                     .group_by(WebhookDelivery.status)).all())
    for status in ("pending", "delivered", "failed"):
        hooks.add_metric([status], float(by_status.get(status, 0)))

    waits: dict[tuple[str, ...], list[float]] = {}
    runs: dict[tuple[str, ...], list[float]] = {}
    finished = session.execute(
        select(Job.queue, Job.status, Job.created_at, Job.started_at, Job.finished_at)
        .where(Job.status.in_(TERMINAL_STATUSES))).all()
    for queue, status, created, started, ended in finished:
        wait = _seconds(started, created)
        if wait is not None:
            waits.setdefault((queue,), []).append(wait)
        run = _seconds(ended, started)
        if run is not None:
            runs.setdefault((queue, status), []).append(run)

    # Per-stage run time: from each "stage" event to the job's next stage or state event.
    stage_runs: dict[tuple[str, ...], list[float]] = {}
    rows = session.execute(
        select(JobEvent.job_id, JobEvent.type, JobEvent.data, JobEvent.created_at)
        .join(Job, Job.id == JobEvent.job_id)
        .where(Job.status.in_(TERMINAL_STATUSES),
               JobEvent.type.in_(("stage", "state", "retry")))
        .order_by(JobEvent.job_id, JobEvent.seq)).all()
    open_stage: dict[str, tuple[str, datetime]] = {}
    for job_id, type_, data, created in rows:
        current = open_stage.pop(job_id, None)
        if current is not None:
            took = _seconds(created, current[1])
            if took is not None:
                stage_runs.setdefault((current[0],), []).append(took)
        if type_ == "stage" and isinstance(data, dict) and data.get("stage"):
            open_stage[job_id] = (str(data["stage"]), created)

    return [
        jobs_by_state, depth, oldest_age, beats, busy_workers, hooks,
        _histogram("layerprune_job_queue_wait_seconds", "From creation to a worker starting it (finished jobs)",
                   ["queue"], waits),
        _histogram("layerprune_job_run_seconds", "From start to the terminal state (finished jobs)",
                   ["queue", "status"], runs),
        _histogram("layerprune_job_stage_seconds", "Time spent in each stage (finished jobs)",
                   ["stage"], stage_runs),
    ]


class JobsCollector:
    """Collects the DB-derived families at scrape time (cached briefly); silent when the DB is down."""

    def __init__(self, session_factory: Callable[[], Callable[[], Any] | None]) -> None:
        self._factory = session_factory
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < DB_CACHE_SECONDS:
                return list(self._cached[1])
            factory = self._factory()
            up = GaugeMetricFamily("layerprune_database_up", "Whether the last metrics read of the DB worked")
            if factory is None:
                return []
            try:
                with factory() as session:
                    families = read_job_metrics(session)
                up.add_metric([], 1.0)
            except Exception:  # a scrape must never fail because the DB is briefly away
                up.add_metric([], 0.0)
                return [up]
            families.append(up)
            self._cached = (time.monotonic(), families)
            return list(families)

    def describe(self) -> Iterable[Metric]:
        return []  # families are only known at collect time; describe nothing to skip a DB read


def render(registry: CollectorRegistry = REGISTRY) -> bytes:
    return generate_latest(registry)


# ------------------------------------------------------------------ wiring


class _Forward:
    """Expose another registry's metrics through this one."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()

    def describe(self) -> Iterable[Metric]:
        return []


def registry_for(session_factory: Callable[[], Callable[[], Any] | None]) -> CollectorRegistry:
    """One registry per app: the process-wide families plus a DB view read through ``session_factory``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Forward(REGISTRY))
    registry.register(JobsCollector(session_factory))
    return registry
