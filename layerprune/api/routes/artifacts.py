"""``/v1/jobs/{id}/artifacts``: list, download one file (single Range, ETag), or stream all as tar.

Only paths recorded in the job's artifact rows are served, looked up by exact string equality;
nothing from the URL ever reaches the file system, so ``..`` and friends are simply unknown (404).
"""

from __future__ import annotations

import mimetypes
import tarfile
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from sqlalchemy import select

from layerprune.api.deps import SessionDep, SettingsDep, TenantDep
from layerprune.api.errors import ApiError, not_found
from layerprune.api.schemas import ArtifactPublic, error_responses
from layerprune.artifact_store import get_store
from layerprune.db.jobs import get_job
from layerprune.db.models import Artifact

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"])

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: tar archives end on a record boundary


def _artifacts(session: Any, tenant: str, job_id: str) -> list[Artifact]:
    if get_job(session, tenant, job_id) is None:
        raise not_found("job")
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.path)))


@router.get("/{job_id}/artifacts", response_model=list[ArtifactPublic], summary="List a job's output files",
            description="The output model as a Hugging Face directory (config, safetensors weights, tokenizer, "
                        "generation config, README.md model card, layerprune.json). Empty until the job succeeds.",
            responses=error_responses(401, 404, 503))
def list_artifacts(job_id: str, session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> list[ArtifactPublic]:
    rows = _artifacts(session, tenant, job_id)
    # Never from the request's Host header (a client, or anyone who can reach the server under
    # another name, would choose where the links point): LAYERPRUNE_PUBLIC_URL, else root-relative.
    base = settings.public_url
    items = [ArtifactPublic.from_row(a, f"{base}/v1/jobs/{quote(job_id)}/artifacts/{quote(a.path)}") for a in rows]
    # docs/contract.md (Jobs, the artifact listing): a bare array of every file (a job's output
    # is small and never paginated).
    return items


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range → (start, end inclusive); None = serve everything.

    Multiple ranges and malformed headers are ignored (RFC 9110 allows answering 200 with the
    whole file); a well-formed range that starts past the end raises 416.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    spec = header[len("bytes="):].strip()
    first, sep, last = spec.partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n < 0:
                return None
            if n == 0 or size == 0:
                raise _unsatisfiable(size)
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        raise _unsatisfiable(size)
    if end < start:
        return None
    return start, min(end, size - 1)


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(416, "range_not_satisfiable", f"the file has {size} bytes", param="Range",
                    headers={"Content-Range": f"bytes */{size}"})


def _etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/{job_id}/artifacts/{path:path}",
    name="download_artifact",
    summary="Download one output file",
    description="Supports a single `Range` (206), `ETag` (the file's sha256), `If-None-Match` (304) and `If-Range`. "
                "Only paths listed by the job are served.",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file"},
               206: {"description": "The requested byte range"}, 304: {"description": "Not modified"},
               **error_responses(401, 404, 416, 503)},
)
def download_artifact(
    job_id: str,
    path: str,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
    if_range: Annotated[str | None, Header(alias="If-Range")] = None,
) -> Response:
    if get_job(session, tenant, job_id) is None:  # an impossible id too, without a query
        raise not_found("job")
    if "\x00" in path:  # names nothing; Postgres would refuse the query itself
        raise not_found("artifact", param="path")
    art = session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.path == path))
    session.close()
    if art is None:
        raise not_found("artifact", param="path")
    etag = f'"{art.sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=0",
               "Content-Disposition": f"attachment; filename*=UTF-8''{quote(art.path.rsplit('/', 1)[-1])}"}
    if if_none_match and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    if if_range and if_range.strip() != etag:
        range_header = None  # the client's copy is stale: send the whole (current) file
    media = mimetypes.guess_type(art.path)[0] or "application/octet-stream"
    byte_range = parse_range(range_header, art.size_bytes)
    store = get_store(settings)
    presign = getattr(store, "presigned_url", None)
    if settings.s3_presign_downloads and presign is not None:
        # Object storage serves the bytes (and any Range) itself; the URL expires in s3_presign_seconds.
        return RedirectResponse(presign(art.storage_key, filename=art.path.rsplit("/", 1)[-1]), status_code=307)
    try:
        if byte_range is None:
            body = store.open(art.storage_key)
            headers["Content-Length"] = str(art.size_bytes)
            return StreamingResponse(body, media_type=media, headers=headers)
        start, end = byte_range
        body = store.open(art.storage_key, start, end + 1)
    except (FileNotFoundError, ValueError):
        raise ApiError(404, "artifact_unavailable", "the file is no longer in the artifact store", param="path") from None
    headers["Content-Range"] = f"bytes {start}-{end}/{art.size_bytes}"
    headers["Content-Length"] = str(end - start + 1)
    return StreamingResponse(body, status_code=206, media_type=media, headers=headers)


def _tar_header(art: Artifact) -> bytes:
    info = tarfile.TarInfo(name=art.path)
    info.size = art.size_bytes
    info.mode = 0o644
    info.mtime = int(art.created_at.timestamp())
    info.type = tarfile.REGTYPE
    # PAX: long paths and non-ASCII names survive.
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _tar_stream(store: Any, rows: list[tuple[bytes, Artifact]], total: int) -> Iterator[bytes]:
    """The archive as a sequence of chunks: header, file bytes, padding, …, end-of-archive.

    Built with the tarfile module's own header encoder, one file at a time straight from the
    store: nothing is staged on disk or held in memory beyond one chunk.
    """
    written = 0
    for header, art in rows:
        yield header
        sent = 0
        for chunk in store.open(art.storage_key):
            sent += len(chunk)
            yield chunk
        if sent != art.size_bytes:  # the store changed under us: the archive would be corrupt
            raise RuntimeError(f"artifact {art.path} has {sent} bytes, recorded {art.size_bytes}")
        pad = (-art.size_bytes) % BLOCK
        if pad:
            yield b"\0" * pad
        written += len(header) + art.size_bytes + pad
    yield b"\0" * (total - written)


@router.get(
    "/{job_id}/artifacts.tar",
    summary="Download every output file as one tar",
    description="Streamed as it is read from the store (no staging); `Content-Length` is exact.",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-tar": {}}, "description": "A POSIX (pax) tar archive"},
               **error_responses(401, 404, 503)},
)
def download_tar(job_id: str, session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> Response:
    arts = _artifacts(session, tenant, job_id)
    session.close()
    if not arts:
        raise ApiError(404, "no_artifacts", "this job has no output files (yet)")
    rows = [(_tar_header(a), a) for a in arts]
    body_size = sum(len(h) + a.size_bytes + (-a.size_bytes) % BLOCK for h, a in rows)
    total = body_size + 2 * BLOCK
    total += (-total) % RECORD
    store = get_store(settings)
    headers = {"Content-Length": str(total), "Content-Disposition": f'attachment; filename="{job_id}.tar"'}
    return StreamingResponse(_tar_stream(store, rows, total), media_type="application/x-tar", headers=headers)
