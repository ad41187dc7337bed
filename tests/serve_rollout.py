"""An operator's rollout, as the integration tests drive it: `serve deploy` of an edited copy of the running
config, then Serve's own state (the dashboard REST API) polled until the new target is applied."""

import copy
import shutil
import subprocess
from pathlib import Path

import httpx
import yaml


def deployment_entry(config: dict, application: str, deployment: str) -> dict:
    """The `deployments` entry of `application` in a Serve config, to edit in place."""
    app = next(entry for entry in config["applications"] if entry["name"] == application)
    return next(entry for entry in app["deployments"] if entry["name"] == deployment)


def running_config(settings) -> dict:
    """What the stack deployed: the local Serve config with each application's environment filled in."""
    from cli.stack import render_serve_config

    return render_serve_config(settings, settings.serve_config)


def edited(config: dict, application: str, deployment: str, **changes) -> dict:
    """A copy of `config` with `changes` set on one deployment's entry (e.g. its user_config)."""
    changed = copy.deepcopy(config)
    deployment_entry(changed, application, deployment).update(changes)
    return changed


def serve_deploy(stack, settings, config: dict, folder: Path) -> None:
    """`serve deploy` of `config`, as an operator runs it against the cluster's dashboard."""
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run([shutil.which("serve"), "deploy", str(path), "--address", settings.ray_dashboard_url],
                            env=stack.env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr


def applied(settings, config: dict, application: str, deployment: str) -> bool:
    """Serve's target for the deployment carries `config`'s user_config, its application is RUNNING and the
    deployment HEALTHY: the rollout is over (every replica updated or replaced). While a new `args` or
    `import_path` is being built, the application lists no deployments yet."""
    apps = httpx.get(f"{settings.ray_dashboard_url}/api/serve/applications/", timeout=10).json()["applications"]
    app = apps.get(application, {})
    state = app.get("deployments", {}).get(deployment)
    wanted = deployment_entry(config, application, deployment).get("user_config")
    return (state is not None and state["deployment_config"].get("user_config") == wanted
            and state["status"] == "HEALTHY" and app["status"] == "RUNNING")
