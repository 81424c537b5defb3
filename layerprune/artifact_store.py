"""The artifact store the settings name: local files, or S3-compatible object storage.

Above both store modules (``storage`` holds the interface and the local store, ``storage_s3``
builds on it), so that choosing one never makes them import each other.
"""

from __future__ import annotations

from layerprune.settings import Settings, get_settings
from layerprune.storage import ArtifactStore, LocalStore
from layerprune.storage_s3 import S3Store


def get_store(settings: Settings | None = None) -> ArtifactStore:
    """The configured store: local files unless ``storage_url`` names object storage."""
    settings = settings or get_settings()
    if settings.storage_url.startswith("s3://"):
        return S3Store.from_settings(settings)
    return LocalStore(settings.effective_storage_dir)
