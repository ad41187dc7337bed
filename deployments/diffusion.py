"""Diffusers pipelines, loaded in one place for every service that uses them (text-to-image now, img2img for
style transfer later), and the tiny random-weight Stable Diffusion that stands in for real weights offline.

A pipeline is always read from a folder (MODELS_DIR/<name>, or an absolute path): hub ids name the folder that
`scripts/prefetch_hub_models.py` fills, so replicas never download.
"""

import gzip
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from deployments import catalogue
from deployments.devices import torch_device
from deployments.weights import model_folder

# The schedulers a request may pick by name (the API validates the same catalogue).
SCHEDULERS: dict[str, Any] = {name: getattr(diffusers, class_name) for name, class_name in catalogue.SCHEDULERS.items()}

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

# Written into the tiny model's folder; its presence makes the service say that its images are noise.
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS.txt"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """"auto" means half precision on a GPU and full precision on a CPU (CPU kernels for fp16 are slow)."""
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return DTYPES[dtype]


def optimise_pipeline(pipe: DiffusionPipeline, device: str, compile_unet: bool = False) -> DiffusionPipeline:
    """Move the pipeline to `device`; on a GPU use SDPA attention, channels-last convolutions and, optionally,
    a compiled UNet (minutes of compilation at start, faster steps after)."""
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if device.startswith("cuda"):
        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.set_attn_processor(AttnProcessor2_0())
                module.to(memory_format=torch.channels_last)
        if compile_unet:
            pipe.unet = torch.compile(pipe.unet)
    return pipe


def load_pipeline(pipeline_class: type[DiffusionPipeline], models_dir: Path, model: str, device: str = "auto",
                  dtype: str = "auto", variant: str | None = None, compile_unet: bool = False) -> DiffusionPipeline:
    """Load `model` (a folder under `models_dir`, or an absolute folder) for `device`, never from the network."""
    folder = model_folder(models_dir, model, "model_index.json")
    device = torch_device(device)
    pipe = pipeline_class.from_pretrained(folder, dtype=resolve_dtype(dtype, device), variant=variant,
                                          local_files_only=True)
    return optimise_pipeline(pipe, device, compile_unet)


def is_random_weights(models_dir: Path, model: str) -> bool:
    return (model_folder(models_dir, model, "model_index.json") / RANDOM_WEIGHTS_MARKER).is_file()


def clip_tokenizer_from_bpe(vocab_gz: Path) -> CLIPTokenizer:
    """CLIP's tokenizer from OpenAI's BPE merges file (as open_clip ships it): the same 49408 ids as SD's."""
    lines = gzip.decompress(vocab_gz.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]  # open_clip's own slice
    byte_symbols = list(bytes_to_unicode().values())
    tokens = [*byte_symbols, *(symbol + "</w>" for symbol in byte_symbols), *("".join(merge) for merge in merges),
              "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: index for index, token in enumerate(tokens)}, merges=merges,
                         model_max_length=77)


# SD-1.5's architecture shrunk to 2.8 M parameters (1.6 M of them the 49408-token embedding). The VAE keeps SD's 8x
# downsampling, so sizes behave as with the real model.
TINY_ARCHITECTURE: dict[str, dict[str, Any]] = {
    "unet": {"sample_size": 8, "layers_per_block": 1, "block_out_channels": (32, 64), "cross_attention_dim": 32,
             "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
             "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "attention_head_dim": 8, "norm_num_groups": 32},
    "vae": {"sample_size": 64, "layers_per_block": 1, "block_out_channels": (8, 16, 16, 32), "norm_num_groups": 8,
            "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4},
    "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2},
}


def random_stable_diffusion(tokenizer: CLIPTokenizer, architecture: dict[str, dict[str, Any]],
                            seed: int = 0) -> StableDiffusionPipeline:
    """A Stable Diffusion pipeline of the given `architecture` (UNet, VAE and CLIP text encoder arguments),
    randomly initialised from `seed`, so that building it again gives the same weights."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **architecture["unet"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **architecture["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **architecture["text_encoder"],
    ))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_tiny_stable_diffusion(target: Path, vocab_gz: Path) -> None:
    """Fetch step (deployments/weights.py): save the tiny random-weight pipeline into `target`."""
    pipe = random_stable_diffusion(clip_tokenizer_from_bpe(vocab_gz), TINY_ARCHITECTURE)
    pipe.save_pretrained(target)
    (target / RANDOM_WEIGHTS_MARKER).write_text(
        "Randomly initialised Stable Diffusion (fixed seed), built offline by `backendai models fetch`.\n"
        "Its images are noise; it exists so the whole stack runs and is tested without trained weights.\n"
    )
