"""Requests as a hostile client sends them: HTTP clients normalise `..` out of a URL and send a body all at once, so
path guards and body limits are tested with senders that do neither.

`asgi_request` hands the in-process app exactly what uvicorn would (the percent-decoded target, nothing
normalised, the body in the given chunks); `socket_request` writes the bytes to a real server.
"""

import json
import select
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import h11


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    chunks_read: int = 0  # body chunks the app asked for (asgi_request only)
    chunks_read_when_answered: int = 0  # ... when it started its response

    def json(self) -> Any:
        return json.loads(self.body)


def asgi_request(app, method: str, target: str, headers: Sequence[tuple[str, str]] = (),
                 chunks: Sequence[bytes] = (), chunk_delay_s: float = 0.0) -> RawResponse:
    """One request to the ASGI app, the body streamed in `chunks` (each `chunk_delay_s` after the last)."""
    path, _, query = target.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": unquote(path), "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "state": {},
    }
    response = RawResponse(0, {}, b"")
    pending = list(chunks)

    async def exchange() -> None:
        complete = anyio.Event()

        async def receive() -> dict[str, Any]:
            if response.chunks_read and not pending:  # the body is all sent: the client waits for the answer
                await complete.wait()
                return {"type": "http.disconnect"}
            if response.chunks_read and chunk_delay_s:
                await anyio.sleep(chunk_delay_s)
            response.chunks_read += 1
            body = pending.pop(0) if pending else b""
            return {"type": "http.request", "body": body, "more_body": bool(pending)}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                response.status = message["status"]
                response.chunks_read_when_answered = response.chunks_read
                response.headers = {name.decode("latin-1"): value.decode("latin-1")
                                    for name, value in message.get("headers", [])}
            elif message["type"] == "http.response.body":
                response.body += message.get("body", b"")
                if not message.get("more_body", False):
                    complete.set()

        await app(scope, receive, send)

    anyio.run(exchange)
    return response


def socket_request(base_url: str, method: str, target: str, headers: Sequence[tuple[str, str]] = (),
                   body: Iterable[bytes] = (), pause_s: float = 0.0, timeout_s: float = 30.0) -> RawResponse:
    """One request over a new connection, the target sent byte for byte. The body goes out chunk by chunk,
    `pause_s` apart, and stops as soon as the server has answered (as a client would on an early 413)."""
    url = urlsplit(base_url)
    connection = h11.Connection(h11.CLIENT)
    request_headers = [("Host", url.netloc), ("Connection", "close"), *headers]
    with socket.create_connection((url.hostname, url.port), timeout=timeout_s) as sock:
        sock.sendall(connection.send(h11.Request(method=method, target=target, headers=request_headers)))
        if _send_body(sock, connection, body, pause_s):
            sock.sendall(connection.send(h11.EndOfMessage()))
        return _read_response(sock, connection)


def _send_body(sock: socket.socket, connection: h11.Connection, body: Iterable[bytes], pause_s: float) -> bool:
    """Whether all of the body was sent before the server answered."""
    for chunk in body:
        if _readable(sock, pause_s):
            return False
        try:
            sock.sendall(connection.send(h11.Data(data=chunk)))
        except OSError:  # the server answered and closed while we were sending
            return False
    return True


def _readable(sock: socket.socket, wait_s: float) -> bool:
    return bool(select.select([sock], [], [], wait_s)[0])


def _read_response(sock: socket.socket, connection: h11.Connection) -> RawResponse:
    response = RawResponse(0, {}, b"")
    deadline = time.monotonic() + (sock.gettimeout() or 30.0)
    while time.monotonic() < deadline:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            response.status = event.status_code
            response.headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in event.headers}
        elif isinstance(event, h11.Data):
            response.body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return response
    raise TimeoutError("no complete response")
