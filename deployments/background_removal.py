"""Background removal with rembg (U^2-Net family, IS-Net, BiRefNet, … on ONNX Runtime) or, for people only,
mediapipe's selfie segmentation.

rembg models are used only when their `<name>.onnx` lies in MODELS_DIR/rembg (u2netp comes with
`backendai models fetch`; others are copied there by hand): nothing is downloaded at run time. The deployment loads
its default model at start (or when its `user_config` changes it) and any other one on its first request.

`BackgroundRemover` is the plain model (load once, run per image; usable without Ray);
`BackgroundRemoval` is the thin Serve deployment around it.
"""

import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from ray import serve

from deployments.catalogue import MEDIAPIPE_SELFIE
from deployments.events import (
    InvalidInput,
    open_image,
    paced,
    progress_event,
    result_event,
    stream_in_thread,
    user_config_choice,
)
from deployments.weights import missing_files

# rembg looks for `<name>.onnx` in this folder (its U2NET_HOME); `backendai models fetch` puts u2netp there.
REMBG_SUBDIR = "rembg"


class SelfieSegmenter:
    """mediapipe's selfie segmentation, in rembg's session shape (`predict` → masks) so rembg's cut-out, alpha
    matting and background colour apply to it unchanged."""

    def __init__(self):
        import mediapipe as mp

        self._model = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        self._lock = threading.Lock()  # a mediapipe graph serves one image at a time

    def predict(self, image: Image.Image, *args: Any, **kwargs: Any) -> list[Image.Image]:
        with self._lock:
            confidence = self._model.process(np.asarray(image.convert("RGB"))).segmentation_mask
        return [Image.fromarray(np.round(confidence * 255).astype(np.uint8), mode="L")]


class BackgroundRemover:
    def __init__(self, models_dir: str | Path, model: str = "u2netp"):
        self.models_dir = Path(models_dir)
        self.model_home = self.models_dir / REMBG_SUBDIR
        self._sessions: dict[str, Any] = {}
        self._loading = threading.Lock()
        self.use(model)

    def use(self, model: str, version_label: str = "") -> None:
        """Make `model` the default for requests that name none. It is loaded first, so missing weights fail here
        and the first request does not wait (a model already loaded is kept as is); requests already running keep
        the model they started with."""
        if model not in self._sessions and not self.installed(model):
            raise missing_files(self.models_dir, [self._weights(model)],
                                "run `backendai models fetch` (u2netp), or copy the model there")
        self._session(model)
        self.default = (model, version_label)  # one assignment: no request sees one's model with the other's label

    @property
    def model(self) -> str:
        return self.default[0]

    def _weights(self, model: str) -> Path:
        return self.model_home / f"{model}.onnx"

    def installed(self, model: str) -> bool:
        return model == MEDIAPIPE_SELFIE or self._weights(model).is_file()

    def _session(self, model: str) -> Any:
        with self._loading:
            if model not in self._sessions:
                if model == MEDIAPIPE_SELFIE:
                    self._sessions[model] = SelfieSegmenter()
                else:
                    from rembg import new_session

                    # rembg resolves weights through this variable; pointing it at a folder that holds them means
                    # it never tries to download.
                    os.environ["U2NET_HOME"] = str(self.model_home)
                    self._sessions[model] = new_session(model)
            return self._sessions[model]

    def run(self, image_bytes: bytes | None, parameters: dict[str, Any]) -> Iterator[dict[str, Any]]:
        from rembg import remove

        started = time.perf_counter()
        default_model, version_label = self.default  # fixed now: a reconfigure leaves running requests be
        model = parameters.get("model") or default_model
        yield progress_event(10, "Decoding image")
        image = open_image(image_bytes).convert("RGB")
        if not self.installed(model):
            raise InvalidInput(f"background model {model!r} is not installed on this server ({model}.onnx is not "
                               "in its models folder; models are never downloaded)")
        yield progress_event(30, f"Removing background ({model})")
        return_mask = bool(parameters.get("return_mask", False))
        alpha_matting = bool(parameters.get("alpha_matting", False))
        bgcolor = parameters.get("bgcolor")
        output: Image.Image = remove(image, session=self._session(model), only_mask=return_mask,
                                     alpha_matting=alpha_matting, bgcolor=tuple(bgcolor) if bgcolor else None)
        if return_mask and output.mode != "L":
            output = output.convert("L")
        yield progress_event(90, "Encoding result")
        yield result_event(output, {
            "model": model,
            "mode": "mask" if return_mask else "cutout",
            "alpha_matting": alpha_matting and not return_mask,
            "bgcolor": None if return_mask else bgcolor,
            "size": list(image.size),
            "inference_time": round(time.perf_counter() - started, 4),
        }, version_label)


@serve.deployment(ray_actor_options={"num_cpus": 1})
class BackgroundRemoval:
    def __init__(self, model: str = "u2netp"):
        self.initial_model = model
        self.remover = BackgroundRemover(os.environ["MODELS_DIR"], model)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """`user_config: {model: <name>, version: <label>}`: Serve calls this after __init__ and again, on the
        same replica, when a redeploy changes only the user_config, so an operator switches the default model without
        new replicas.
        Without `model` the default goes back to the one the replica started with; `version` goes into each
        result's `model_version` (a rollout an operator can trace)."""
        self.remover.use(*user_config_choice(config, "model", self.initial_model, "BackgroundRemoval"))

    async def process(self, image: bytes | None, parameters: dict[str, Any], prompt: str = "",
                      extra_images: dict[str, bytes] | None = None) -> AsyncIterator[dict]:
        # Concurrent requests overlap: onnxruntime sessions are reentrant, the mediapipe graph locks itself.
        async for event in stream_in_thread(paced(self.remover.run(image, parameters))):
            yield event


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder: `args` come from config/serve*.yaml."""
    return BackgroundRemoval.bind(**args)
