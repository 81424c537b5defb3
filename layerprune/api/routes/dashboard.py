"""The team dashboard at ``/dashboard`` and its short-lived signed download links.

The page itself is static (``api/static/dashboard.*``: plain HTML/JS/CSS, no build step, nothing
from a CDN) and holds no data: the user enters an API key, the page keeps it in
``sessionStorage`` and calls the JSON API with ``Authorization: Bearer``.

Downloads cannot carry that header from a plain link, so the page asks
``POST /v1/download-links`` for a URL that works without it for ``download_token_seconds``
(default 300). The token is ``<payload>.<signature>``: the payload names the job, the path, the
API key row that asked and the expiry; the signature is HMAC-SHA256 keyed with a link key derived
from the server secret (``LAYERPRUNE_KEY_SECRET``, see ``db/keys.py``). So a token this server did
not sign is refused before anything else is read from it, with no database query; only a signed
one leads to the lookup of its key row. Nothing is stored per link, any API process can check it,
and revoking the key revokes its links.

Links signed by the previous scheme (keyed with the key row's stored hash) are not accepted: they
could only be checked after looking the key row up, which is what this scheme removes, and they
expire within ``download_token_seconds`` anyway (the dashboard asks for a fresh one per click).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import select

from layerprune.api.deps import SessionDep, SettingsDep, TenantDep
from layerprune.api.errors import ApiError, not_found
from layerprune.api.schemas import error_responses
from layerprune.artifact_store import get_store
from layerprune.db import ids
from layerprune.db.keys import hash_key, key_secret
from layerprune.db.models import ApiKey, Artifact, Job

STATIC = Path(__file__).resolve().parents[1] / "static"
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}

router = APIRouter(tags=["dashboard"])
_bearer = HTTPBearer(auto_error=False)


class DownloadLinkCreate(BaseModel):
    job_id: str = Field(..., examples=["job_3k1f0q8z7v2m9x4c5b6n7a8s"])
    path: str = Field(..., examples=["model.safetensors"])


class DownloadLink(BaseModel):
    object: str = "download_link"
    url: str = Field(..., description="a path on this server; GET it without an Authorization header")
    expires_at: int = Field(..., description="unix time after which the link answers 404")


@router.get("/dashboard", include_in_schema=False)
def get_dashboard() -> FileResponse:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html",
                        headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP})


@router.get("/dashboard/assets/{name}", include_in_schema=False)
def get_dashboard_asset(name: str) -> FileResponse:
    if name not in ASSETS:  # a fixed list: nothing else under static/ (or outside it) is served
        raise not_found("asset")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})


# The page loads only its own files and talks only to this origin.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


# ------------------------------------------------------------------ signed links


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# Domain separation: the link key is not the secret itself, so a link signature can never be
# replayed as a key hash (HMACs of the same secret over sha256 hex digests) or the other way round.
_LINK_KEY_CONTEXT = b"layerprune/download-link/v2"


def _signature(payload: str) -> bytes:
    link_key = hmac.new(key_secret(), _LINK_KEY_CONTEXT, hashlib.sha256).digest()
    return hmac.new(link_key, payload.encode("ascii"), hashlib.sha256).digest()


def make_token(key_row: ApiKey, job_id: str, path: str, expires_at: int) -> str:
    payload = _b64(json.dumps({"j": job_id, "p": path, "k": key_row.id, "e": expires_at},
                              separators=(",", ":")).encode())
    return f"{payload}.{_b64(_signature(payload))}"


# A real token is about 200 characters; anything far longer is refused before it is decoded.
TOKEN_MAX_CHARS = 1024


def verify_token(token: str, now: float | None = None) -> dict[str, Any] | None:
    """The claims of a token this server signed and that has not expired; None otherwise.

    Touches no database: the signature is checked first, and the payload is decoded (bounded by
    ``TOKEN_MAX_CHARS``) only once it is known to be ours.
    """
    if len(token) > TOKEN_MAX_CHARS or not token.isascii():
        return None
    payload, _, sig = token.partition(".")
    try:
        given = _unb64(sig)
    except ValueError:
        return None
    if not hmac.compare_digest(_signature(payload), given):
        return None
    try:
        claims = json.loads(_unb64(payload))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    # Signed by us, so well-formed; checked anyway so that no shape can become a 500.
    if not (isinstance(claims, dict) and isinstance(claims.get("j"), str) and isinstance(claims.get("p"), str)
            and isinstance(claims.get("e"), int) and ids.could_be_id(claims.get("k"), ids.KEY)):
        return None
    if (now if now is not None else time.time()) > claims["e"]:
        return None
    return claims


def read_token(session: Any, token: str, now: float | None = None) -> tuple[ApiKey, dict[str, Any]] | None:
    """The key row and claims of a valid token (``verify_token``) of a key that is still active."""
    claims = verify_token(token, now)
    if claims is None:
        return None
    row = session.get(ApiKey, claims["k"])
    if row is None or row.revoked_at is not None:
        return None
    return row, claims


def _artifact(session: Any, tenant: str, job_id: str, path: str) -> Artifact | None:
    if not ids.could_be_id(job_id, ids.JOB) or "\x00" in path:  # names nothing; Postgres would refuse a NUL
        return None
    return session.scalar(select(Artifact).join(Job, Job.id == Artifact.job_id)
                          .where(Job.id == job_id, Job.tenant == tenant, Artifact.path == path))


@router.post("/v1/download-links", response_model=DownloadLink, status_code=201,
             summary="A short-lived link to one artifact that needs no Authorization header",
             responses=error_responses(401, 404, 503))
def create_download_link(body: DownloadLinkCreate, session: SessionDep, tenant: TenantDep, settings: SettingsDep,
                         credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> DownloadLink:
    if _artifact(session, tenant, body.job_id, body.path) is None:
        raise not_found("artifact", param="path")
    assert credentials is not None  # TenantDep has already refused requests without a key
    key_row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(credentials.credentials)))
    expires_at = int(time.time()) + settings.download_token_seconds
    token = make_token(key_row, body.job_id, body.path, expires_at)
    return DownloadLink(url=f"/dashboard/download/{token}", expires_at=expires_at)


@router.get("/dashboard/download/{token}", summary="Download one artifact with a signed link",
            responses={200: {"content": {"application/octet-stream": {}}}, **error_responses(404)})
def download_with_token(token: str, session: SessionDep, settings: SettingsDep) -> Response:
    found = read_token(session, token)
    if found is None:
        raise ApiError(404, "not_found", "this download link is invalid or has expired; ask for a new one")
    key_row, claims = found
    art = _artifact(session, key_row.tenant, str(claims["j"]), str(claims["p"]))
    if art is None:
        raise not_found("artifact")
    store = get_store(settings)
    filename = Path(art.path).name.replace('"', "")
    presign = getattr(store, "presigned_url", None)
    if settings.s3_presign_downloads and presign is not None:
        return RedirectResponse(presign(art.storage_key, filename=filename), status_code=307)
    try:
        chunks = store.open(art.storage_key)
    except FileNotFoundError:
        raise not_found("artifact") from None
    return StreamingResponse(chunks, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="{filename}"', "Content-Length": str(art.size_bytes),
        "ETag": f'"{art.sha256}"', "Cache-Control": "private, no-store"})
