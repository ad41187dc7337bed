"""`backendai`: run the stack, run one job through the API, fetch weights, migrate the database."""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from serve.client import ApiRefused, BackendAIClient
from tasks.config import get_settings
from tasks.registry import upload_fields


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _up(args: argparse.Namespace) -> int:
    from serve.stack import Stack, StackError

    settings = get_settings()
    stack = Stack(settings)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start()
        flower_url = stack.start_flower(args.flower) if args.flower else None
    except StackError as exc:
        print(f"backendai up failed: {exc}\nlogs: {stack.log_dir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    flower_line = f"  Flower     {flower_url} (Celery workers and tasks)\n" if flower_url else ""
    limit = (f"{settings.rate_limit_per_minute} requests/min per API key or client address (RATE_LIMIT_PER_MINUTE;"
             f" 0 turns it off)" if settings.rate_limit_per_minute else "off")
    print(
        f"\nbackendai is up\n"
        f"  API        {stack.api_url}/api/v1/tasks/create/\n"
        f"  API docs   {stack.api_url}/docs\n"
        f"  Ray        {settings.ray_dashboard_url} (dashboard)\n"
        f"  Metrics    {stack.api_url}/metrics (Prometheus)\n"
        f"{flower_line}"
        f"  rate limit {limit}\n"
        f"  logs       {stack.log_dir}\n"
        f"  try        backendai run background_removal --image photo.png -o cutout.png\n"
        f"A part that dies is restarted. Ctrl-C (or SIGTERM) lets running tasks finish, then stops everything.",
        flush=True,
    )
    try:
        while stack.failure is None:
            time.sleep(1)
        print(f"stopping: {stack.failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping: running tasks finish first…", flush=True)
        return 0
    finally:
        stack.stop()


def _progress_line(status: dict) -> str:
    done = int(status.get("progress") or 0)
    bar = "#" * (done // 5) + "-" * (20 - done // 5)
    waiting = f" ({status['queue_position']} ahead)" if status.get("queue_position") is not None else ""
    return f"\r[{bar}] {done:3d}% {status['status']:<10} {status.get('message') or ''}{waiting}"[:100].ljust(100)


def _client(args: argparse.Namespace) -> BackendAIClient:
    return BackendAIClient(args.api, api_key=args.api_key)


def _parameters(args: argparse.Namespace) -> dict:
    """--parameters JSON, then each --param key=value on top (values parsed as JSON when they are JSON)."""
    parameters = json.loads(args.parameters)
    for pair in args.param:
        key, _, value = pair.partition("=")
        try:
            parameters[key] = json.loads(value)
        except json.JSONDecodeError:
            parameters[key] = value
    return parameters


def _uploads(args: argparse.Namespace) -> dict[str, Path]:
    """The files given for the registry's upload fields (--image, --target-image, ...)."""
    return {name: path for name in upload_fields() if (path := getattr(args, name)) is not None}


def _submit(args: argparse.Namespace) -> int:
    """Create a task; with --wait follow its progress and save the result image."""
    with _client(args) as client:
        try:
            created = client.create(args.task_type, args.prompt or args.task_type.replace("_", " "),
                                    parameters=_parameters(args), webhook_url=args.webhook_url, **_uploads(args))
        except ApiRefused as refused:
            print(f"refused: {refused}", file=sys.stderr)
            return 1
        task_id = created["task_id"]
        print(f"task {task_id} queued")
        if not args.wait:
            return 0
        final = client.wait(task_id, on_status=lambda s: print(_progress_line(s), end="", flush=True),
                            timeout_s=args.timeout)
        print()
        if final["status"] != "SUCCESS":
            print(f"failed: {final.get('error_message') or final['status']}", file=sys.stderr)
            return 1
        result = client.result(task_id)
        image = client.download(result["result"]["image_url"])
        args.output.write_bytes(image)
        print(f"saved {args.output} ({len(image)} bytes) in {result['processing_time']:.2f} s; "
              f"metadata {json.dumps(result['result']['metadata'])}")
        return 0


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            print(json.dumps(client.status(args.task_id), indent=2))
        except ApiRefused as refused:
            print(f"refused: {refused}", file=sys.stderr)
            return 1
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            print(client.cancel(args.task_id)["message"])
        except ApiRefused as refused:
            print(f"refused: {refused}", file=sys.stderr)
            return 1
    return 0


def _models_fetch(_: argparse.Namespace) -> int:
    from deployments.weights import fetch_weights, missing_weights

    models_dir = get_settings().models_dir
    fetch_weights(models_dir)
    print(f"all offline weights present in {models_dir}" if not missing_weights(models_dir) else "incomplete")
    return 0


def _db_upgrade(_: argparse.Namespace) -> int:
    _migrated()
    print(f"database at {get_settings().effective_database_url} is at the newest schema")
    return 0


def _migrated() -> None:
    """Key commands may be the first thing run on a fresh database."""
    from tasks.db import migrate

    migrate()


def _keys_create(args: argparse.Namespace) -> int:
    from tasks.keys import create_key

    _migrated()
    key, record = create_key(args.name, args.rate_limit)
    print(f"created key {record.prefix}… for {record.name!r}; it is shown only now:\n{key}")
    return 0


def _keys_list(_: argparse.Namespace) -> int:
    from tasks.keys import list_keys

    _migrated()
    for record in list_keys():
        state = f"revoked {record.revoked_at:%Y-%m-%d}" if record.revoked_at else "active"
        limit = record.rate_limit_per_minute or get_settings().rate_limit_per_minute
        print(f"{record.prefix}…  {record.name:<24} {state:<18} {limit}/min  created {record.created_at:%Y-%m-%d}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from tasks.keys import revoke_key

    _migrated()
    if revoke_key(args.prefix):
        print(f"revoked {args.prefix}…")
        return 0
    print(f"no active key starts with {args.prefix!r}", file=sys.stderr)
    return 1


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    uvicorn.run("serve.app:app", host=args.host or settings.api_host, port=args.port or settings.api_port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backendai", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start everything locally (no env needed) and serve the API")
    up.add_argument("--flower", nargs="?", type=int, const=5555, metavar="PORT",
                    help="also start Flower, Celery's monitoring UI, on PORT (default 5555)")
    up.set_defaults(handler=_up)

    api_url = f"http://{get_settings().api_host}:{get_settings().api_port}"
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--api", default=api_url, help=f"API base URL (default {api_url})")
    connection.add_argument("--api-key", default=os.environ.get("BACKENDAI_API_KEY"),
                            help="API key (default $BACKENDAI_API_KEY)")

    for name, waits in (("submit", False), ("run", True)):
        submit = commands.add_parser(name, parents=[connection], help="create a task" + (
            "" if not waits else ", follow it and save the result (submit --wait)"))
        submit.add_argument("task_type")
        for name, description in upload_fields().items():
            submit.add_argument(f"--{name.replace('_', '-')}", type=Path, help=description)
        submit.add_argument("--prompt", help="prompt (defaults to the task type)")
        submit.add_argument("--parameters", default="{}", help="JSON object of parameters")
        submit.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="one parameter")
        submit.add_argument("--webhook-url", help="POSTed the outcome when the task finishes")
        submit.add_argument("--wait", action="store_true", default=waits, help="follow progress, save the result")
        submit.add_argument("-o", "--output", type=Path, default=Path("result.png"))
        submit.add_argument("--timeout", type=float, default=600)
        submit.set_defaults(handler=_submit)

    status = commands.add_parser("status", parents=[connection], help="show a task's status JSON")
    status.add_argument("task_id")
    status.set_defaults(handler=_status)
    cancel = commands.add_parser("cancel", parents=[connection], help="cancel a pending or running task")
    cancel.add_argument("task_id")
    cancel.set_defaults(handler=_cancel)

    models = commands.add_parser("models", help="model weights").add_subparsers(dest="action", required=True)
    models.add_parser("fetch", help="fetch missing offline weights into MODELS_DIR").set_defaults(
        handler=_models_fetch)

    db = commands.add_parser("db", help="database").add_subparsers(dest="action", required=True)
    db.add_parser("upgrade", help="migrate the schema to the newest revision").set_defaults(handler=_db_upgrade)

    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key (printed once; stored hashed)")
    create.add_argument("name")
    create.add_argument("--rate-limit", type=int, help="requests per minute (default RATE_LIMIT_PER_MINUTE)")
    create.set_defaults(handler=_keys_create)
    keys.add_parser("list", help="list keys").set_defaults(handler=_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key by its prefix (as `keys list` shows it)")
    revoke.add_argument("prefix")
    revoke.set_defaults(handler=_keys_revoke)

    api = commands.add_parser("api", help="serve the API with plain uvicorn (no Ray Serve ingress)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(handler=_api)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
