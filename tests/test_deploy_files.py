"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the compose file parses, its services
link up and run the design of docs/architecture.md, and every command it runs exists in this environment and
accepts the options it is given."""

import argparse
import fnmatch
import importlib
import re
import shlex
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import urlsplit

import click
import pytest
import sqlalchemy as sa
import yaml
from celery.app.utils import find_app
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_cli
from celery.concurrency import get_implementation
from ray.scripts.scripts import cli as ray_cli
from ray.serve.scripts import cli as serve_cli
from uvicorn.main import main as uvicorn_cli

from cli.main import build_parser
from tasks.celery_app import HOUSEKEEPING_QUEUE
from tasks.registry import TASK_SPECS

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
OUR_SERVICES = {name: service for name, service in SERVICES.items() if "build" in service}
QUEUES = {spec.queue for spec in TASK_SPECS.values()} | {HOUSEKEEPING_QUEUE}

SHELL_BUILTINS = {"kill", "sleep", "wait", "exit"}
SHELL_OPERATORS = {";", "&&", "||", "&", "|"}
SHELL_KEYWORDS = {"until", "while", "do", "done", "if", "then", "else", "fi", "exec", "!"}


def _interpolated(text: str) -> str:
    """Compose's `${VAR:-default}` with its default, `${VAR:?message}` (the operator must set it) as `<VAR>`, and
    `$$` (a literal dollar)."""
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{(\w+):\?[^}]*\}", r"<\1>", text).replace("$$", "$")


def _environment(service: dict) -> dict[str, str]:
    return {key: _interpolated(str(value)) for key, value in service.get("environment", {}).items()}


def _host_ports(service: dict) -> list[int]:
    """Published host ports of `[ip:]host:container` entries."""
    return [int(str(port).split(":")[-2]) for port in service.get("ports", []) if ":" in str(port)]


def _simple_commands(command: str | list[str], env: dict[str, str] | None = None) -> list[list[str]]:
    """The programs a service runs with their arguments, also from inside an `sh -c` script, whose `$VAR`s are
    taken from the container's environment `env`."""
    argv = shlex.split(command) if isinstance(command, str) else [_interpolated(part) for part in command]
    if argv[:2] != ["sh", "-c"]:
        return [argv]
    script = re.sub(r"\$(\w+)", lambda variable: (env or {}).get(variable[1], variable[0]), argv[2])
    commands: list[list[str]] = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        current: list[str] = []
        for token in [*lexer, ";"]:
            if token in SHELL_OPERATORS:
                if current:
                    commands.append(current)
                current = []
            elif current or token not in SHELL_KEYWORDS:
                current.append(token)
    return commands


def _check_click(group: click.Group, argv: list[str], obj: object = None) -> click.Context:
    """Parses the arguments exactly as the program would (a wrong option or value raises), runs nothing."""
    context = group.make_context(group.name or "cli", [], resilient_parsing=True)  # no subcommand yet: no help
    context.obj = obj
    command = group.get_command(context, argv[0])
    assert command is not None, f"{group.name} has no command {argv[0]!r}"
    return command.make_context(argv[0], argv[1:], parent=context)


def _commands(service: dict) -> list[list[str]]:
    return _simple_commands(service.get("command", []), _environment(service))


def _check_celery(argv: list[str]) -> click.Context | None:
    """Also returns the parsed subcommand (`worker`, `beat`) for a closer look."""
    position = next(index for index, token in enumerate(argv) if token in celery_cli.commands)
    group = celery_cli.make_context("celery", argv[:position])
    app = find_app(group.params["app"])  # `-A tasks.celery_app` imports
    subcommand = argv[position:]
    if subcommand[0] == "flower":  # Flower hands its options to tornado
        from flower.options import options as flower_options

        for option in subcommand[1:]:
            assert option.startswith("--") and option[2:].split("=")[0] in flower_options, option
        return None
    return _check_click(celery_cli, subcommand, CLIContext(app=app, no_color=True, workdir=None, quiet=True))


