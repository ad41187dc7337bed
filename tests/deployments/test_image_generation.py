"""The plain text-to-image model and its batching queue, called directly (no Ray), on the tiny random-weight
Stable Diffusion that `backendai models fetch` builds: judged on pixels, seeds, steps and pipeline calls."""

import asyncio
import io
import logging
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from deployments.diffusion import SCHEDULERS, build_tiny_stable_diffusion
from deployments.events import InvalidInput
from deployments.image_generation import GenerationQueue, GenerationRequest, ImageGenerator
from tests.helpers import assert_names_files_in_models_dir

TINY_MODEL = "tiny-sd-random-noise"


@pytest.fixture(scope="module")
def generator(settings) -> Iterator[ImageGenerator]:
    # One intra-op thread, as the replicas run (OMP_NUM_THREADS=1): two on a busy 2-core box are far slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ImageGenerator(settings.models_dir, TINY_MODEL, device="cpu")
    torch.set_num_threads(threads)


def _request(seed: int = 1, **fields) -> GenerationRequest:
    return GenerationRequest(prompt=fields.pop("prompt", "beautiful sunset over mountains"), seed=seed,
                             **{"width": 64, "height": 64, "num_inference_steps": 4, **fields})


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _png_pixels(png: bytes) -> np.ndarray:
    return _pixels(Image.open(io.BytesIO(png)))


def test_the_image_has_the_requested_size_and_its_seed_reproduces_it(generator):
    (first,) = generator.generate([_request(seed=7, width=96, height=64)])
    (again,) = generator.generate([_request(seed=7, width=96, height=64)])
    (other,) = generator.generate([_request(seed=8, width=96, height=64)])
    assert first.size == (96, 64)
    assert np.array_equal(_pixels(first), _pixels(again))
    assert np.abs(_pixels(first) - _pixels(other)).mean() > 5
    assert _pixels(first).std() > 5  # noise, but an image: not one flat colour


def test_the_step_callback_sees_every_denoising_step_in_order(generator):
    seen = []
    generator.generate([_request(num_inference_steps=6)], lambda done, total: seen.append((done, total)))
    total = seen[-1][1]
    assert [done for done, _ in seen] == list(range(1, total + 1))
    assert total in (6, 7)  # PNDM, the model's own scheduler, takes one step more than asked


def test_a_batch_gives_each_request_the_image_of_its_own_seed(generator):
    requests = [_request(seed=seed, prompt=f"prompt {seed}") for seed in (11, 12, 13)]
    batched = generator.generate(requests)
    for request, image in zip(requests, batched, strict=True):
        (alone,) = generator.generate([request])
        assert np.abs(_pixels(image) - _pixels(alone)).max() <= 1
    assert np.abs(_pixels(batched[0]) - _pixels(batched[1])).mean() > 5


def test_a_pipeline_call_refuses_requests_that_cannot_share_it(generator):
    with pytest.raises(ValueError, match="same size"):
        generator.generate([_request(), _request(width=128)])


def test_every_offered_scheduler_runs_and_is_recorded(generator):
    for name in SCHEDULERS:
        request = _request(num_inference_steps=2, scheduler=name)
        (image,) = generator.generate([request])
        assert image.size == (64, 64) and generator.metadata(request)["scheduler"] == name
    assert generator.metadata(_request())["scheduler"] == "pndm"
    with pytest.raises(InvalidInput, match="unknown scheduler"):
        generator.generate([_request(scheduler="nope")])


def test_metadata_records_how_the_image_was_made_and_that_the_tiny_model_makes_noise(generator):
    metadata = generator.metadata(_request(seed=42, guidance_scale=5.0, negative_prompt="blurry"))
    assert metadata == {"model": TINY_MODEL, "random_weights": True, "seed": 42, "steps": 4, "guidance_scale": 5.0,
                        "scheduler": "pndm", "size": [64, 64], "negative_prompt": "blurry", "device": "cpu",
                        "dtype": "float32"}


def test_parameters_become_a_request_and_a_missing_seed_is_drawn():
    parameters = {"width": 128, "height": 64, "num_inference_steps": 3, "guidance_scale": 2.0, "seed": None,
                  "negative_prompt": "", "scheduler": None, "refine_prompt": True}
    drawn = {GenerationRequest.from_parameters("p", parameters).seed for _ in range(5)}
    assert len(drawn) > 1
    request = GenerationRequest.from_parameters("p", {**parameters, "seed": 5})
    assert (request.seed, request.width, request.height, request.num_inference_steps) == (5, 128, 64, 3)
    assert GenerationRequest.from_parameters("p", {}).batch_key == (512, 512, 30, 7.5, None)  # the seed's defaults


