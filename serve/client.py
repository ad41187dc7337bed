"""A small typed Python client for the REST API (used by the CLI and the tests).

    client = BackendAIClient("http://127.0.0.1:8000")
    task = client.create("background_removal", "remove the background", image=Path("photo.png"))
    final = client.wait(task["task_id"], on_status=print)          # follows the SSE stream
    png = client.download(client.result(task["task_id"])["result"]["image_url"])
"""

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

FINISHED = ("SUCCESS", "FAILURE")
Image = Path | bytes


class ApiRefused(Exception):
    """The API answered 4xx/5xx: `status_code` and the seed-shaped `body` ({"error": ..., "details": ...})."""

    def __init__(self, status_code: int, body: dict[str, Any]):
        super().__init__(f"{status_code}: {body.get('error')}" + (f" {body['details']}" if body.get("details") else ""))
        self.status_code, self.body = status_code, body


def _file(name: str, image: Image) -> tuple[str, bytes]:
    return (image.name, image.read_bytes()) if isinstance(image, Path) else (f"{name}.png", image)


class BackendAIClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 60):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> "BackendAIClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        body = response.json()
        if response.is_error:
            raise ApiRefused(response.status_code, body)
        return body

    def create(self, task_type: str, prompt: str, image: Image | None = None, parameters: dict | None = None,
               webhook_url: str | None = None, idempotency_key: str | None = None,
               **uploads: Image | None) -> dict[str, Any]:
        """Create a task. `image` and any further upload the type takes (`target_image=`, `style_image=`, ...:
        GET /api/v1/task-types/ lists them) are paths or bytes."""
        files = {name: _file(name, value) for name, value in {"image": image, **uploads}.items() if value}
        data = {"task_type": task_type, "prompt": prompt, "parameters": json.dumps(parameters or {})}
        if webhook_url:
            data["webhook_url"] = webhook_url
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json(self.http.post("/api/v1/tasks/create/", data=data, files=files or None, headers=headers))

    def status(self, task_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/api/v1/tasks/{task_id}/status/"))

    def result(self, task_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/api/v1/tasks/{task_id}/result/"))

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._json(self.http.post(f"/api/v1/tasks/{task_id}/cancel/"))

    def events(self, task_id: str, timeout_s: float = 600) -> Iterator[dict[str, Any]]:
        """The status JSON at every change (Server-Sent Events), until the task finishes."""
        with self.http.stream("GET", f"/api/v1/tasks/{task_id}/events/",
                              timeout=httpx.Timeout(timeout_s, connect=10)) as response:
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

    def wait(self, task_id: str, on_status: Callable[[dict[str, Any]], None] | None = None,
             timeout_s: float = 600) -> dict[str, Any]:
        """Follow the task until it finishes; returns its final status JSON."""
        for status in self.events(task_id, timeout_s):
            if on_status:
                on_status(status)
            if status["status"] in FINISHED:
                return status
        return self.status(task_id)  # the stream ended early (e.g. a proxy timeout): ask once more

    def download(self, url: str) -> bytes:
        response = self.http.get(url)
        response.raise_for_status()
        return response.content
