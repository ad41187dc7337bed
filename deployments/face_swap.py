"""Face swap: the face of one image (the source: the upload `image`) onto a face, or every face, of another (the
target: the upload `target_image`).

Two backends, chosen by the application's `args` in config/serve*.yaml:
- `landmarks` (the offline default): mediapipe's bundled full-range face detector finds the faces and FaceMesh
  places 468 landmarks on each; the source face is cut into Delaunay triangles, each warped by its own affine
  transform onto the target's landmarks, colour-matched in Lab and Poisson-blended (cv2.seamlessClone). Geometry
  only: it moves the source's skin and features, it has no learned identity.
- `insightface`: insightface's FaceAnalysis (the buffalo_l pack: SCRFD detection, ArcFace identity) and the
  inswapper_128 model, which redraws the target face with the source's identity. These models are the operator's
  to provide (non-commercial licence) under MODELS_DIR/insightface; they are never downloaded.

Faces are numbered from 0, left to right by the centre of each face, in both images.
`FaceSwapper` is the plain model (usable without Ray); `FaceSwap` is the thin Serve deployment around it.
"""

import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from PIL import Image
from ray import serve

from deployments.catalogue import TARGET_IMAGE
from deployments.devices import onnx_providers
from deployments.events import InvalidInput, open_image, paced, progress_event, result_event, stream_in_thread
from deployments.weights import missing_files

# MODELS_DIR/insightface/models/<face pack>/*.onnx is what FaceAnalysis loads; the swapper lies beside `models/`,
# outside the pack, because FaceAnalysis would try to load every .onnx in its folder as an analysis model.
INSIGHTFACE_SUBDIR = "insightface"


class FaceBackend(Protocol):
    name: str  # the backend, as chosen in config
    model: str  # the models it runs, for the result's metadata

    def find_faces(self, rgb: np.ndarray) -> list[Any]:
        """The faces in an RGB image, left to right."""

    def swap(self, target: np.ndarray, target_face: Any, source: np.ndarray, source_face: Any) -> np.ndarray:
        """`target` with `source_face` (found in `source`) put in place of `target_face`."""


