"""A Python client for the layerprune HTTP API (docs/contract.md, v1), for pipelines and the CLI.

    from layerprune.client import LayerPruneClient

    with LayerPruneClient("http://localhost:8000", api_key="key-a") as lp:
        job = lp.create_job({"model": "bundled:smollm2-135m-instruct",
                             "prune": {"metric": "reverse_order", "ratio": 0.25}})
        job = lp.wait(job.id, on_progress=lambda j: print(j.stage, j.progress))
        lp.download(job.id, "pruned-model")

Creating calls carry an ``Idempotency-Key`` (generated when not given) so that retrying them after a
connection error or a 5xx can never create a second job or file. Reads are retried the same way.
Downloads resume with ``Range`` from a ``.part`` file, check each file's sha256 against the
artifact listing and only then rename it into place.

Only httpx and the standard library: a pipeline can vendor this one file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

__all__ = [
    "Artifact",
    "Event",
    "File",
    "Job",
    "JobCancelled",
    "JobFailed",
    "LayerPruneAPIError",
    "LayerPruneClient",
    "LayerPruneError",
    "Page",
    "WaitTimeout",
    "TERMINAL_STATUSES",
]

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
_RETRY_STATUSES = frozenset({429, 502, 503, 504, 500})


# --------------------------------------------------------------------------- errors


class LayerPruneError(Exception):
    """Base class of everything this client raises on purpose."""


class LayerPruneAPIError(LayerPruneError):
    """The server answered 4xx/5xx with the contract's ``{"error": {code, message, param}}``."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        where = f" (param: {param})" if param else ""
        super().__init__(f"{status} {code}: {message}{where}")

    @classmethod
    def from_response(cls, response: httpx.Response) -> LayerPruneAPIError:
        code, message, param = "http_error", response.reason_phrase or "error", None
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
            code = str(err.get("code") or code)
            message = str(err.get("message") or message)
            param = err.get("param")
        elif isinstance(body, dict) and "detail" in body:  # a framework default slipped through
            message = str(body["detail"])
        elif response.text:
            message = response.text[:500]
        return cls(response.status_code, code, message, param)


class JobFailed(LayerPruneError):
    """``wait`` ended on a job that did not succeed; ``job.error`` says why."""

    def __init__(self, job: Job) -> None:
        self.job = job
        err = job.error or {}
        self.code = str(err.get("code") or job.status)
        self.message = str(err.get("message") or f"job {job.status}")
        super().__init__(f"job {job.id} {job.status}: {self.code}: {self.message}")


class JobCancelled(JobFailed):
    """``wait`` ended on a cancelled job."""


class WaitTimeout(LayerPruneError, TimeoutError):
    """``wait`` gave up before the job reached a terminal state."""


# --------------------------------------------------------------------------- objects


