"""The fields a request carries for the service, beside core's spec: webhook, metadata, priority.

Core's ``JobSpec`` is the model and the stages only. A job request (``api.schemas.JobCreate``)
and a study request (``studies.spec.StudySpec``) both add these, with the same rules, from here.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from layerprune.core.spec import StrictModel

METADATA_MAX_KEYS = 64
# strict: `false`, `true`, "5" and 5.0 are not priorities (a lax int would take them).
Priority = Annotated[int, Field(ge=-100, le=100, strict=True)]


class WebhookSpec(StrictModel):
    url: str = Field(..., min_length=1, max_length=2048)
    secret: str | None = Field(None, max_length=512)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("webhook url must be http:// or https://")
        return v