class LandmarkSwap:
    """The classic landmark swap on mediapipe's bundled models: runs anywhere, no weights to fetch."""

    name = "landmarks"
    model = "mediapipe-facemesh"

    def __init__(self, min_confidence: float = 0.5, crop_scale: float = 2.5):
        import mediapipe as mp

        # FaceMesh's own detector is short-range (faces filling much of the frame): the full-range detector finds
        # smaller faces, and FaceMesh then runs on a crop around each.
        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence)
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=False, min_detection_confidence=min_confidence)
        self._crop_scale = crop_scale
        self._lock = threading.Lock()  # a mediapipe graph serves one image at a time

    def find_faces(self, rgb: np.ndarray) -> list[np.ndarray]:
        height, width = rgb.shape[:2]
        faces = []
        with self._lock:
            for detection in self._detector.process(rgb).detections or []:
                box = detection.location_data.relative_bounding_box
                x0, y0 = box.xmin * width, box.ymin * height
                x1, y1 = x0 + box.width * width, y0 + box.height * height
                landmarks = self._landmarks_around(rgb, (x0, y0, x1, y1))
                if landmarks is not None:
                    faces.append(landmarks)
        return sorted(faces, key=lambda points: points[:, 0].mean())

    def _landmarks_around(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray | None:
        """FaceMesh's 468 points (pixels, x then y) for the face in `box`; None if the mesh lands elsewhere."""
        x0, y0, x1, y1 = box
        centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
        half = max(x1 - x0, y1 - y0) * self._crop_scale / 2
        left, top = max(int(centre_x - half), 0), max(int(centre_y - half), 0)
        right, bottom = min(int(centre_x + half), rgb.shape[1]), min(int(centre_y + half), rgb.shape[0])
        result = self._mesh.process(np.ascontiguousarray(rgb[top:bottom, left:right]))
        if not result.multi_face_landmarks:
            return None
        points = np.array([(point.x, point.y) for point in result.multi_face_landmarks[0].landmark], np.float32)
        points = points * (right - left, bottom - top) + (left, top)
        mesh_x, mesh_y = points.mean(axis=0)
        return points if x0 <= mesh_x <= x1 and y0 <= mesh_y <= y1 else None

    def swap(self, target: np.ndarray, target_face: np.ndarray, source: np.ndarray,
             source_face: np.ndarray) -> np.ndarray:
        from scipy.spatial import Delaunay

        triangles = Delaunay(source_face).simplices
        warped = _warp_triangles(source, source_face, target_face, triangles, target.shape)
        mask = np.zeros(target.shape[:2], np.uint8)
        hull = cv2.convexHull(np.round(target_face).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 255)
        warped = _match_colours(warped, target, mask > 0)
        x, y, width, height = cv2.boundingRect(mask)
        # seamlessClone centres the mask's bounding box on this point: this centre puts it back where it was.
        # It also writes into the mask it is given (OpenCV 4.14), hence the copy.
        cloned = cv2.seamlessClone(warped, target, mask.copy(), (x + width // 2, y + height // 2), cv2.NORMAL_CLONE)
        # The clone also retouches pixels around the mask: keep only the face, with a soft edge inside the hull.
        alpha = _feathered(mask, max(2, min(width, height) // 40))[..., None]
        return np.round(cloned * alpha + target * (1 - alpha)).astype(np.uint8)


def _warp_triangles(source: np.ndarray, source_points: np.ndarray, target_points: np.ndarray,
                    triangles: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The source, warped triangle by triangle (an affine map each) onto the target's landmarks."""
    warped = np.zeros(shape, np.float32)
    source = source.astype(np.float32)
    for triangle in triangles:
        source_corners, target_corners = source_points[triangle], target_points[triangle]
        source_box = _clipped_box(source_corners, source.shape)
        target_box = _clipped_box(target_corners, shape)
        if source_box is None or target_box is None:
            continue
        (sx0, sy0, sx1, sy1), (tx0, ty0, tx1, ty1) = source_box, target_box
        affine = cv2.getAffineTransform((source_corners - (sx0, sy0)).astype(np.float32),
                                        (target_corners - (tx0, ty0)).astype(np.float32))
        patch = cv2.warpAffine(source[sy0:sy1, sx0:sx1], affine, (tx1 - tx0, ty1 - ty0), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)
        inside = np.zeros((ty1 - ty0, tx1 - tx0, 1), np.float32)
        cv2.fillConvexPoly(inside, np.round(target_corners - (tx0, ty0)).astype(np.int32), 1.0)
        region = warped[ty0:ty1, tx0:tx1]
        region[:] = region * (1 - inside) + patch * inside
    return np.clip(warped, 0, 255).astype(np.uint8)


def _clipped_box(corners: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    x, y, width, height = cv2.boundingRect(corners.astype(np.float32))
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, shape[1]), min(y + height, shape[0])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _match_colours(face: np.ndarray, target: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Give the warped face the target face's colour statistics (per Lab channel mean and spread)."""
    face_lab = cv2.cvtColor(face, cv2.COLOR_RGB2LAB).astype(np.float32)
    target_lab = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    for channel in range(3):
        ours, theirs = face_lab[..., channel][inside], target_lab[..., channel][inside]
        scale = theirs.std() / max(float(ours.std()), 1e-3)
        face_lab[..., channel] = (face_lab[..., channel] - ours.mean()) * scale + theirs.mean()
    return cv2.cvtColor(np.clip(face_lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def _feathered(mask: np.ndarray, radius: int) -> np.ndarray:
    """0..1 weights: 1 deep inside the mask, falling to 0 at its edge (never beyond it)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    eroded = cv2.erode(mask, kernel).astype(np.float32) / 255
    return cv2.GaussianBlur(eroded, (2 * radius + 1, 2 * radius + 1), 0)


class InsightFaceSwap:
    """insightface's detector and identity model with the inswapper model, from the operator's local files."""

    name = "insightface"

    def __init__(self, models_dir: str | Path, face_pack: str = "buffalo_l",
                 swapper_file: str = "inswapper_128.onnx", detection_size: int = 640, device: str = "auto"):
        home = Path(models_dir) / INSIGHTFACE_SUBDIR
        pack_dir, swapper_path = home / "models" / face_pack, home / swapper_file
        missing = [needed for needed in (pack_dir, swapper_path) if not needed.exists()]
        if missing:
            raise missing_files(Path(models_dir), missing, "insightface's models are the operator's to provide "
                                "(non-commercial licence; see README, Face swap); they are never downloaded")
        from insightface.app import FaceAnalysis
        from insightface.model_zoo import get_model

        self.providers = onnx_providers(device)
        # An existing folder as `name` is loaded as it is: insightface downloads only packs it cannot find.
        self._analysis = FaceAnalysis(name=str(pack_dir), root=str(home), allowed_modules=["detection", "recognition"],
                                      providers=self.providers)
        self._analysis.prepare(ctx_id=0, det_size=(detection_size, detection_size))
        self._swapper = get_model(str(swapper_path), providers=self.providers)
        self.model = f"{face_pack}+{swapper_path.stem}"

    def find_faces(self, rgb: np.ndarray) -> list[Any]:
        faces = self._analysis.get(np.ascontiguousarray(rgb[..., ::-1]))  # insightface works in BGR
        return sorted(faces, key=lambda face: float(face.bbox[0] + face.bbox[2]))

    def swap(self, target: np.ndarray, target_face: Any, source: np.ndarray, source_face: Any) -> np.ndarray:
        swapped = self._swapper.get(np.ascontiguousarray(target[..., ::-1]), target_face, source_face, paste_back=True)
        return np.ascontiguousarray(swapped[..., ::-1])


def make_backend(models_dir: str | Path, backend: str, options: dict[str, Any]) -> FaceBackend:
    if backend == LandmarkSwap.name:
        return LandmarkSwap(**options)
    if backend == InsightFaceSwap.name:
        return InsightFaceSwap(models_dir, **options)
    raise ValueError(f"unknown face swap backend {backend!r}: choose {LandmarkSwap.name} or {InsightFaceSwap.name}")


def _pick(faces: list[Any], index: int, image: str) -> Any:
    if index >= len(faces):
        raise InvalidInput(f"{image}_face_index is {index} but the {image} image has {len(faces)} "
                           f"face{'s' if len(faces) != 1 else ''} (counted from 0, left to right)")
    return faces[index]


class FaceSwapper:
    """Finds the faces of both images, picks them by index and swaps them with the configured backend."""

    def __init__(self, models_dir: str | Path, backend: str = LandmarkSwap.name, **options: Any):
        self.backend = make_backend(models_dir, backend, options)

    def _faces(self, rgb: np.ndarray, image: str) -> list[Any]:
        faces = self.backend.find_faces(rgb)
        if not faces:
            raise InvalidInput(f"no face found in the {image} image")
        return faces

    def run(self, image_bytes: bytes | None, parameters: dict[str, Any],
            extra_images: dict[str, bytes] | None) -> Iterator[dict[str, Any]]:
        started = time.perf_counter()
        yield progress_event(5, "Decoding images")
        source = np.asarray(open_image(image_bytes).convert("RGB"))
        target_bytes = (extra_images or {}).get(TARGET_IMAGE)
        if not target_bytes:
            raise InvalidInput(f"face_swap needs a {TARGET_IMAGE}: the image that receives the face")
        target = np.asarray(open_image(target_bytes).convert("RGB"))

        yield progress_event(15, "Finding faces")
        source_face = _pick(self._faces(source, "source"), int(parameters.get("source_face_index", 0)), "source")
        target_faces = self._faces(target, "target")
        if not parameters.get("swap_all_faces", False):
            target_faces = [_pick(target_faces, int(parameters.get("target_face_index", 0)), "target")]

        swapped = target
        for done, target_face in enumerate(target_faces, start=1):
            swapped = self.backend.swap(swapped, target_face, source, source_face)
            yield progress_event(20 + 70 * done // len(target_faces), f"Swapped face {done} of {len(target_faces)}")
        blend_ratio = float(parameters.get("blend_ratio", 0.8))
        output = cv2.addWeighted(swapped, blend_ratio, target, 1 - blend_ratio, 0)
        yield result_event(Image.fromarray(output), {
            "model": self.backend.model,
            "backend": self.backend.name,
            "faces_swapped": len(target_faces),
            "blend_ratio": blend_ratio,
            "size": [target.shape[1], target.shape[0]],
            "inference_time": round(time.perf_counter() - started, 4),
        })


@serve.deployment(ray_actor_options={"num_cpus": 1})
class FaceSwap:
    def __init__(self, backend: str = LandmarkSwap.name, **options: Any):
        self.swapper = FaceSwapper(os.environ["MODELS_DIR"], backend, **options)

    async def process(self, image: bytes | None, parameters: dict[str, Any], prompt: str = "",
                      extra_images: dict[str, bytes] | None = None) -> AsyncIterator[dict]:
        # Concurrent requests overlap: onnxruntime sessions are reentrant, the mediapipe graph locks itself.
        async for event in stream_in_thread(paced(self.swapper.run(image, parameters, extra_images))):
            yield event


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder: `args` come from config/serve*.yaml (`backend` plus that backend's options)."""
    return FaceSwap.bind(**args)
