"""The one settings object of the service, read from ``LAYERPRUNE_*`` environment variables.

Every value has an embedded default that needs no server: SQLite and a filesystem Celery
transport under ``LAYERPRUNE_DATA_DIR`` (default ``./.lp-data``), artifacts on local disk.
Production sets ``LAYERPRUNE_DATABASE_URL=postgresql+psycopg://…`` and
``LAYERPRUNE_BROKER_URL=redis://…``; the code is the same.
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LAYERPRUNE_", extra="ignore")

    data_dir: Path = Path(".lp-data")
    database_url: str = ""  # default: sqlite under data_dir
    broker_url: str = ""  # default: filesystem transport under data_dir
    storage_dir: Path | None = None  # default: data_dir/artifacts
    # Layer scores and base evaluations shared between jobs (worker/cache.py); default data_dir/cache.
    # Workers on several hosts share them when this folder is shared (a file system with flock).
    cache_dir: Path | None = None
    max_study_candidates: int = Field(64, ge=1, le=1000)  # jobs one POST /v1/studies may create
    storage_url: str = ""  # "" = local storage_dir; "s3://bucket/prefix" for object storage
    s3_endpoint_url: str | None = None
    model_roots: str = ""  # os.pathsep-separated folders that "model" paths may name
    api_keys: str = ""  # "tenant-a:key-a,tenant-b:key-b", created at start-up (stored hashed)
    webhook_allowed_hosts: str = ""  # comma-separated hosts exempt from the SSRF guard
    cache_dir: Path | None = None  # converted bundled models (LAYERPRUNE_CACHE_DIR)

    # Webhooks, object storage, dashboard (issue 7)
    webhook_max_attempts: int = Field(8, ge=1)  # attempts per delivery before it is marked failed
    webhook_backoff_base_seconds: float = Field(10.0, gt=0)  # delay after attempt n: base * 2**(n-1)
    webhook_backoff_cap_seconds: float = Field(3600.0, gt=0)  # ... but never more than this
    webhook_timeout_seconds: float = Field(10.0, gt=0)  # one HTTP attempt
    webhook_interval_seconds: float = Field(2.0, gt=0)  # how often the sender thread looks for due deliveries
    s3_presign_downloads: bool = False  # artifact downloads answer 307 to a presigned S3 URL
    s3_presign_seconds: int = Field(300, ge=1)
    s3_multipart_threshold_bytes: int = Field(64 * 1024 * 1024, ge=5 * 1024 * 1024)
    download_token_seconds: int = Field(300, ge=1)  # dashboard's short-lived signed download links
    metrics_token: str | None = None  # when set, GET /metrics needs it as a bearer token

    # Jobs and workers
    max_attempts: int = Field(3, ge=1)
    lease_seconds: int = Field(120, ge=5)  # a running job whose lease expires is re-queued
    heartbeat_seconds: float = Field(15.0, gt=0)  # how often a worker extends its lease
    reaper_interval_seconds: float = Field(15.0, gt=0)
    dispatch_interval_seconds: float = Field(5.0, gt=0)  # outbox sweep for undispatched jobs
    # a job still queued this long after its last send is sent again (doubling each time):
    # covers a broker that lost its messages (Redis restarted without persistence)
    redispatch_after_seconds: float = Field(300.0, gt=0)
    task_soft_time_limit: int = Field(24 * 3600, ge=60)
    task_time_limit: int = Field(24 * 3600 + 600, ge=60)
    worker_queues: str = "gpu,cpu"  # queues this worker consumes
    cuda_workers: bool | None = None  # do CUDA workers exist? None: ask torch on this host
    progress_event_interval_seconds: float = Field(2.0, ge=0)  # rate limit of progress events

    # API
    max_spec_bytes: int = 1024 * 1024
    max_upload_bytes: int = 512 * 1024 * 1024
    idempotency_ttl_hours: int = 24
    cors_origins: str = ""
    log_json: bool = True
    log_level: str = "INFO"
    auto_migrate: bool = True  # apply migrations when the API starts (LAYERPRUNE_AUTO_MIGRATE=0 to skip)

    # Security (issue 11)
    # HMAC secret of the stored API-key hashes (db/keys.py). Unset: generated once under data_dir
    # with the embedded SQLite database (development); required with a server database.
    key_secret: SecretStr | None = None  # SecretStr: never shown in a repr or a log line
    # Base of every link the API builds ("https://lp.example.com" or ".../prefix"); unset: links are
    # root-relative ("/v1/..."), never built from the request's Host header.
    public_url: str = ""
    auth_fail_limit: int = Field(10, ge=1)  # wrong API keys from one client per window before 429
    auth_fail_window_seconds: float = Field(60.0, gt=0)
    auth_fail_max_clients: int = Field(10000, ge=1)  # client addresses remembered (least recent dropped)
    trusted_proxies: str = ""  # comma-separated addresses/CIDRs whose X-Forwarded-For names the client

    # API under load (issue 11)
    api_threads: int = Field(40, ge=1)  # worker threads for sync routes and database calls
    db_pool_size: int = Field(10, ge=1)  # database connections kept open per process
    db_max_overflow: int = Field(50, ge=0)  # ... and opened beyond those under load
    db_pool_timeout_seconds: float = Field(10.0, gt=0)  # wait for a free connection before a 503
    api_key_cache_seconds: float = Field(5.0, ge=0)  # a verified key is trusted this long (0: every request)
    request_header_timeout_seconds: float = Field(10.0, gt=0)  # request line + headers must arrive within
    request_body_timeout_seconds: float = Field(30.0, gt=0)  # longest wait for the next piece of a body
    keep_alive_timeout_seconds: int = Field(5, ge=1)  # an idle kept-alive connection is closed after
    job_cache: bool = True  # GET /v1/jobs/{id} answered from memory while a change feed vouches (api/job_cache.py)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _abs(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("public_url", mode="after")
    @classmethod
    def _public_url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v:
            return ""
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("LAYERPRUNE_PUBLIC_URL must look like https://host[:port][/prefix]")
        return v

    @field_validator("trusted_proxies", mode="after")
    @classmethod
    def _proxies(cls, v: str) -> str:
        for item in v.split(","):
            if item.strip():
                try:
                    ipaddress.ip_network(item.strip(), strict=False)
                except ValueError:
                    raise ValueError(f"LAYERPRUNE_TRUSTED_PROXIES: {item.strip()!r} is not an address or CIDR") from None
        return v

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'layerprune.db'}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        """Folder of the embedded filesystem transport (used when broker_url is empty)."""
        return self.data_dir / "broker"

    @property
    def effective_storage_dir(self) -> Path:
        return (self.storage_dir or self.data_dir / "artifacts").expanduser().resolve()

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def effective_cache_dir(self) -> Path:
        return (self.cache_dir or self.data_dir / "cache").expanduser().resolve()

    @property
    def work_dir(self) -> Path:
        """Per-job scratch space of workers (stage outputs, checkpoints); survives retries."""
        return self.data_dir / "work"

    @property
    def model_root_paths(self) -> list[Path]:
        return [Path(p).expanduser().resolve() for p in self.model_roots.split(os.pathsep) if p.strip()]

    @property
    def bootstrap_keys(self) -> list[tuple[str, str]]:
        pairs = []
        for item in self.api_keys.split(","):
            if item.strip():
                tenant, sep, key = item.strip().partition(":")
                if not sep or not tenant or not key:
                    raise ValueError("LAYERPRUNE_API_KEYS must look like 'tenant:key,tenant2:key2'")
                pairs.append((tenant, key))
        return pairs

    @property
    def webhook_allowed_host_set(self) -> set[str]:
        return {h.strip().lower() for h in self.webhook_allowed_hosts.split(",") if h.strip()}

    @property
    def queues(self) -> list[str]:
        return [q.strip() for q in self.worker_queues.split(",") if q.strip()]

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(p.strip(), strict=False) for p in self.trusted_proxies.split(",") if p.strip()]

    @property
    def uses_embedded_database(self) -> bool:
        """True with the embedded SQLite default (development); False with a server database."""
        return self.effective_database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    """Tests change the environment between cases; forget the cached Settings."""
    get_settings.cache_clear()
