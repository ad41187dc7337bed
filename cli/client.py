"""A small typed Python client for the REST API (used by the CLI and the tests).

    with BackendAIClient("http://127.0.0.1:8000") as client:
        done = client.run("background_removal", image=Path("photo.png"))    # waits; raises on any failure
        Path("cutout.png").write_bytes(done.image)

Every failure is one of four exceptions, all BackendAIError: ApiRefused (the API said no: 4xx/5xx, after retrying
429 and 503 as Retry-After asks), ApiUnreachable (no answer at all), ApiTimeout (a total wait ran out) and
TaskFailed (the task ended FAILURE, or cancelled).
"""

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

FINISHED = ("SUCCESS", "FAILURE")
RETRIED_STATUSES = (429, 503)  # the API changed nothing and says when to come back
MAX_RETRY_AFTER_S = 60.0
RECONNECT_PAUSES_S = (0.5, 1.0, 2.0, 5.0)  # between event-stream reconnects; the last one repeats
Image = Path | bytes


class BackendAIError(Exception):
    """Anything that kept a request or a task from succeeding."""


class ApiRefused(BackendAIError):
    """The API answered 4xx/5xx: `status_code` and the error body ({"error": ..., "details": ...})."""

    def __init__(self, status_code: int, body: dict[str, Any]):
        super().__init__(f"{status_code}: {body.get('error')}" + (f" {body['details']}" if body.get("details") else ""))
        self.status_code, self.body = status_code, body


class ApiUnreachable(BackendAIError):
    """No answer from the API (nothing listening, DNS, TLS, a dropped connection)."""

    def __init__(self, base_url: str, cause: Exception):
        super().__init__(f"cannot reach the API at {base_url}: {cause or type(cause).__name__}")
        self.base_url = base_url


class ApiTimeout(BackendAIError):
    """A total wait ran out; the task (`task_id`, when there is one) keeps going on the server."""

    def __init__(self, message: str, task_id: str | None = None, last_status: dict[str, Any] | None = None):
        super().__init__(message)
        self.task_id, self.last_status = task_id, last_status


class TaskFailed(BackendAIError):
    """The task ended FAILURE; `cancelled` tells a cancel from an error."""

    def __init__(self, status: dict[str, Any]):
        self.status, self.cancelled = status, bool(status.get("cancelled"))
        super().__init__(f"task {status['task_id']} {'was cancelled' if self.cancelled else 'failed'}: "
                         f"{status.get('error_message') or status['status']}")


@dataclass(frozen=True)
class Finished:
    """What `run` returns: the result image's bytes and everything said about it."""

    task_id: str
    image: bytes
    metadata: dict[str, Any]  # the model's (model, size, seed, random_weights, …)
    result: dict[str, Any]  # GET …/result/
    status: dict[str, Any]  # the final GET …/status/


def _file(name: str, image: Image) -> tuple[str, bytes]:
    return (image.name, image.read_bytes()) if isinstance(image, Path) else (f"{name}.png", image)


class BackendAIClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 60, retries: int = 3,
                 transport: httpx.BaseTransport | None = None):
        """`timeout_s` bounds each request; `retries` is how often a 429 or 503 is retried after its Retry-After;
        `transport` replaces httpx's (a proxy, a mock)."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url, self.timeout_s, self.retries = base_url.rstrip("/"), timeout_s, retries
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport)
        self._task_types: dict[str, dict[str, Any]] | None = None

    def __enter__(self) -> "BackendAIClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def _send(self, method: str, url: str, deadline: float | None = None, **kwargs: Any) -> httpx.Response:
        """One request, retried on 429/503 after the Retry-After the API sent (not past `deadline`)."""
        retries_left = self.retries
        while True:
            try:
                response = self.http.request(method, url, **kwargs)
            except httpx.TimeoutException as exc:
                raise ApiTimeout(f"the API at {self.base_url} did not answer {method} {url} in time") from exc
            except httpx.TransportError as exc:
                raise ApiUnreachable(self.base_url, exc) from exc
            pause = _retry_after_s(response)
            if response.status_code not in RETRIED_STATUSES or retries_left == 0 or (
                    deadline is not None and time.monotonic() + pause > deadline):
                return response
            retries_left -= 1
            time.sleep(pause)

    def _json(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200] or response.reason_phrase}
        if response.is_error:
            raise ApiRefused(response.status_code, body if isinstance(body, dict) else {"error": str(body)})
        return body

    def task_types(self) -> dict[str, dict[str, Any]]:
        """What the server serves, by type name (fetched once per client)."""
        if self._task_types is None:
            self._task_types = {entry["task_type"]: entry for entry in self._json(self._send("GET",
                                                                                           "/api/v1/task-types/"))}
        return self._task_types

    def styles(self) -> dict[str, Any]:
        return self._json(self._send("GET", "/api/v1/styles/"))

    def _prompt_for(self, task_type: str, prompt: str | None) -> str | None:
        """The v1 form requires a prompt: a type that does not need one gets its own name. A type that does (or
        one the server does not know) is sent none, so the API says what is missing."""
        if prompt is not None:
            return prompt
        described = self.task_types().get(task_type)
        return task_type.replace("_", " ") if described and described.get("prompt") != "required" else None

    def create(self, task_type: str, prompt: str | None = None, image: Image | None = None,
               parameters: dict | None = None, webhook_url: str | None = None, idempotency_key: str | None = None,
               wait_s: int | None = None, **uploads: Image | None) -> dict[str, Any]:
        """Create a task. `image` and any further upload its type takes (`target_image=`, `style_image=`, ...: the
        task types' `uploads`) are paths or bytes. `wait_s` asks the API to answer once the task is done if that is
        soon (`Prefer: wait`): the answer is then the finished status JSON."""
        files = {name: _file(name, value) for name, value in {"image": image, **uploads}.items() if value}
        data = {"task_type": task_type, "parameters": json.dumps(parameters or {})}
        if (text := self._prompt_for(task_type, prompt)) is not None:
            data["prompt"] = text
        if webhook_url:
            data["webhook_url"] = webhook_url
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if wait_s:
            headers["Prefer"] = f"wait={wait_s}"
        return self._json(self._send("POST", "/api/v1/tasks/create/", data=data, files=files or None,
                                     headers=headers, timeout=self.timeout_s + (wait_s or 0)))

    def status(self, task_id: str) -> dict[str, Any]:
        return self._json(self._send("GET", f"/api/v1/tasks/{task_id}/status/"))

    def result(self, task_id: str) -> dict[str, Any]:
        return self._json(self._send("GET", f"/api/v1/tasks/{task_id}/result/"))

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._json(self._send("POST", f"/api/v1/tasks/{task_id}/cancel/"))

    def delete(self, task_id: str) -> None:
        """Cancel it if running and delete its files; its status then says `deleted`."""
        response = self._send("DELETE", f"/api/v1/tasks/{task_id}/")
        if response.is_error:
            self._json(response)

    def list_tasks(self, status: str | None = None, task_type: str | None = None, limit: int = 20,
             cursor: str | None = None) -> dict[str, Any]:
        """One page of your tasks, newest first: {"tasks": [...], "next_cursor": ...}."""
        params = {name: value for name, value in (("status", status), ("task_type", task_type), ("limit", limit),
                                                  ("cursor", cursor)) if value is not None}
        return self._json(self._send("GET", "/api/v1/tasks/", params=params))

    def download(self, url: str) -> bytes:
        """A result image (`image_url`), with this client's key."""
        response = self._send("GET", url)
        if response.is_error:
            self._json(response)
        return response.content

    def events(self, task_id: str, timeout_s: float = 600) -> Iterator[dict[str, Any]]:
        """The status JSON at every change (Server-Sent Events) until the task finishes, reconnecting when the
        stream drops (each connection starts with a full snapshot). ApiTimeout after `timeout_s` in all."""
        deadline = time.monotonic() + timeout_s
        pauses = iter(RECONNECT_PAUSES_S)
        last: dict[str, Any] | None = None
        while True:
            try:
                for status in self._stream_once(task_id, deadline):
                    pauses = iter(RECONNECT_PAUSES_S)  # it answered: a later drop starts the backoff again
                    last = status
                    yield status
                    if status["status"] in FINISHED:
                        return
            except ApiUnreachable:
                if last is None:  # never reached: nothing is listening, so waiting would not help
                    raise
            except httpx.TransportError:
                pass  # dropped mid-way (an API restart, a proxy's idle timeout): reconnect below
            except ApiRefused as refused:
                if refused.status_code not in RETRIED_STATUSES:
                    raise
            pause = next(pauses, RECONNECT_PAUSES_S[-1])
            if time.monotonic() + pause >= deadline:
                raise ApiTimeout(f"task {task_id} did not finish within {timeout_s:.3g} s", task_id, last)
            time.sleep(pause)

    def _stream_once(self, task_id: str, deadline: float) -> Iterator[dict[str, Any]]:
        """One connection's events. The server sends a keepalive every 15 s, so a read waits at most 30 s."""
        left = max(0.1, deadline - time.monotonic())
        try:
            with self.http.stream("GET", f"/api/v1/tasks/{task_id}/events/",
                                  timeout=httpx.Timeout(min(left, 30.0), connect=min(left, 10.0))) as response:
                if response.is_error:
                    response.read()
                    self._json(response)
                data: list[str] = []
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        yield json.loads("\n".join(data))
                        data = []
                    if time.monotonic() > deadline:
                        return
        except httpx.ConnectError as exc:
            raise ApiUnreachable(self.base_url, exc) from exc

    def wait(self, task_id: str, on_status: Callable[[dict[str, Any]], None] | None = None,
             timeout_s: float = 600) -> dict[str, Any]:
        """Follow the task until it finishes; returns its final status JSON (ApiTimeout after `timeout_s`)."""
        status: dict[str, Any] = {}
        for status in self.events(task_id, timeout_s):  # it ends with the finished status, or raises
            if on_status:
                on_status(status)
        return status

    def run(self, task_type: str, image: Image | None = None, prompt: str | None = None,
            parameters: dict | None = None, timeout_s: float = 600,
            on_status: Callable[[dict[str, Any]], None] | None = None, **create: Any) -> Finished:
        """Create a task, wait for it and fetch its result image: one call for a script. Raises TaskFailed when the
        task fails or is cancelled, ApiTimeout when `timeout_s` (the whole run) passes."""
        deadline = time.monotonic() + timeout_s
        task_id = self.create(task_type, prompt, image, parameters, **create)["task_id"]
        final = self.wait(task_id, on_status, timeout_s=max(0.0, deadline - time.monotonic()))
        if final["status"] != "SUCCESS":
            raise TaskFailed(final)
        result = self.result(task_id)
        return Finished(task_id=task_id, image=self.download(result["result"]["image_url"]),
                        metadata=result["result"]["metadata"], result=result, status=final)


def _retry_after_s(response: httpx.Response) -> float:
    """Retry-After in seconds (an HTTP date counts as 1 s), capped; 1 s when absent."""
    try:
        return min(max(float(response.headers.get("Retry-After", "1")), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return 1.0
