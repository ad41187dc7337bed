"""Download the hub models that config/serve.yaml names into MODELS_DIR, on a machine with internet, so that GPU
replicas never download at start (they load with local_files_only).

    python scripts/prefetch_hub_models.py            # every hub model the production config names
    python scripts/prefetch_hub_models.py --list     # what it would fetch, and where
    python scripts/prefetch_hub_models.py --config config/serve.yaml

A model lands in MODELS_DIR/<hub id> (e.g. MODELS_DIR/stable-diffusion-v1-5/stable-diffusion-v1-5), the folder
the deployment's `model` argument names. Share MODELS_DIR with the GPU nodes or copy it to them. Gated models
need `HF_TOKEN` in the environment. Licences are the operator's to accept.
"""

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.config import PROJECT_ROOT, get_settings


def _diffusers_files(args: dict[str, Any]) -> tuple[str, ...]:
    """A diffusers repo's components live in subfolders; the root may hold multi-GB single-file checkpoints."""
    variant = args.get("variant")
    return ("model_index.json", "*/*.json", "*/*.txt",
            f"*/*.{variant}.safetensors" if variant else "*/*.safetensors")


def _transformers_files(args: dict[str, Any]) -> tuple[str, ...]:
    return ("*.json", "*.txt", "*.jinja", "*.model", "*.safetensors") if args.get("backend") == "transformers" else ()


# Which files each deployment (by import path) needs from its `model`'s repo; other deployments fetch nothing.
FILES_FOR: dict[str, Callable[[dict[str, Any]], tuple[str, ...]]] = {
    "deployments.image_generation:build_app": _diffusers_files,
    "deployments.prompt_refinement:build_app": _transformers_files,
}


@dataclass(frozen=True)
class HubModel:
    repo_id: str
    allow_patterns: tuple[str, ...]


def hub_models(config: dict[str, Any]) -> list[HubModel]:
    """The hub models ("owner/name") the config's applications load, with the files each needs."""
    models = []
    for application in config["applications"]:
        args = application.get("args") or {}
        model, files = args.get("model"), FILES_FOR.get(application["import_path"])
        if files and isinstance(model, str) and model.count("/") == 1 and not model.startswith("/"):
            patterns = files(args)
            if patterns:
                models.append(HubModel(model, patterns))
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "config" / "serve.yaml")
    parser.add_argument("--list", action="store_true", help="only show what would be fetched")
    args = parser.parse_args()
    models_dir = get_settings().models_dir
    for model in hub_models(yaml.safe_load(args.config.read_text())):
        target = models_dir / model.repo_id
        print(f"{model.repo_id} -> {target} ({', '.join(model.allow_patterns)})", flush=True)
        if not args.list:
            from huggingface_hub import snapshot_download

            snapshot_download(model.repo_id, local_dir=target, allow_patterns=list(model.allow_patterns))


if __name__ == "__main__":
    main()