def _get(data: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = data.get(key, default)
    return default if value is None else value


@dataclass
class Job:
    id: str
    status: str
    stage: str | None = None
    progress: float = 0.0
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        return cls(
            id=str(data["id"]),
            status=str(data.get("status", "")),
            stage=data.get("stage"),
            progress=float(_get(data, "progress", 0.0)),
            created_at=data.get("created_at"),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            spec=dict(_get(data, "spec", {})),
            result=data.get("result"),
            error=data.get("error"),
            attempts=int(_get(data, "attempts", 0)),
            metadata=dict(_get(data, "metadata", {})),
            raw=dict(data),
        )

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass
class Event:
    id: str
    type: str
    message: str = ""
    level: str = "info"
    created_at: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        return cls(
            id=str(data.get("id", "")),
            type=str(data.get("type", "")),
            message=str(_get(data, "message", "")),
            level=str(_get(data, "level", "info")),
            created_at=data.get("created_at"),
            data=dict(_get(data, "data", {})),
            raw=dict(data),
        )


@dataclass
class Artifact:
    path: str
    size_bytes: int
    sha256: str
    url: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Artifact:
        return cls(
            path=str(data["path"]),
            size_bytes=int(_get(data, "size_bytes", 0)),
            sha256=str(_get(data, "sha256", "")),
            url=data.get("url"),
            raw=dict(data),
        )


@dataclass
class File:
    id: str
    filename: str
    size_bytes: int
    sha256: str
    purpose: str
    created_at: str | None = None
    num_records: int | None = None
    # What every record fits (fine-tuning formats, "texts"), as the server's upload check found it.
    formats: list[str] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> File:
        return cls(
            id=str(data["id"]),
            filename=str(_get(data, "filename", "")),
            size_bytes=int(_get(data, "size_bytes", 0)),
            sha256=str(_get(data, "sha256", "")),
            purpose=str(_get(data, "purpose", "")),
            created_at=data.get("created_at"),
            num_records=data.get("num_records"),
            formats=list(data["formats"]) if isinstance(data.get("formats"), list) else None,
            raw=dict(data),
        )


T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    """One page of a list endpoint: ``data`` newest first; pass ``last_id`` as ``after`` for the next."""

    data: list[T]
    has_more: bool
    last_id: str | None


def _list_items(body: Any) -> list[Any]:
    # The contract's lists are {"object": "list", "data": [...]}; accept a bare array too.
    if isinstance(body, dict):
        return list(body.get("data") or [])
    return list(body or [])


# --------------------------------------------------------------------------- client


class LayerPruneClient:
    """Talks to one layerprune server with one API key.

    ``max_retries`` bounds the retries of one call after a connection error, a timeout or a
    429/5xx answer; the wait before retry ``n`` (from 0) is ``min(backoff_max, backoff × 2ⁿ)``
    plus up to 25% jitter, or the server's ``Retry-After`` where it sends one.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        backoff_max: float = 8.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("LAYERPRUNE_URL") or "http://127.0.0.1:8000"
        api_key = api_key if api_key is not None else os.environ.get("LAYERPRUNE_API_KEY")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        headers = {"User-Agent": "layerprune-client/0.1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LayerPruneClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- plumbing

    def _sleep_before_retry(self, attempt: int, response: httpx.Response | None) -> None:
        delay = min(self.backoff_max, self.backoff * (2**attempt))
        if response is not None and response.headers.get("Retry-After", "").isdigit():
            delay = min(self.backoff_max * 4, float(response.headers["Retry-After"]))
        time.sleep(delay * (1.0 + random.random() * 0.25))

    def _request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        """Send one request; retry it when ``retry`` (safe: a read, or a create with a key).

        Without ``retry`` only a failure to connect is retried: the request never left.
        """
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if attempt >= self.max_retries:
                    raise
            except httpx.TransportError:
                if not retry or attempt >= self.max_retries:
                    raise
            else:
                if response.status_code < 400:
                    return response
                if not (retry and response.status_code in _RETRY_STATUSES and attempt < self.max_retries):
                    raise LayerPruneAPIError.from_response(response)
            self._sleep_before_retry(attempt, response)
            attempt += 1

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # ----------------------------------------------------------------- jobs

    def create_job(self, spec: Mapping[str, Any], idempotency_key: str | None = None) -> Job:
        """POST /v1/jobs. The same key makes a retry return the job already created."""
        key = idempotency_key or f"lp-{uuid.uuid4().hex}"
        body = self._json("POST", "/v1/jobs", json=dict(spec), headers={"Idempotency-Key": key})
        return Job.from_dict(body)

    def get_job(self, job_id: str) -> Job:
        return Job.from_dict(self._json("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(
        self,
        *,
        status: str | None = None,
        metadata: Mapping[str, str] | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Page[Job]:
        params: dict[str, Any] = {}
        if status:
            params["status"] = status
        for key, value in (metadata or {}).items():
            params[f"metadata[{key}]"] = value
        if limit is not None:
            params["limit"] = limit
        if after:
            params["after"] = after
        body = self._json("GET", "/v1/jobs", params=params)
        jobs = [Job.from_dict(item) for item in _list_items(body)]
        last_id = body.get("last_id") if isinstance(body, dict) else None
        has_more = bool(body.get("has_more")) if isinstance(body, dict) else False
        return Page(data=jobs, has_more=has_more, last_id=last_id or (jobs[-1].id if jobs else None))

    def iter_jobs(
        self, *, status: str | None = None, metadata: Mapping[str, str] | None = None, page_size: int = 100
    ) -> Iterator[Job]:
        """Every job of the tenant matching the filters, newest first, page after page."""
        after: str | None = None
        while True:
            page = self.list_jobs(status=status, metadata=metadata, limit=page_size, after=after)
            yield from page.data
            if not page.has_more or not page.last_id:
                return
            after = page.last_id

    def cancel_job(self, job_id: str) -> Job:
        """POST /v1/jobs/{id}/cancel; a terminal job answers 409 (LayerPruneAPIError)."""
        return Job.from_dict(self._json("POST", f"/v1/jobs/{job_id}/cancel", retry=False))

    def events(self, job_id: str, after: str | None = None) -> list[Event]:
        """Every event of the job after the cursor ``after`` (all of them without), oldest first."""
        out: list[Event] = []
        while True:
            params = {"after": after} if after else {}
            body = self._json("GET", f"/v1/jobs/{job_id}/events", params=params)
            page = [Event.from_dict(item) for item in _list_items(body)]
            out.extend(page)
            has_more = isinstance(body, dict) and bool(body.get("has_more"))
            if not page or not has_more:
                return out
            after = page[-1].id

    def stream_events(
        self, job_id: str, after: str | None = None, *, read_timeout: float = 60.0
    ) -> Iterator[Event]:
        """Server-sent events of a job until it ends (the server closes the stream).

        A dropped connection is resumed from the last event seen, so no event is lost or repeated.
        """
        last = after
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            params = {"after": last} if last else {}
            if last:
                headers["Last-Event-ID"] = last
            try:
                timeout = httpx.Timeout(self._http.timeout.connect or 10.0, read=read_timeout)
                with self._http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, params=params, timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise LayerPruneAPIError.from_response(response)
                    for event in _parse_sse(response.iter_lines()):
                        if event.type == "end" and not event.id:
                            return  # the server's closing sentinel: the job is over
                        failures = 0
                        last = event.id or last
                        yield event
                return  # the server ended the stream: the job is over
            except (httpx.TransportError, httpx.StreamError):
                failures += 1
                if failures > self.max_retries:
                    raise
                self._sleep_before_retry(failures - 1, None)

    def wait(
        self,
        job_id: str,
        *,
        on_progress: Callable[[Job], None] | None = None,
        poll_interval: float = 2.0,
        timeout: float | None = None,
    ) -> Job:
        """Poll until the job ends; returns it when it succeeded.

        ``on_progress(job)`` is called whenever status, stage or progress changed. Raises JobFailed
        (JobCancelled for a cancelled job) carrying the job and its error, or WaitTimeout.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[str, str | None, float] | None = None
        while True:
            job = self.get_job(job_id)
            state = (job.status, job.stage, round(job.progress, 4))
            if on_progress is not None and state != seen:
                on_progress(job)
            seen = state
            if job.status == "succeeded":
                return job
            if job.status == "cancelled":
                raise JobCancelled(job)
            if job.status == "failed":
                raise JobFailed(job)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} still {job.status} after {timeout} s")
            time.sleep(
                poll_interval
                if deadline is None
                else max(0.0, min(poll_interval, deadline - time.monotonic()))
            )

    # ----------------------------------------------------------------- artifacts

    def artifacts(self, job_id: str) -> list[Artifact]:
        body = self._json("GET", f"/v1/jobs/{job_id}/artifacts")
        return [Artifact.from_dict(item) for item in _list_items(body)]

    def download(
        self,
        job_id: str,
        dest_dir: str | os.PathLike[str],
        *,
        resume: bool = True,
        on_file: Callable[[Artifact, int], None] | None = None,
    ) -> list[Path]:
        """Download every artifact of a job into ``dest_dir``; returns the files' paths.

        Each file goes to ``<name>.part`` first, resumed with ``Range`` where a part exists, and is
        renamed into place only after its sha256 matches the listing. A file already in place with
        the right size and hash is not fetched again. ``on_file(artifact, bytes_so_far)`` reports.
        """
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        paths = []
        for art in self.artifacts(job_id):
            target = (dest / art.path).resolve()
            if root != target and root not in target.parents:
                # Never write outside dest_dir, whatever the server lists.
                raise LayerPruneError(f"artifact path {art.path!r} escapes {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() and target.stat().st_size == art.size_bytes and _sha256(target) == art.sha256:
                paths.append(target)
                continue
            self._download_one(job_id, art, target, resume=resume, on_file=on_file)
            paths.append(target)
        return paths

    def _download_one(
        self,
        job_id: str,
        art: Artifact,
        target: Path,
        *,
        resume: bool,
        on_file: Callable[[Artifact, int], None] | None,
    ) -> None:
        part = target.with_name(target.name + ".part")
        if not resume and part.exists():
            part.unlink()
        url = f"/v1/jobs/{job_id}/artifacts/{art.path}"
        attempt = 0
        while True:
            have = part.stat().st_size if part.exists() else 0
            if have > art.size_bytes:
                part.unlink()
                have = 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                if have < art.size_bytes or art.size_bytes == 0:
                    with self._http.stream("GET", url, headers=headers) as response:
                        if response.status_code == 416:
                            part.unlink(missing_ok=True)  # our part is not a prefix of theirs
                            continue
                        if response.status_code >= 400:
                            response.read()
                            error = LayerPruneAPIError.from_response(response)
                            if response.status_code in _RETRY_STATUSES and attempt < self.max_retries:
                                raise _Retry(error)
                            raise error
                        # 200 to a Range request means the server sent the whole file again.
                        mode = "ab" if response.status_code == 206 else "wb"
                        with open(part, mode) as out:
                            done = have if mode == "ab" else 0
                            for chunk in response.iter_bytes(1 << 20):
                                out.write(chunk)
                                done += len(chunk)
                                if on_file is not None:
                                    on_file(art, done)
            except (httpx.TransportError, _Retry):
                if attempt >= self.max_retries:
                    raise
                self._sleep_before_retry(attempt, None)
                attempt += 1
                continue
            if not part.exists():
                part.touch()  # an empty artifact
            digest = _sha256(part)
            if digest != art.sha256:
                part.unlink()
                if attempt >= self.max_retries:
                    raise LayerPruneError(
                        f"{art.path}: sha256 {digest} does not match the listing {art.sha256}"
                    )
                attempt += 1
                continue
            os.replace(part, target)
            return

    # ----------------------------------------------------------------- files

    def upload_file(
        self,
        path: str | os.PathLike[str],
        purpose: str,
        idempotency_key: str | None = None,
        *,
        format: str | None = None,
    ) -> File:
        """POST /v1/files (multipart) a JSONL or text file for ``finetune``, ``evaluate`` or ``calibration``.

        ``format`` (purpose ``finetune`` only: a ``finetune.format`` name such as ``alpaca``) makes
        the server refuse the upload unless every record fits that format; without it every record
        must fit one format the purpose allows. The server checks the name (422, ``param`` ``format``).
        """
        key = idempotency_key or f"lp-{uuid.uuid4().hex}"
        source = Path(path)
        fields = {"purpose": purpose}
        if format is not None:
            fields["format"] = format
        attempt = 0
        while True:
            # The body is a file handle that a retry must reopen, so _request cannot loop for us.
            with open(source, "rb") as fh:
                try:
                    response = self._http.post(
                        "/v1/files",
                        files={"file": (source.name, fh, "application/octet-stream")},
                        data=fields,
                        headers={"Idempotency-Key": key},
                    )
                except httpx.TransportError:
                    if attempt >= self.max_retries:
                        raise
                    response = None
            if response is not None:
                if response.status_code < 400:
                    return File.from_dict(response.json())
                if response.status_code not in _RETRY_STATUSES or attempt >= self.max_retries:
                    raise LayerPruneAPIError.from_response(response)
            self._sleep_before_retry(attempt, response)
            attempt += 1

    def get_file(self, file_id: str) -> File:
        return File.from_dict(self._json("GET", f"/v1/files/{file_id}"))

    def list_files(self, *, limit: int | None = None, after: str | None = None) -> Page[File]:
        params: dict[str, Any] = {}
        if limit is not None:
            params["limit"] = limit
        if after:
            params["after"] = after
        body = self._json("GET", "/v1/files", params=params)
        files = [File.from_dict(item) for item in _list_items(body)]
        last_id = body.get("last_id") if isinstance(body, dict) else None
        has_more = bool(body.get("has_more")) if isinstance(body, dict) else False
        return Page(data=files, has_more=has_more, last_id=last_id or (files[-1].id if files else None))

    def delete_file(self, file_id: str) -> None:
        """DELETE /v1/files/{id}; 409 while a live job uses it."""
        self._request("DELETE", f"/v1/files/{file_id}")

    # ----------------------------------------------------------------- operations

    def health(self) -> bool:
        """Whether ``/healthz`` answers 2xx right now (no retries)."""
        try:
            return self._http.get("/healthz", timeout=5.0).status_code < 300
        except httpx.TransportError:
            return False


class _Retry(Exception):
    def __init__(self, error: LayerPruneAPIError) -> None:
        super().__init__(str(error))
        self.error = error


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Events of a ``text/event-stream`` body (WHATWG rules: ``data:`` lines joined, blank line ends)."""
    data: list[str] = []
    event_id = ""
    event_type = ""
    for line in lines:
        line = line.rstrip("\r")
        if not line:
            if data:
                payload = "\n".join(data)
                try:
                    body = json.loads(payload)
                except ValueError:
                    body = {"message": payload}
                if not isinstance(body, dict):
                    body = {"message": str(body)}
                body.setdefault("id", event_id)
                body.setdefault("type", event_type or "message")
                yield Event.from_dict(body)
            data, event_id, event_type = [], "", ""
            continue
        if line.startswith(":"):
            continue  # a keep-alive comment
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
        elif name == "event":
            event_type = value
