"""The `backendai` commands a user runs against an API: submit/run, watch, status, result, cancel, delete, list,
types and styles.

Every error is one line on stderr and an exit status a script can test: 1 the task failed (or the API refused the
request), 2 bad usage (caught before anything is sent), 3 the API is unreachable, 124 a --timeout ran out, 130
interrupted. `--json` prints one JSON document on stdout and nothing else there. Progress is a redrawn bar on a
terminal and plain lines otherwise (a log or a pipe gets no carriage returns).
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from cli.client import ApiRefused, ApiTimeout, ApiUnreachable, BackendAIClient, TaskFailed
from tasks.config import get_settings
from tasks.registry import upload_fields

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 1, 2, 3, 124, 130
EPILOG = ("exit status: 0 done, 1 the task failed or the API refused, 2 bad usage, 3 API unreachable, "
          "124 --timeout ran out, 130 interrupted")


class UsageError(Exception):
    """Bad input found before any request was sent."""


def _say(message: str) -> None:
    print(f"backendai: {message}", file=sys.stderr, flush=True)


def _refusal(refused: ApiRefused) -> str:
    """The API's error and details as one line."""
    details = refused.body.get("details")
    if isinstance(details, dict):
        details = "; ".join(f"{field}: {message}" for field, message in details.items())
    elif isinstance(details, list):
        details = "; ".join(f"{d['field']}: {d['message']}" if isinstance(d, dict) and "field" in d else str(d)
                            for d in details)
    line = f"{refused.body.get('error') or f'HTTP {refused.status_code}'}" + (f" ({details})" if details else "")
    return " ".join(line.split())


