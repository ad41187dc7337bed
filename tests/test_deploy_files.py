"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the compose file parses, its services
link up, and every command it runs exists in this environment and accepts the options it is given."""

import argparse
import fnmatch
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
from ray.scripts.scripts import cli as ray_cli
from ray.serve.scripts import cli as serve_cli

from serve.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
OUR_SERVICES = {name: service for name, service in SERVICES.items() if "build" in service}

SHELL_BUILTINS = {"kill", "sleep", "wait", "exit"}
SHELL_OPERATORS = {";", "&&", "||", "&", "|"}
SHELL_KEYWORDS = {"until", "while", "do", "done", "if", "then", "else", "fi", "exec", "!"}


def _interpolated(text: str) -> str:
    """Compose's `${VAR:-default}` with its default, and `$$` (a literal dollar)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text).replace("$$", "$")


def _environment(service: dict) -> dict[str, str]:
    return {key: _interpolated(str(value)) for key, value in service.get("environment", {}).items()}


def _host_ports(service: dict) -> list[int]:
    """Published host ports of `[ip:]host:container` entries."""
    return [int(str(port).split(":")[-2]) for port in service.get("ports", []) if ":" in str(port)]


def _simple_commands(command: str | list[str]) -> list[list[str]]:
    """The programs a service runs with their arguments, also from inside an `sh -c` script."""
    argv = shlex.split(command) if isinstance(command, str) else [_interpolated(part) for part in command]
    if argv[:2] != ["sh", "-c"]:
        return [argv]
    commands: list[list[str]] = []
    for line in argv[2].splitlines():
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


def _check_celery(argv: list[str]) -> None:
    position = next(index for index, token in enumerate(argv) if token in celery_cli.commands)
    group = celery_cli.make_context("celery", argv[:position])
    app = find_app(group.params["app"])  # `-A tasks.celery_app` imports
    subcommand = argv[position:]
    if subcommand[0] == "flower":  # Flower hands its options to tornado
        from flower.options import options as flower_options

        for option in subcommand[1:]:
            assert option.startswith("--") and option[2:].split("=")[0] in flower_options, option
        return
    _check_click(celery_cli, subcommand, CLIContext(app=app, no_color=True, workdir=None, quiet=True))


def _check_backendai(argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit_:
        raise AssertionError(f"backendai refuses {argv}") from exit_


def _check_serve(argv: list[str]) -> None:
    context = _check_click(serve_cli, argv)
    if argv[0] == "deploy":
        assert (ROOT / context.params["config_or_import_path"]).is_file()


CHECKS = {
    "ray": lambda argv: _check_click(ray_cli, argv),
    "serve": _check_serve,
    "celery": _check_celery,
    "backendai": _check_backendai,
}


def test_compose_runs_the_cards_stack():
    assert {"postgres", "redis", "ray-head", "ray-worker-gpu", "celery-worker-gpu", "celery-worker-cpu",
            "celery-beat", "flower"} <= set(SERVICES)
    commands = {name: [" ".join(argv) for argv in _simple_commands(service["command"])]
                for name, service in OUR_SERVICES.items()}
    assert any(line.startswith("serve deploy config/serve.yaml") for line in commands["ray-head"])
    for queue in ("gpu", "cpu"):
        assert any(f"worker -Q {queue} " in line for line in commands[f"celery-worker-{queue}"])
    reservation = SERVICES["ray-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert reservation["driver"] == "nvidia" and reservation["capabilities"] == ["gpu"]


def test_compose_services_link_up():
    for name, service in SERVICES.items():
        assert set(service.get("depends_on", ())) <= set(SERVICES) - {name}, name
    published = [port for service in SERVICES.values() for port in _host_ports(service)]
    assert len(published) == len(set(published)), published
    for name, service in SERVICES.items():
        if name != "redis":
            assert 6379 not in _host_ports(service), name
            assert "6379" not in " ".join(map(" ".join, _simple_commands(service.get("command", [])))), name

    postgres = _environment(SERVICES["postgres"])
    head = next(argv for argv in _simple_commands(SERVICES["ray-head"]["command"]) if argv[:2] == ["ray", "start"])
    head_options = _check_click(ray_cli, head[1:]).params
    for name, service in OUR_SERVICES.items():
        env = _environment(service)
        database = sa.make_url(env["DATABASE_URL"])
        assert (database.host, database.database, database.username, database.password) == (
            "postgres", postgres["POSTGRES_DB"], postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]), name
        assert urlsplit(env["REDIS_URL"]).hostname == "redis", name
        assert env["RAY_ADDRESS"] == f"ray-head:{head_options['port']}" != "ray-head:6379", name
        assert int(env["RAY_DASHBOARD_PORT"]) == head_options["dashboard_port"], name

    serve_config = yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())
    assert serve_config["http_options"]["port"] in _host_ports(SERVICES["ray-head"])
    health_url = SERVICES["ray-head"]["healthcheck"]["test"][-1]
    from serve.app import create_app

    assert re.search(r"http://127\.0\.0\.1:\d+(/\S*?)'", health_url)[1] in create_app().openapi()["paths"]


@pytest.mark.parametrize("service", sorted(OUR_SERVICES))
def test_every_command_exists_and_accepts_its_options(service):
    console_scripts = {script.name for script in entry_points(group="console_scripts")}
    for argv in _simple_commands(OUR_SERVICES[service]["command"]):
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
