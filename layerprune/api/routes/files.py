"""``/v1/files``: upload (validated as it streams, idempotent), list, get, delete."""

from __future__ import annotations

import logging
import os
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from layerprune.api.deps import SessionDep, SettingsDep, TenantDep
from layerprune.api.errors import ApiError, not_found
from layerprune.api.file_checks import (
    PURPOSE_FORMATS,
    formats_path,
    read_formats,
    upload_formats,
    write_formats,
)
from layerprune.api.pagination import AfterQuery, LimitQuery, bad_cursor, envelope
from layerprune.api.schemas import FileDeleted, FilePublic, FilesPublic, error_responses
from layerprune.api.uploads import FileSink, receive_upload
from layerprune.db import idempotency
from layerprune.db.files import file_seq, get_file, list_files, live_jobs_using
from layerprune.db.models import FILE_PURPOSES, File, utcnow

log = logging.getLogger(__name__)
FilePurpose = Literal[FILE_PURPOSES]  # type: ignore[valid-type]
router = APIRouter(prefix="/v1/files", tags=["files"])

_UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["file", "purpose"], "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": "JSONL (.jsonl, .ndjson, .json: one JSON object per line) or plain UTF-8 "
                                    "text (.txt); every record is checked against the formats its purpose allows"},
            "purpose": {"type": "string", "enum": list(FILE_PURPOSES)},
            "format": {"type": "string", "enum": list(PURPOSE_FORMATS["finetune"]),
                       "description": "optional, purpose finetune only: every record must fit this format "
                                      "(without it, every record must fit one format the purpose allows)"},
        }},
        "example": {"purpose": "finetune"},
    }},
}


def tenant_folder(settings: Any, tenant: str) -> Any:
    # Tenants come from configuration, but keep the folder name boring whatever they are called.
    return settings.uploads_dir / re.sub(r"[^A-Za-z0-9_.-]", "_", tenant)


def _public(row: File) -> FilePublic:
    outcome = read_formats(row.storage_path)
    fits = None if outcome is None else [fmt for fmt, why in outcome.items() if why is None]
    return FilePublic.from_row(row).model_copy(update={"formats": fits})


def _replay(session: Any, tenant: str, key: str, digest: str, ttl: int) -> FilePublic | None:
    replay = idempotency.lookup(session, tenant, key, digest, "file", ttl)
    if replay is None:
        return None
    row = session.get(File, replay.object_id)
    if not replay.same_request or row is None or row.tenant != tenant:
        raise ApiError(409, "idempotency_key_reused", "this Idempotency-Key was used with a different upload",
                       param="Idempotency-Key")
    return _public(row)


@router.post(
    "",
    status_code=201,
    response_model=FilePublic,
    summary="Upload a data file",
    description="Multipart `file` + `purpose` (+ optional `format`). Validated while it streams: a bad line "
                "(invalid JSON, or a record no allowed format fits, such as an alpaca row without `output`) "
                "is a 422 naming the line; a file over the upload limit is a 413. Nothing is stored unless all "
                "of it is valid.",
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={200: {"model": FilePublic, "description": "Replay of an earlier upload with the same Idempotency-Key"},
               **error_responses(401, 409, 413, 415, 422, 503)},
)
async def upload_file(
    request: Request,
    tenant: TenantDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> Any:
    folder = tenant_folder(settings, tenant)
    upload = await receive_upload(request, folder, settings.max_upload_bytes)
    sink = upload.sink
    try:
        sink.content.formats.expect(upload_formats(upload.fields))  # the purpose may have come after the file
        status, body = await run_in_threadpool(_record, request, tenant, settings, sink, upload.fields,
                                               idempotency_key)
    except BaseException:
        sink.abort()
        raise
    return JSONResponse(body.model_dump(mode="json"), status_code=status)


def _record(request: Request, tenant: str, settings: Any, sink: FileSink, fields: dict[str, str],
            key: str | None) -> tuple[int, FilePublic]:
    purpose = fields["purpose"]
    asked = {"filename": sink.filename, "purpose": purpose, "sha256": sink.digest.hexdigest()}
    if fields.get("format"):
        asked["format"] = fields["format"]
    digest = idempotency.request_hash(asked)
    with request.app.state.session_factory() as session:
        if key:
            replayed = _replay(session, tenant, key, digest, settings.idempotency_ttl_hours)
            if replayed is not None:
                sink.abort()
                return 200, replayed
        row = File(tenant=tenant, filename=sink.filename, purpose=purpose, size_bytes=sink.size,
                   sha256=sink.digest.hexdigest(), num_records=sink.records, storage_path="")
        session.add(row)
        session.flush()
        final = sink.tmp_path.parent / f"{row.id}.{sink.ext}"
        row.storage_path = str(final)
        facts = write_formats(final, sink.content.outcome())
        os.replace(sink.tmp_path, final)
        try:
            if key:
                idempotency.remember(session, tenant, key, digest, "file", row.id)
            session.commit()
        except IntegrityError:
            session.rollback()
            final.unlink(missing_ok=True)
            facts.unlink(missing_ok=True)
            if key:
                replayed = _replay(session, tenant, key, digest, settings.idempotency_ttl_hours)
                if replayed is not None:
                    return 200, replayed
            raise
        except BaseException:
            session.rollback()
            final.unlink(missing_ok=True)
            facts.unlink(missing_ok=True)
            raise
        log.info("file uploaded", extra={"file_id": row.id, "size_bytes": row.size_bytes, "tenant": tenant})
        return 201, _public(row)


@router.get("", response_model=FilesPublic, summary="List uploaded files, newest first",
            responses=error_responses(401, 422, 503))
def list_files_route(
    session: SessionDep,
    tenant: TenantDep,
    limit: LimitQuery = 20,
    after: AfterQuery = None,
    purpose: Annotated[FilePurpose | None, Query(description="only files with this purpose")] = None,
) -> dict[str, Any]:
    after_seq = None
    if after is not None:
        after_seq = file_seq(session, tenant, after)
        if after_seq is None:
            raise bad_cursor(after)
    page = list_files(session, tenant, limit=limit, after_seq=after_seq, purpose=purpose)
    return envelope([_public(f) for f in page.items], page.has_more)


@router.get("/{file_id}", response_model=FilePublic, summary="Get a file", responses=error_responses(401, 404, 503))
def get_file_route(file_id: str, session: SessionDep, tenant: TenantDep) -> FilePublic:
    row = get_file(session, tenant, file_id)
    if row is None:
        raise not_found("file")
    return _public(row)


@router.delete("/{file_id}", response_model=FileDeleted, summary="Delete a file",
               description="409 while a queued or running job uses it.",
               responses=error_responses(401, 404, 409, 503))
def delete_file_route(file_id: str, session: SessionDep, tenant: TenantDep) -> FileDeleted:
    row = get_file(session, tenant, file_id)
    if row is None:
        raise not_found("file")
    users = live_jobs_using(session, tenant, file_id)
    if users:
        raise ApiError(409, "file_in_use", f"the file is used by live job(s): {', '.join(users[:5])}")
    row.deleted_at = utcnow()
    session.commit()
    for path in (row.storage_path, formats_path(row.storage_path)):
        try:
            os.unlink(path)
        except OSError:
            pass  # already gone: the row says deleted either way
    return FileDeleted(id=row.id)