def _command(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turns every expected failure into one line and its exit status."""

    @wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except UsageError as exc:
            _say(f"error: {exc}")
            return EXIT_USAGE
        except ApiUnreachable as exc:
            _say(f"cannot reach the API at {exc.base_url}; is `backendai up` running? (or pass --api URL)")
            return EXIT_UNREACHABLE
        except ApiTimeout as exc:
            waited = f"after {args.timeout:g} s" if hasattr(args, "timeout") else "waiting for the API"
            _say(f"timed out {waited}" + (f"; task {exc.task_id} keeps going (backendai watch {exc.task_id})"
                                          if exc.task_id else f": {exc}"))
            return EXIT_TIMEOUT
        except ApiRefused as refused:
            _say(f"refused: {_refusal(refused)}")
            return EXIT_FAILED
        except TaskFailed as failed:
            _say(str(failed))
            return EXIT_FAILED
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED

    return run


def _client(args: argparse.Namespace) -> BackendAIClient:
    return BackendAIClient(args.api, api_key=args.api_key, timeout_s=min(60.0, getattr(args, "timeout", 60.0)))


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    """--parameters JSON, then each --param key=value on top (values parsed as JSON when they are JSON)."""
    try:
        parameters = json.loads(args.parameters)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--parameters is not valid JSON: {exc}") from None
    if not isinstance(parameters, dict):
        raise UsageError(f"--parameters must be a JSON object like '{{\"scale\": 4}}', got {args.parameters!r}")
    for pair in args.param:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise UsageError(f"--param expects KEY=VALUE, got {pair!r}")
        try:
            parameters[key] = json.loads(value)
        except json.JSONDecodeError:
            parameters[key] = value
    return parameters


def _uploads(args: argparse.Namespace) -> dict[str, bytes]:
    """The files given for the registry's upload fields (--image, --target-image, ...), read now: a missing or
    unreadable file is a usage error before anything is sent."""
    files = {}
    for name in upload_fields():
        path: Path | None = getattr(args, name)
        if path is None:
            continue
        option = f"--{name.replace('_', '-')}"
        if not path.is_file():
            raise UsageError(f"{option} {path}: no such file" if not path.exists() else f"{option} {path}: not a file")
        try:
            files[name] = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"{option} {path}: {exc.strerror}") from None
    return files


def _check_output(path: Path, force: bool) -> None:
    """Refuse, before any work is queued, an output that cannot be written or would overwrite a file."""
    if path.is_dir():
        raise UsageError(f"-o {path} is a directory; name a file")
    if path.exists() and not force:
        raise UsageError(f"-o {path} exists; pass --force to overwrite it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"-o {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"-o {path}: not writable")


class Progress:
    """Shows status changes: a redrawn bar on a terminal, one plain line per change elsewhere, nothing with
    --json."""

    def __init__(self, quiet: bool):
        self.quiet, self.redraw, self.last = quiet, sys.stdout.isatty(), ""

    def __call__(self, status: dict[str, Any]) -> None:
        if self.quiet:
            return
        done = int(status.get("progress") or 0)
        waiting = ""
        if status.get("queue_position") is not None:
            eta = f", about {round(status['eta_seconds'])} s" if status.get("eta_seconds") is not None else ""
            waiting = f" ({status['queue_position']} ahead{eta})"
        text = f"{status['status']:<10} {done:3d}% {status.get('message') or ''}{waiting}"
        if self.redraw:
            bar = "#" * (done // 5) + "-" * (20 - done // 5)
            print(f"\r[{bar}] {text}"[:100].ljust(100), end="", flush=True)
        elif text != self.last:
            print(text, flush=True)
        self.last = text

    def end(self) -> None:
        if self.redraw and self.last and not self.quiet:
            print()


def _emit(args: argparse.Namespace, document: Any, line: str) -> None:
    print(json.dumps(document, indent=2) if args.json else line, flush=True)


def _default_output(task_type: str, task_id: str) -> Path:
    return Path(f"{task_type}-{task_id[:8]}.png")


def _save_result(client: BackendAIClient, args: argparse.Namespace, task_id: str, output: Path | None,
                 status: dict[str, Any]) -> int:
    result = client.result(task_id)
    output = output or _default_output(result["task_type"], task_id)
    _check_output(output, args.force)
    image = client.download(result["result"]["image_url"])
    output.write_bytes(image)
    metadata = result["result"]["metadata"]
    _emit(args, {"task_id": task_id, "output": str(output), "status": status, "result": result},
          f"saved {output} ({len(image)} bytes) in {result['processing_time'] or 0:.2f} s; "
          f"metadata {json.dumps(metadata)}")
    if metadata.get("random_weights"):
        _say("note: the model has random weights (its real weights are not installed), so the image is noise")
    return 0


@_command
def submit(args: argparse.Namespace) -> int:
    """Create a task; with --wait follow it, save its result, and cancel it on Ctrl-C."""
    deadline = time.monotonic() + args.timeout
    parameters, uploads = _parameters(args), _uploads(args)
    if args.wait and args.output is not None:
        _check_output(args.output, args.force)
    with _client(args) as client:
        created = client.create(args.task_type, args.prompt, parameters=parameters, webhook_url=args.webhook_url,
                                **uploads)
        task_id = created["task_id"]
        if not args.wait:
            _emit(args, created, f"task {task_id} queued")
            return 0
        progress = Progress(quiet=args.json)
        try:
            if not args.json:  # inside the try: from this line on, Ctrl-C cancels the task
                print(f"task {task_id} queued", flush=True)
            final = client.wait(task_id, on_status=progress, timeout_s=max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt:
            _cancel_on_interrupt(client, task_id)
            return EXIT_INTERRUPTED
        finally:
            progress.end()
        if final["status"] != "SUCCESS":
            if args.json:
                _emit(args, {"task_id": task_id, "status": final}, "")
            raise TaskFailed(final)
        return _save_result(client, args, task_id, args.output, final)


def _cancel_on_interrupt(client: BackendAIClient, task_id: str) -> None:
    try:
        client.cancel(task_id)
        _say(f"interrupted: cancelled task {task_id}")
    except ApiRefused as refused:  # it finished meanwhile
        _say(f"interrupted; task {task_id} was not cancelled: {_refusal(refused)}")


@_command
def watch(args: argparse.Namespace) -> int:
    """Follow a task until it finishes; Ctrl-C stops watching, not the task."""
    with _client(args) as client:
        progress = Progress(quiet=args.json)
        try:
            final = client.wait(args.task_id, on_status=progress, timeout_s=args.timeout)
        except KeyboardInterrupt:
            progress.end()
            _say(f"stopped watching; the task goes on (backendai cancel {args.task_id} stops it)")
            return EXIT_INTERRUPTED
        progress.end()
    _emit(args, final, f"{final['status']}: {final.get('error_message') or final.get('message') or ''}".strip())
    if final["status"] != "SUCCESS":
        raise TaskFailed(final)
    return 0


@_command
def status(args: argparse.Namespace) -> int:
    """The status JSON; exit status 1 when the task failed (or was cancelled)."""
    with _client(args) as client:
        current = client.status(args.task_id)
    print(json.dumps(current, indent=2))
    return EXIT_FAILED if current["status"] == "FAILURE" else 0


@_command
def result(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _save_result(client, args, args.task_id, args.output, client.status(args.task_id))


@_command
def cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.cancel(args.task_id)
    _emit(args, answer, answer["message"])
    return 0


@_command
def delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete(args.task_id)
    _emit(args, {"task_id": args.task_id, "deleted": True}, f"deleted task {args.task_id} and its files")
    return 0


@_command
def list_tasks(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.list_tasks(status=args.status, task_type=args.type, limit=args.limit, cursor=args.cursor)
    if args.json:
        _emit(args, page, "")
        return 0
    for task in page["tasks"]:
        state = "CANCELLED" if task["cancelled"] else task["status"]
        note = task.get("error_message") if task["status"] == "FAILURE" else task.get("message")
        print(f"{task['task_id']}  {task['created_at'][:19].replace('T', ' ')}  {task['task_type']:<18} "
              f"{state:<10} {task['progress']:3d}%  {note or ''}".rstrip())
    if not page["tasks"]:
        _say("no tasks")
    if page["next_cursor"]:
        _say(f"more: backendai list --cursor {page['next_cursor']}")
    return 0


@_command
def types(args: argparse.Namespace) -> int:
    with _client(args) as client:
        described = client.task_types()
    if args.json:
        _emit(args, list(described.values()), "")
        return 0
    for name, entry in described.items():
        uploads = ", ".join(f"--{u['name'].replace('_', '-')}" + ("" if u["required"] else " (optional)")
                            for u in entry.get("uploads", []))
        parameters = ", ".join(entry["parameters_schema"].get("properties", {}))
        print(f"{name}\n  prompt: {entry.get('prompt', 'required')}; uploads: {uploads or 'none'}\n"
              f"  parameters: {parameters or 'none'}")
    return 0


@_command
def styles(args: argparse.Namespace) -> int:
    with _client(args) as client:
        catalogue = client.styles()
    _emit(args, catalogue, "\n".join(f"{style['name']:<10} {style['description']}" for style in catalogue["styles"]))
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Adds the user commands to `backendai`'s subcommands."""
    api_url = f"http://{get_settings().api_host}:{get_settings().api_port}"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", default=os.environ.get("BACKENDAI_API_URL", api_url),
                        help=f"API base URL (default $BACKENDAI_API_URL or {api_url})")
    common.add_argument("--api-key", default=os.environ.get("BACKENDAI_API_KEY"),
                        help="API key (default $BACKENDAI_API_KEY)")
    common.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")

    def command(name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, parents=[common], help=help_text, description=help_text, epilog=EPILOG)
        parser.set_defaults(handler=handler)
        return parser

    def output(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-o", "--output", type=Path, help="result file (default <type>-<id>.png)")
        parser.add_argument("--force", action="store_true", help="overwrite the result file if it exists")

    for name, waits in (("submit", False), ("run", True)):
        parser = command(name, submit, "create a task" + (
            ", follow it and save its result (Ctrl-C cancels it)" if waits else " (--wait: as `run`)"))
        parser.add_argument("task_type", help="see `backendai types`")
        for upload, description in upload_fields().items():
            parser.add_argument(f"--{upload.replace('_', '-')}", dest=upload, type=Path, help=description)
        parser.add_argument("--prompt", help="text input; optional for types that do not use it")
        parser.add_argument("--parameters", default="{}", help="JSON object of parameters")
        parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="one parameter")
        parser.add_argument("--webhook-url", help="POSTed the outcome when the task finishes")
        parser.add_argument("--wait", action="store_true", default=waits, help="follow progress, save the result")
        output(parser)
        parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole run (default 600)")

    parser = command("watch", watch, "follow a task until it finishes (Ctrl-C stops watching, not the task)")
    parser.add_argument("task_id")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to watch at most (default 3600)")
    command("status", status, "print a task's status JSON (exit status 1 if it failed)").add_argument("task_id")
    parser = command("result", result, "save a finished task's result image")
    parser.add_argument("task_id")
    output(parser)
    command("cancel", cancel, "cancel a pending or running task").add_argument("task_id")
    command("delete", delete, "cancel a task if running and delete its files").add_argument("task_id")
    parser = command("list", list_tasks, "your tasks, newest first")
    parser.add_argument("--status", choices=["PENDING", "PROCESSING", "SUCCESS", "FAILURE", "RETRY"])
    parser.add_argument("--type", help="only this task type")
    parser.add_argument("--limit", type=int, default=20, help="tasks per page (at most 100)")
    parser.add_argument("--cursor", help="the next page (printed at the end of a full page)")
    command("types", types, "the task types this API serves, with their uploads and parameters")
    command("styles", styles, "the named styles of style_transfer")
