"""Image generation benchmarks (not tests): prints a markdown table for docs/benchmarks.md.

    python scripts/bench_generation.py cpu   # batching on/off at 4 concurrent requests, tiny model, CPU
    python scripts/bench_generation.py gpu   # SD-1.5 architecture, random weights, 512x512, 30 steps:
                                             # plain fp32 against our fp16 + SDPA + channels-last (+ compile)

`cpu` needs `backendai models fetch` (the tiny model); `gpu` needs a CUDA GPU and the CLIP vocabulary that the
same command fetches (MODELS_DIR/clip/bpe_simple_vocab_16e6.txt.gz, or --vocab).
"""

import argparse
import asyncio
import logging
import platform
import sys
import time
from pathlib import Path

import torch

from deployments.diffusion import clip_tokenizer_from_bpe, optimise_pipeline, random_stable_diffusion
from deployments.image_generation import GenerationQueue, GenerationRequest, ImageGenerator
from tasks.config import get_settings

# Stable Diffusion 1.5's published component configs (unet/, vae/, text_encoder/ config.json).
SD15_ARCHITECTURE = {
    "unet": {"sample_size": 64, "layers_per_block": 2, "block_out_channels": (320, 640, 1280, 1280),
             "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
             "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
             "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3},
    "vae": {"sample_size": 512, "layers_per_block": 2, "block_out_channels": (128, 256, 512, 512),
            "norm_num_groups": 32, "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4},
    "text_encoder": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                     "num_hidden_layers": 12, "projection_dim": 768, "hidden_act": "quick_gelu"},
}


async def _queue_throughput(generator: ImageGenerator, max_batch_size: int, args: argparse.Namespace) -> tuple:
    """Images per second when `args.concurrency` callers at a time each ask for one image."""
    queue = GenerationQueue(generator, max_batch_size=max_batch_size, batch_wait_s=0.01)

    async def one(seed: int) -> None:
        request = GenerationRequest("a lighthouse at dusk", seed=seed, width=args.size, height=args.size,
                                    num_inference_steps=args.steps)
        async for _ in queue.stream(request):
            pass

    await one(0)  # warm-up
    calls_before = queue.pipeline_calls
    started = time.perf_counter()
    for round_ in range(args.rounds):
        await asyncio.gather(*(one(round_ * args.concurrency + index) for index in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    return args.rounds * args.concurrency / elapsed, queue.pipeline_calls - calls_before


def bench_cpu(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    generator = ImageGenerator(get_settings().models_dir, "tiny-sd-random-noise", device="cpu")
    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
          f"tiny-sd-random-noise, {args.size}x{args.size}, {args.steps} steps, {args.concurrency} concurrent "
          f"requests x {args.rounds} rounds\n")
    print("| max batch | pipeline calls | images/s |\n|---|---|---|")
    rates = {}
    for max_batch_size in (1, args.concurrency):
        rate, calls = asyncio.run(_queue_throughput(generator, max_batch_size, args))
        rates[max_batch_size] = rate
        print(f"| {max_batch_size} | {calls} | {rate:.2f} |")
    print(f"\nbatching speed-up: {rates[args.concurrency] / rates[1]:.2f}x")


def _images_per_second(pipe, batch: int, args: argparse.Namespace) -> float:
    prompts = ["a lighthouse at dusk"] * batch

    def run() -> None:
        pipe(prompts, width=args.size, height=args.size, num_inference_steps=args.steps, guidance_scale=7.5,
             generator=[torch.Generator().manual_seed(seed) for seed in range(batch)])

    run()  # warm-up (and compilation, when compiled)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.repeats):
        run()
    torch.cuda.synchronize()
    return batch * args.repeats / (time.perf_counter() - started)


def bench_gpu(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU here")
    with torch.device("cuda"):  # initialise the ~1 B random weights on the GPU: seconds instead of minutes
        pipe = random_stable_diffusion(clip_tokenizer_from_bpe(args.vocab), SD15_ARCHITECTURE)
    pipe.set_progress_bar_config(disable=True)
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}; SD-1.5 architecture, random weights, "
          f"{args.size}x{args.size}, {args.steps} steps, {args.repeats} timed runs after a warm-up\n")
    print("| path | batch | images/s |\n|---|---|---|")
    pipe.unet.set_default_attn_processor()
    pipe.vae.set_default_attn_processor()
    paths = [("fp32, plain attention", lambda: pipe)]
    paths.append(("fp16, SDPA, channels-last (ours)", lambda: optimise_pipeline(pipe.to(dtype=torch.float16), "cuda")))
    if args.compile:
        paths.append(("fp16, SDPA, channels-last, torch.compile", lambda: optimise_pipeline(pipe, "cuda", True)))
    for name, prepare in paths:
        prepared = prepare()
        for batch in args.batches:
            print(f"| {name} | {batch} | {_images_per_second(prepared, batch, args):.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    cpu = commands.add_parser("cpu", help="batching on/off with the tiny model on CPU")
    cpu.add_argument("--size", type=int, default=64)
    cpu.add_argument("--steps", type=int, default=20)
    cpu.add_argument("--concurrency", type=int, default=4)
    cpu.add_argument("--rounds", type=int, default=5)
    cpu.add_argument("--threads", type=int, default=1, help="torch threads (replicas run with 1)")
    cpu.set_defaults(handler=bench_cpu)
    gpu = commands.add_parser("gpu", help="plain fp32 against the optimised path on a CUDA GPU")
    gpu.add_argument("--size", type=int, default=512)
    gpu.add_argument("--steps", type=int, default=30)
    gpu.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    gpu.add_argument("--repeats", type=int, default=3)
    gpu.add_argument("--compile", action="store_true", help="also time a torch.compile'd UNet (compiles first)")
    gpu.add_argument("--vocab", type=Path,
                     default=get_settings().models_dir / "clip" / "bpe_simple_vocab_16e6.txt.gz")
    gpu.set_defaults(handler=bench_gpu)
    args = parser.parse_args()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no line per pipeline call
    args.handler(args)


if __name__ == "__main__":
    main()
