"""`backendai`: run the stack, run and follow tasks through the API (cli/task_commands.py), fetch weights,
migrate the database, manage API keys."""

import argparse
import signal
import sys
import time

from cli.task_commands import add_commands
from tasks.config import get_settings


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _up(args: argparse.Namespace) -> int:
    from cli.stack import Stack, StackError

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


def _reap(args: argparse.Namespace) -> int:
    from tasks.reaper import reap

    report = reap(grace_s=args.grace)
    print(f"re-published {len(report.republished)} lost tasks, failed {len(report.failed)} whose retries were spent"
          + (f"; queues too long to scan this time: {', '.join(report.skipped_queues)}" if report.skipped_queues
             else ""))
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

    from cli.stack import API_KEEP_ALIVE_S

    settings = get_settings()
    uvicorn.run("serve.app:app", host=args.host or settings.api_host, port=args.port or settings.api_port,
                timeout_keep_alive=API_KEEP_ALIVE_S)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backendai", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start everything locally (no env needed) and serve the API")
    up.add_argument("--flower", nargs="?", type=int, const=5555, metavar="PORT",
                    help="also start Flower, Celery's monitoring UI, on PORT (default 5555)")
    up.set_defaults(handler=_up)

    add_commands(commands)

    models = commands.add_parser("models", help="model weights").add_subparsers(dest="action", required=True)
    models.add_parser("fetch", help="fetch missing offline weights into MODELS_DIR").set_defaults(
        handler=_models_fetch)

    db = commands.add_parser("db", help="database").add_subparsers(dest="action", required=True)
    db.add_parser("upgrade", help="migrate the schema to the newest revision").set_defaults(handler=_db_upgrade)

    reap = commands.add_parser("reap", help="re-publish tasks whose queue message was lost (beat runs this too)")
    reap.add_argument("--grace", type=float, help="seconds a row must be untouched (default REAP_GRACE_S)")
    reap.set_defaults(handler=_reap)

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