def _check_backendai(argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit_:
        raise AssertionError(f"backendai refuses {argv}") from exit_


def _check_serve(argv: list[str]) -> None:
    context = _check_click(serve_cli, argv)
    if argv[0] == "deploy":
        assert (ROOT / context.params["config_or_import_path"]).is_file()


def _check_uvicorn(argv: list[str]) -> click.Context:
    context = uvicorn_cli.make_context("uvicorn", list(argv))
    module, attribute = context.params["app"].split(":")
    assert hasattr(importlib.import_module(module), attribute), context.params["app"]
    return context


CHECKS = {
    "ray": lambda argv: _check_click(ray_cli, argv),
    "serve": _check_serve,
    "celery": _check_celery,
    "backendai": _check_backendai,
    "uvicorn": _check_uvicorn,
}


def _consumed_queues(argv: list[str]) -> list[str]:
    """The queues of a `celery worker` command line, checked against the consumer design: threads pool, at least
    16 calls in flight, no start-up chatter with the other workers."""
    if argv[0] != "celery" or "worker" not in argv:
        return []
    options = _check_celery(argv).params
    assert (options["pool"], options["without_mingle"], options["without_gossip"]) == (
        get_implementation("threads"), True, True), argv
    assert options["concurrency"] >= 16, argv
    return list(options["queues"])


def test_compose_runs_the_design():
    """The API under uvicorn outside Ray, the model applications deployed on the Ray head, one consumer per queue,
    one beat (docs/architecture.md)."""
    commands = {name: _commands(service) for name, service in OUR_SERVICES.items()}
    programs = {name: {argv[0] for argv in argvs} for name, argvs in commands.items()}

    api = [argv for argv in commands["api"] if argv[0] == "uvicorn"]
    assert api and _check_uvicorn(api[0][1:]).params["app"] == "serve.app:app"
    assert "ray" not in programs["api"] and "ray-head" not in SERVICES["api"].get("depends_on", {})
    assert any(argv[:3] == ["serve", "deploy", "config/serve.yaml"] for argv in commands["ray-head"])
    reservation = SERVICES["ray-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert reservation["driver"] == "nvidia" and reservation["capabilities"] == ["gpu"]

    consumers = {name: queues for name, argvs in commands.items()
                 if (queues := [queue for argv in argvs for queue in _consumed_queues(argv)])}
    assert sorted(queue for queues in consumers.values() for queue in queues) == sorted(QUEUES)
    for name, queues in consumers.items():
        joins_ray = [argv for argv in commands[name] if argv[:2] == ["ray", "start"]]
        if queues == [HOUSEKEEPING_QUEUE]:  # housekeeping never calls Ray: it runs on while Ray restarts
            assert not joins_ray and "ray-head" not in OUR_SERVICES[name]["depends_on"], name
        else:  # a Ray driver reaches the cluster through a Ray node on its own host, one without resources
            options = _check_click(ray_cli, joins_ray[0][1:]).params
            assert (options["address"], options["num_cpus"], options["num_gpus"]) == (
                _environment(OUR_SERVICES[name])["RAY_ADDRESS"], 0, 0), name
    beats = [name for name, argvs in commands.items() if any(argv[:4] == ["celery", "-A", "tasks.celery_app", "beat"]
                                                             for argv in argvs)]
    assert len(beats) == 1 and "deploy" not in OUR_SERVICES[beats[0]]  # two beats would schedule everything twice


def test_compose_keeps_secrets_and_monitoring_private():
    for name, service in OUR_SERVICES.items():
        for variable in ("WEBHOOK_SECRET", "PUBLIC_API_URL"):  # every process signs and links alike
            assert re.fullmatch(rf"\$\{{{variable}:\?.+\}}", service["environment"][variable]), (name, variable)
    flower = SERVICES["flower"]
    assert [str(port).split(":")[0] for port in flower["ports"]] == ["127.0.0.1"]
    assert re.search(r"--basic-auth=\$\{FLOWER_BASIC_AUTH:\?.+\}", " ".join(flower["command"]))


def test_compose_services_link_up():
    for name, service in SERVICES.items():
        assert set(service.get("depends_on", ())) <= set(SERVICES) - {name}, name
    published = [port for service in SERVICES.values() for port in _host_ports(service)]
    assert len(published) == len(set(published)), published
    for name, service in SERVICES.items():
        if name != "redis":
            assert 6379 not in _host_ports(service), name
            assert "6379" not in " ".join(map(" ".join, _commands(service))), name

    postgres = _environment(SERVICES["postgres"])
    head = next(argv for argv in _commands(SERVICES["ray-head"]) if argv[:2] == ["ray", "start"])
    head_options = _check_click(ray_cli, head[1:]).params
    for name, service in OUR_SERVICES.items():
        env = _environment(service)
        database = sa.make_url(env["DATABASE_URL"])
        assert (database.host, database.database, database.username, database.password) == (
            "postgres", postgres["POSTGRES_DB"], postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]), name
        assert urlsplit(env["REDIS_URL"]).hostname == "redis", name
        assert env["RAY_ADDRESS"] == f"ray-head:{head_options['port']}" != "ray-head:6379", name
        assert int(env["RAY_DASHBOARD_PORT"]) == head_options["dashboard_port"], name

    api_port = _check_uvicorn(next(argv for argv in _commands(SERVICES["api"]) if argv[0] == "uvicorn")[1:])
    assert api_port.params["port"] in _host_ports(SERVICES["api"])
    health_url = SERVICES["api"]["healthcheck"]["test"][-1]
    from serve.app import create_app

    assert re.search(r"http://127\.0\.0\.1:\d+(/\S*?)'", health_url)[1] in create_app().openapi()["paths"]


@pytest.mark.parametrize("service", sorted(OUR_SERVICES))
def test_every_command_exists_and_accepts_its_options(service):
    console_scripts = {script.name for script in entry_points(group="console_scripts")}
    healthcheck = OUR_SERVICES[service].get("healthcheck", {}).get("test", [])
    probes = [healthcheck[1:]] if healthcheck[:1] == ["CMD"] and healthcheck[1] != "python" else []
    for argv in [*_commands(OUR_SERVICES[service]), *probes]:
        program, arguments = argv[0], argv[1:]
        if program in SHELL_BUILTINS:
            continue
        assert program in CHECKS and program in console_scripts, f"{service} runs {program!r}"
        CHECKS[program](arguments)


def _dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _ignored(path: str) -> bool:
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    parts = path.split("/")
    prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
               for pattern in patterns for prefix in prefixes)


