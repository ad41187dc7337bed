"""Limits every request meets before any route parses it: body size, how long the body may take, NUL characters,
repeated credentials and repeated query parameters.

A plain ASGI middleware, so that nothing is spooled or parsed first: a declared Content-Length over the limit is
answered 413 without reading a byte, and a body of unknown length is counted as it streams in and refused the
moment it passes the limit. A body that arrives too slowly (a client holding a connection open byte by byte) is
refused 408 at its deadline.

A refusal sent while the client is still sending would, if the server then closed, reach most clients as
"connection reset by peer" instead of the answer: closing a socket with unread data makes the kernel reset it, and
clients such as urllib or requests send the whole body before they read. So once the answer is written the rest
of the body is read and thrown away, up to DRAIN_FACTOR times the limit and never past the body's deadline, and only
then does the response end and the connection close. An attacker gains nothing by it: nothing is kept, and a
connection is held no longer than a slow body may hold one anyway.
"""

from collections import Counter

import anyio
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import error_response

# Headers the API reads one value of: a second copy would be silently ignored.
SINGLE_VALUED_HEADERS = ("authorization", "x-api-key", "idempotency-key")
CLOSE = {"Connection": "close"}  # the rest of a refused body is not parsed: the connection cannot be reused
# How much of a refused body is read and discarded, as a multiple of the limit, so that its client reads the answer.
DRAIN_FACTOR = 4


class BodyRefused(HTTPException):
    """Raised from `receive` while a route reads the body. An HTTPException, because FastAPI turns any other
    error during body parsing into a generic 400; the app's handler renders it in the error shape."""

    def __init__(self, status_code: int, error: str):
        super().__init__(status_code, error, headers=CLOSE)


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float):
        self.app, self.max_body_bytes, self.body_timeout_s = app, max_body_bytes, body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _BodyReader(scope, receive, self.max_body_bytes, self.body_timeout_s)
        refusal = _refusal(scope, self.max_body_bytes)
        if refusal is not None:
            status, error = refusal
            await error_response(status, error, headers=CLOSE)(scope, receive, body.watch(send))
            return
        await self.app(scope, body.receive, body.watch(send))


def _refusal(scope: Scope, max_body_bytes: int) -> tuple[int, str] | None:
    """Why the request is refused on its head alone, if it is."""
    if "\x00" in scope["path"] or b"%00" in scope["query_string"] or b"\x00" in scope["query_string"]:
        return 400, "NUL characters are not allowed in the URL"
    headers = Headers(scope=scope)
    if any(b"\x00" in value for _, value in scope["headers"]):
        return 400, "NUL characters are not allowed in headers"
    repeated = [name for name in SINGLE_VALUED_HEADERS if len(headers.getlist(name)) > 1]
    if repeated:
        return 400, f"Header {repeated[0]} may be sent once"
    # No route takes a list in its query: a second value would be silently ignored.
    counts = Counter(name for name, _ in QueryParams(scope["query_string"]).multi_items())
    if repeated_parameters := sorted(name for name, count in counts.items() if count > 1):
        return 400, f"Query parameter {repeated_parameters[0]} may be sent once"
    declared = _declared_length(headers)
    if declared is not None and declared > max_body_bytes:
        return 413, _too_large(max_body_bytes)
    return None


def _declared_length(headers: Headers) -> int | None:
    """Content-Length, when there is a valid one (the server refuses invalid ones; in-process nobody does)."""
    try:
        return int(headers.get("content-length", ""))
    except ValueError:
        return None


def _too_large(max_body_bytes: int) -> str:
    return f"Request body is larger than {max_body_bytes / 2**20:.2f} MB"


class _BodyReader:
    """Counts body bytes against the limit and reads them against the deadline, until the body is complete or the
    response has started; after that `receive` only waits for the client to leave (a stream's disconnect). A
    response that ends while the client may still be sending drains the rest of the body first (module docstring)."""

    def __init__(self, scope: Scope, receive: Receive, max_bytes: int, timeout_s: float):
        self._receive, self.max_bytes, self.timeout_s = receive, max_bytes, timeout_s
        self.deadline = anyio.current_time() + timeout_s
        self.received = 0
        self.done = False
        headers = Headers(scope=scope)
        declared = _declared_length(headers)
        self.body_complete = not declared and "chunked" not in headers.get("transfer-encoding", "").lower()
        # Such a client sends its body only once asked to (the server's first read): an answer comes first instead.
        self.awaiting_continue = headers.get("expect", "").lower() == "100-continue"
        drain_limit = max_bytes * DRAIN_FACTOR
        # A body declared larger still is not drained at all: its client is cut off at once.
        self.drain_limit = drain_limit if declared is None or declared <= drain_limit else 0

    async def receive(self) -> Message:
        if self.done:
            return await self._receive()
        try:
            with anyio.fail_after(self._time_left()):
                message = await self._read()
        except TimeoutError:
            raise BodyRefused(408, f"Request body took longer than {self.timeout_s:g} s to arrive") from None
        if self.received > self.max_bytes:
            raise BodyRefused(413, _too_large(self.max_bytes))
        return message

    async def _read(self) -> Message:
        message = await self._receive()
        self.awaiting_continue = False
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.body_complete = self.done = not message.get("more_body", False)
        else:
            self.body_complete = True  # the client left
        return message

    def _time_left(self) -> float:
        return max(self.deadline - anyio.current_time(), 0)

    async def drain(self) -> None:
        """Read and discard the rest of the body, within the drain limit and the body's deadline."""
        if self.awaiting_continue:
            return
        with anyio.move_on_after(self._time_left()):
            while not self.body_complete and self.received < self.drain_limit:
                await self._read()

    def watch(self, send: Send) -> Send:
        async def send_watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.done = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False) \
                    and not self.body_complete:
                await send({**message, "more_body": True})  # the answer is out; the response ends after the drain
                await self.drain()
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        return send_watched
