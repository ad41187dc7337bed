"""Every error the API returns has the v1 shape: {"error": "...", "details": ...}, never a stack trace."""

import logging
from typing import Any

import redis
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from tasks.service import QueueUnavailable
from tasks.storage import StorageFull

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
# Storage that is full stays full until an operator (or the expiry of old tasks) makes room: no point in seconds.
STORAGE_FULL_RETRY_AFTER_S = 60


class ApiError(Exception):
    def __init__(self, status_code: int, error: str, details: Any = None, headers: dict[str, str] | None = None):
        super().__init__(error)
        self.status_code, self.error, self.details, self.headers = status_code, error, details, headers


def error_response(status_code: int, error: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape, also for middleware that answers before any route runs."""
    body = {"error": error} if details is None else {"error": error, "details": details}
    return JSONResponse(body, status_code=status_code, headers=headers)


def _message(error: dict[str, Any]) -> str:
    """Pydantic's message, except where it would name Python types instead of the form's terms."""
    if "Expected UploadFile" in error["msg"]:
        return "must be a file upload, not a text field"
    if error["type"] == "string_type" and isinstance(error.get("input"), UploadFile):
        return "must be a text field, not a file"
    return error["msg"]


def _unavailable(what: str) -> JSONResponse:
    return error_response(503, f"{what} is unavailable; nothing was changed. Retry in a few seconds.",
                          headers={"Retry-After": str(RETRY_AFTER_S)})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.error, exc.details, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]), "message": _message(e)}
                   for e in exc.errors()]
        first = details[0] if details else {"field": "request", "message": "is not valid"}
        return error_response(400, f"Invalid input: {first['field']}: {first['message']}", details)

    @app.exception_handler(sqlalchemy.exc.OperationalError)
    async def database_down(_: Request, exc: Exception) -> JSONResponse:
        log.error("database error: %s", exc)
        return _unavailable("The database")

    @app.exception_handler(QueueUnavailable)
    @app.exception_handler(BrokerError)
    @app.exception_handler(redis.RedisError)
    async def queue_down(_: Request, exc: Exception) -> JSONResponse:
        log.error("queue error: %s", exc)
        return _unavailable("The task queue")

    @app.exception_handler(StorageFull)
    async def storage_full(_: Request, exc: StorageFull) -> JSONResponse:
        log.error("storage full: %s", exc.__cause__ or exc)  # the server's path, for the operator only
        return error_response(507, "Storage for uploads is full; nothing was stored. Retry later.",
                              headers={"Retry-After": str(STORAGE_FULL_RETRY_AFTER_S)})

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "Internal error; the request was not completed.")
