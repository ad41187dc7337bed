"""Input and result files behind one fsspec URL (local folder, S3, GCS, ...), under generated names."""

import errno
import logging
import secrets
from datetime import UTC, datetime
from functools import lru_cache

from fsspec.core import url_to_fs

from tasks.config import get_settings

log = logging.getLogger(__name__)

# A write refused for lack of room: the device is full, or the writer's quota is spent.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageFull(Exception):
    """A write found the storage full (no space left, or over quota); nothing of it was kept. Its message names no
    server path: it reaches users (the API's 507 on create, a task's error_message)."""


def _is_full(exc: BaseException) -> bool:
    """Whether the error, or one it happened while handling (a close that failed after a failed write), is a full
    storage's."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain of errors is short; never follow a cycle
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in FULL_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


RESULTS = "tasks/output"


def new_key(kind: str, suffix: str = ".png") -> str:
    """An unguessable dated name for a file of this kind ("input", "output")."""
    return f"tasks/{kind}/{datetime.now(UTC):%Y/%m/%d}/{secrets.token_urlsafe(24)}{suffix}"


class Storage:
    def __init__(self, url: str):
        self.fs, self.root = url_to_fs(url)
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid storage key: {key!r}")
        return f"{self.root.rstrip('/')}/{key}"

    def put(self, kind: str, data: bytes, suffix: str = ".png") -> str:
        """Store bytes under an unguessable dated key and return the key.

        A write that fails leaves no partial file; one that fails because the storage is full (ENOSPC, EDQUOT, on
        the write or on the close that flushes it) raises StorageFull.
        """
        key = new_key(kind, suffix)
        self.write(key, data)
        return key

    def write(self, key: str, data: bytes) -> None:
        """Store bytes under `key` (replacing what is there), with `put`'s guarantees."""
        full_message = "result storage is full" if key.startswith(f"{RESULTS}/") else "storage is full"
        path = self._path(key)
        try:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with self.fs.open(path, "wb") as handle:
                handle.write(data)
        except Exception as exc:
            self._remove_partial(path)
            if _is_full(exc):
                raise StorageFull(full_message) from exc
            raise

    def _remove_partial(self, path: str) -> None:
        """The file a failed write began: never referenced by anything, so nothing else would ever delete it."""
        try:
            if self.fs.exists(path):
                self.fs.rm(path)
        except Exception as exc:  # the write's own error is the one to report
            log.warning("partial file %s not removed: %s", path, exc)

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