def test_the_tiny_model_has_the_real_clip_vocabulary(generator):
    tokenizer = generator.pipe.tokenizer
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    # OpenAI CLIP's ids for these words (start, beautiful, sunset, over, mountains, end).
    assert tokenizer("beautiful sunset over mountains").input_ids == [49406, 1215, 3424, 962, 5873, 49407]


def test_rebuilding_the_tiny_model_gives_the_same_weights(settings, tmp_path):
    build_tiny_stable_diffusion(tmp_path, settings.models_dir / "clip" / "bpe_simple_vocab_16e6.txt.gz")
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        rebuilt, fetched = load_file(tmp_path / part), load_file(settings.models_dir / TINY_MODEL / part)
        assert rebuilt.keys() == fetched.keys()
        assert all((rebuilt[name] == fetched[name]).all() for name in rebuilt), part


def test_a_missing_model_names_the_commands_that_provide_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="backendai models fetch.*prefetch_hub_models") as missing:
        ImageGenerator(tmp_path, "stable-diffusion-v1-5/stable-diffusion-v1-5", device="cpu")
    assert_names_files_in_models_dir(missing.value, tmp_path,
                                     "stable-diffusion-v1-5/stable-diffusion-v1-5/model_index.json")


# -- the queue: batching, per-caller progress, cancel -----------------------------------------------------------

async def _collect(queue: GenerationQueue, request: GenerationRequest) -> list[dict]:
    return [event async for event in queue.stream(request)]


def test_concurrent_compatible_requests_share_one_pipeline_call_and_keep_their_own_images(generator):
    queue = GenerationQueue(generator, max_batch_size=4, batch_wait_s=0.2)
    requests = [_request(seed=seed, num_inference_steps=5) for seed in (1, 2, 3)] + [_request(seed=4, width=128)]

    async def run_all():
        return await asyncio.gather(*(_collect(queue, request) for request in requests))

    outcomes = asyncio.run(run_all())
    results = [events[-1]["result"] for events in outcomes]
    calls = [result["metadata"]["pipeline_call"] for result in results]
    assert queue.pipeline_calls == 2 and len(set(calls[:3])) == 1 and calls[3] != calls[0]
    assert [result["metadata"]["batch_size"] for result in results] == [3, 3, 3, 1]
    for request, result in zip(requests, results, strict=True):
        assert result["metadata"]["seed"] == request.seed
        (alone,) = generator.generate([request])
        assert np.abs(_png_pixels(result["image"]) - _pixels(alone)).max() <= 1
    for events in outcomes:
        progress = [event["progress"] for event in events[:-1]]
        assert progress == sorted(progress) and progress[-1] == 100 and len(set(progress)) >= 5


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_cancelling_the_only_caller_stops_the_denoising_loop_and_frees_the_queue(generator):
    queue = GenerationQueue(generator, batch_wait_s=0)
    lines = _Lines()
    logging.getLogger("ray.serve").addHandler(lines)

    async def cancel_mid_generation() -> tuple[int, list[dict]]:
        seen = asyncio.Event()
        steps_seen = 0

        async def listen():
            nonlocal steps_seen
            async for event in queue.stream(_request(num_inference_steps=150, width=128, height=128)):
                if event["message"] == "Generating image":
                    steps_seen += 1
                    if steps_seen == 3:
                        seen.set()

        listener = asyncio.create_task(listen())
        await seen.wait()
        listener.cancel()
        return steps_seen, await _collect(queue, _request(seed=5))

    try:
        steps_seen, next_events = asyncio.run(cancel_mid_generation())
    finally:
        logging.getLogger("ray.serve").removeHandler(lines)
    stopped = [line for line in lines.lines if "every caller cancelled" in line]
    assert len(stopped) == 1, lines.lines
    done = int(stopped[0].split("stopped at step ")[1].split("/")[0])
    assert steps_seen <= done <= steps_seen + 3  # stopped within a step or few of the cancel, of 151
    assert next_events[-1]["result"]["metadata"]["batch_size"] == 1 and queue.pipeline_calls == 2
