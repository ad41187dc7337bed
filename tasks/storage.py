"""Input and result files behind one fsspec URL (local folder, S3, GCS, ...), under generated names."""

import secrets
from datetime import UTC, datetime
from functools import lru_cache

from fsspec.core import url_to_fs

from tasks.config import get_settings


class Storage:
    def __init__(self, url: str):
        self.fs, self.root = url_to_fs(url)
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid storage key: {key!r}")
        return f"{self.root.rstrip('/')}/{key}"

    def put(self, kind: str, data: bytes, suffix: str = ".png") -> str:
        """Store bytes under an unguessable dated key and return the key."""
        key = f"tasks/{kind}/{datetime.now(UTC):%Y/%m/%d}/{secrets.token_urlsafe(24)}{suffix}"
        path = self._path(key)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as handle:
            handle.write(data)
        return key

    def get(self, key: str) -> bytes:
        with self.fs.open(self._path(key), "rb") as handle:
            return handle.read()

    def read_head(self, key: str, size: int) -> bytes:
        """The first `size` bytes (an image header) without reading the whole file."""
        with self.fs.open(self._path(key), "rb") as handle:
            return handle.read(size)

    def exists(self, key: str) -> bool:
        try:
            return self.fs.exists(self._path(key))
        except ValueError:
            return False

    def delete(self, key: str) -> None:
        if self.exists(key):
            self.fs.rm(self._path(key))


@lru_cache
def get_storage() -> Storage:
    return Storage(get_settings().effective_storage_url)
