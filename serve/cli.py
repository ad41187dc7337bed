"""`backendai`: run the stack, run one job through the API, fetch weights, migrate the database."""

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import httpx

from tasks.config import get_settings


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _up(_: argparse.Namespace) -> int:
    from serve.stack import Stack, StackError

    settings = get_settings()
    stack = Stack(settings)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start()
    except StackError as exc:
        print(f"backendai up failed: {exc}\nlogs: {stack.log_dir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(
        f"\nbackendai is up\n"
        f"  API        {stack.api_url}/api/v1/tasks/create/\n"
        f"  API docs   {stack.api_url}/docs\n"
        f"  Ray        {settings.ray_dashboard_url} (dashboard)\n"
        f"  logs       {stack.log_dir}\n"
        f"  try        backendai run background_removal --image photo.png -o cutout.png\n"
        f"Ctrl-C stops everything this command started.",
        flush=True,
    )
    try:
        while all(process.poll() is None for process in stack.processes.values()):
            time.sleep(1)
        print("a component exited; stopping (see the logs)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    finally:
        stack.stop()


def _progress_line(status: dict) -> str:
    done = int(status.get("progress") or 0)
    bar = "#" * (done // 5) + "-" * (20 - done // 5)
    return f"\r[{bar}] {done:3d}% {status['status']:<10} {status.get('message') or ''}"[:100].ljust(100)


def _run(args: argparse.Namespace) -> int:
    """One job through the API, as a person would: create, watch progress, download the result."""
    files = {"image": (args.image.name, args.image.read_bytes())} if args.image else None
    data = {"task_type": args.task_type, "prompt": args.prompt or args.task_type.replace("_", " "),
            "parameters": args.parameters}
    with httpx.Client(base_url=args.api, timeout=60) as client:
        created = client.post("/api/v1/tasks/create/", data=data, files=files)
        if created.status_code != 201:
            print(f"refused ({created.status_code}): {created.text}", file=sys.stderr)
            return 1
        task_id = created.json()["task_id"]
        print(f"task {task_id} queued")
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            status = client.get(f"/api/v1/tasks/{task_id}/status/").json()
            print(_progress_line(status), end="", flush=True)
            if status["status"] == "FAILURE":
                print(f"\nfailed: {status['error_message']}", file=sys.stderr)
                return 1
            if status["status"] == "SUCCESS":
                result = client.get(f"/api/v1/tasks/{task_id}/result/").json()
                image = client.get(result["result"]["image_url"])
                image.raise_for_status()
                args.output.write_bytes(image.content)
                print(f"\nsaved {args.output} ({len(image.content)} bytes) in "
                      f"{result['processing_time']:.2f} s; metadata {json.dumps(result['result']['metadata'])}")
                return 0
            time.sleep(0.3)
    print(f"\ngave up after {args.timeout} s; the task goes on: {task_id}", file=sys.stderr)
    return 1


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

    commands.add_parser("up", help="start everything locally (no env needed) and serve the API").set_defaults(
        handler=_up)

    run = commands.add_parser("run", help="run one job through the API and save its result")
    run.add_argument("task_type")
    run.add_argument("--image", type=Path, help="input image")
    run.add_argument("--prompt", help="prompt (defaults to the task type)")
    run.add_argument("--parameters", default="{}", help="JSON object of parameters")
    run.add_argument("-o", "--output", type=Path, default=Path("result.png"))
    run.add_argument("--api", default=f"http://{get_settings().api_host}:{get_settings().api_port}")
    run.add_argument("--timeout", type=float, default=600)
    run.set_defaults(handler=_run)

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