def test_dockerfile_installs_the_project_from_files_that_reach_the_image():
    instructions = _dockerfile()
    for sources in (arguments.split()[:-1] for instruction, arguments in instructions if instruction == "COPY"):
        for source in sources:
            assert source == "." or ((ROOT / source).exists() and not _ignored(source)), source
    # The dependency layer installs against empty packages: exactly the packages pyproject ships, at the releases
    # of constraints.txt, with the CUDA build of ONNX Runtime (the `gpu` extra).
    install = next(arguments for instruction, arguments in instructions if " -e " in arguments)
    stubbed = set(re.search(r"mkdir ([\w ]+?) &&", install)[1].split())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = pyproject["tool"]["setuptools"]["packages"]["find"]
    assert stubbed == {pattern.rstrip("*") for pattern in included["include"]}
    assert "pip install -c constraints.txt -e '.[gpu]'" in install and "gpu" in pyproject["project"][
        "optional-dependencies"]
    needed = ["pyproject.toml", "README.md", "constraints.txt", "config/serve.yaml", "tasks/migrations/env.py",
              *(str(path.relative_to(ROOT)) for package in stubbed for path in (ROOT / package).rglob("*.py")
                if "__pycache__" not in path.parts)]
    assert [path for path in needed if _ignored(path)] == []
    assert _ignored("tests/conftest.py") and _ignored(".git/HEAD") and _ignored("models/rembg/u2netp.onnx")

    cmd = next(arguments for instruction, arguments in instructions if instruction == "CMD")
    program, *arguments = yaml.safe_load(cmd)
    assert program == "backendai" and isinstance(build_parser().parse_args(arguments), argparse.Namespace)
