"""The same work without our orchestration: through a Serve handle (Ray, no API/Celery/DB), and through the plain
model classes of deployments/ in this process (no Ray either)."""

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from scripts.bench.jobs import Job
from tasks import ray_client
from tasks.models import TaskType
from tasks.registry import TASK_SPECS

Events = Iterator[dict[str, Any]]


def final_result(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    for event in events:
        if "result" in event:
            return event["result"]
    raise RuntimeError("the model finished without a result")


class Handles:
    """Calls jobs through Serve handles from this process, as a Celery worker does (tasks/ray_client.py)."""

    def __init__(self) -> None:
        self._handles: dict[tuple[str, str], DeploymentHandle] = {}

    def _handle(self, app_name: str, deployment_name: str) -> DeploymentHandle:
        if (app_name, deployment_name) not in self._handles:
            ray_client.connect()
            self._handles[app_name, deployment_name] = serve.get_deployment_handle(deployment_name, app_name=app_name)
        return self._handles[app_name, deployment_name]

    def run(self, job: Job) -> dict[str, Any]:
        """The job's stages one after the other, passing prompt and parameters on as the worker does
        (tasks/processing.py), with nothing stored or published."""
        prompt, parameters = job.prompt, dict(job.parameters)
        result: dict[str, Any] = {}
        for stage in TASK_SPECS[TaskType(job.task_type)].stages:
            response = self._handle(stage.app_name, stage.deployment_name).options(stream=True).process.remote(
                image=job.image, parameters=parameters, prompt=prompt, extra_images=job.extra_images)
            result = final_result(response)
            prompt = result.get("prompt", prompt)
            parameters.update(result.get("parameters", {}))
        return result

    def close(self) -> None:
        """Stop the handles' routers, then disconnect: a router left running would connect Ray again by itself
        (to push its metrics) and take this process down when the cluster stops."""
        for handle in self._handles.values():
            handle.shutdown()
        self._handles.clear()
        ray_client.disconnect()


def timed(call: Callable[[Job], dict[str, Any]], job: Job) -> float:
    started = time.perf_counter()
    if "image" not in call(job):
        raise RuntimeError(f"{job.task_type}: no image in the result")
    return time.perf_counter() - started


# -- plain model classes, built from the same application args as the Serve config ----------------------------

PlainModel = Callable[[Job], Events]
AppArgs = dict[str, dict[str, Any]]


def _background_removal(models_dir: Path, args: AppArgs) -> PlainModel:
    from deployments.background_removal import BackgroundRemover

    model = BackgroundRemover(models_dir, **args["background_removal"])
    return lambda job: model.run(job.image, job.parameters)


def _face_swap(models_dir: Path, args: AppArgs) -> PlainModel:
    from deployments.face_swap import FaceSwapper

    model = FaceSwapper(models_dir, **args["face_swap"])
    return lambda job: model.run(job.image, job.parameters, job.extra_images)


def _style_transfer(models_dir: Path, args: AppArgs) -> PlainModel:
    from deployments.style_transfer import Stylizer

    model = Stylizer(models_dir, **args["style_transfer"])
    return lambda job: model.run(job.image, job.parameters, job.prompt, job.extra_images.get("style_image"))


def _image_enhancement(models_dir: Path, args: AppArgs) -> PlainModel:
    from deployments.image_enhancement import Enhancer

    model = Enhancer(models_dir, **args["image_enhancement"])
    return lambda job: model.run(job.image, job.parameters)


def _image_generation(models_dir: Path, args: AppArgs) -> PlainModel:
    """Refinement, then one pipeline call and the PNG, as the two stages do (without the batching queue)."""
    import torch

    from deployments.events import result_event
    from deployments.image_generation import GenerationRequest, ImageGenerator
    from deployments.prompt_refinement import PromptRefiner

    torch.set_num_threads(1)  # as the replica (OMP_NUM_THREADS=1)
    refiner = PromptRefiner(models_dir, **args["prompt_refinement"])
    generation = args["image_generation"]
    generator = ImageGenerator(models_dir, **{name: generation[name] for name in
                                              ("model", "device", "dtype", "variant", "compile_unet")
                                              if name in generation})

    def run(job: Job) -> Events:
        refined = final_result(refiner.run(job.prompt, job.parameters))
        parameters = {**job.parameters, **refined.get("parameters", {})}
        request = GenerationRequest.from_parameters(refined["prompt"], parameters)
        (image,) = generator.generate([request])
        yield result_event(image, generator.metadata(request))

    return run


PLAIN_MODELS: dict[str, Callable[[Path, AppArgs], PlainModel]] = {
    "background_removal": _background_removal,
    "face_swap": _face_swap,
    "style_transfer": _style_transfer,
    "image_enhancement": _image_enhancement,
    "image_generation": _image_generation,
}


def plain_model(task_type: str, models_dir: Path, serve_config: dict[str, Any]) -> Callable[[Job], dict[str, Any]]:
    """The task type's plain model, built with the `args` its applications have in `serve_config`; raises
    FileNotFoundError when its weights are absent."""
    args = {application["name"]: application.get("args", {}) for application in serve_config["applications"]}
    run = PLAIN_MODELS[task_type](models_dir, args)
    return lambda job: final_result(run(job))
