"""Named dependencies, so a route's signature reads like its contract."""

import logging
import uuid
from dataclasses import dataclass
from typing import Annotated

import redis
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from serve.errors import ApiError
from tasks import keys
from tasks.config import Settings, get_settings
from tasks.models import AITask
from tasks.service import get_task

log = logging.getLogger(__name__)

SettingsDep = Annotated[Settings, Depends(get_settings)]


@dataclass(frozen=True)
class Caller:
    key_id: uuid.UUID | None  # None: no key presented (allowed unless API_KEYS_REQUIRED)
    identity: str  # key:<id>, or ip:<client address> without a key: what the rate limit and the queued cap count


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The API key a request presents, or None. A blank X-API-Key or Bearer counts as a (wrong) key, so a client
    whose key variable is unset hears 401 instead of being served anonymously. Other Authorization schemes (a proxy's
    Basic auth) are not ours and are ignored."""
    if x_api_key is not None:
        return x_api_key.strip()
    scheme, _, credentials = (authorization or "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


# Declared for the OpenAPI document (the security schemes clients and Swagger's "Authorize" use); the headers are
# read by presented_key, which treats a blank key as a wrong one where these would treat it as none.
KEY_DESCRIPTION = "An API key from `backendai keys create`; optional unless the server sets API_KEYS_REQUIRED."
BEARER_SCHEME = HTTPBearer(auto_error=False, scheme_name="BearerKey", description=KEY_DESCRIPTION)
HEADER_SCHEME = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKeyHeader",
                             description=KEY_DESCRIPTION)


def _caller(
    request: Request,
    settings: SettingsDep,
    _bearer: Annotated[object, Security(BEARER_SCHEME)],
    _header: Annotated[object, Security(HEADER_SCHEME)],
) -> Caller:
    presented = presented_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
    key = keys.find_key(presented) if presented else None
    if presented is not None and key is None:
        raise ApiError(401, "Invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    if key is None and settings.api_keys_required:
        raise ApiError(401, "An API key is required: send `Authorization: Bearer <key>` or `X-API-Key`",
                       headers={"WWW-Authenticate": "Bearer"})
    identity = f"key:{key.id}" if key else f"ip:{request.client.host if request.client else 'unknown'}"
    try:
        limited = keys.take_request_slot(identity, key.rate_limit_per_minute if key else None)
    except redis.RedisError as exc:  # fail open: Redis being down must not stop status polls from Postgres
        log.warning("rate limit not checked: %s", exc)
        limited = None
    if limited:
        raise ApiError(429, f"Rate limit reached; retry in {limited.retry_after_s} s",
                       headers={"Retry-After": str(limited.retry_after_s)})
    return Caller(key.id if key else None, identity)


CallerDep = Annotated[Caller, Depends(_caller)]


def _task_from_path(task_id: str, caller: CallerDep) -> AITask:
    try:
        parsed = uuid.UUID(task_id)
    except ValueError:
        raise ApiError(404, f"Task not found: {task_id!r} is not a valid task id") from None
    task = get_task(parsed)
    if task is None or task.api_key_id != caller.key_id:  # another key's task does not exist for this caller
        raise ApiError(404, "Task not found")
    return task


TaskDep = Annotated[AITask, Depends(_task_from_path)]
