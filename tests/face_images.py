"""Face images for the face-swap tests, built from skimage's astronaut (the one real face that ships offline).

The source is the astronaut with a dark mark painted on her cheek: a feature of the source that a swap must carry
to the same landmark of the target face. The target is a different view of her: mirrored, scaled, rotated,
colour-shifted and placed on another background (skimage's coffee photo).
"""

import cv2
import numpy as np
from skimage import data

# FaceMesh landmark on the left cheek (image left, for a face looking at the camera) where the source is marked.
MARKED_LANDMARK = 205
MARK_RADIUS = 8
MARK_COLOUR = (30, 20, 20)


def marked_source(landmarks: np.ndarray) -> np.ndarray:
    """The astronaut with a dark disc on the cheek; `landmarks` are the astronaut's own FaceMesh points."""
    source = data.astronaut().copy()
    centre = tuple(int(round(value)) for value in landmarks[MARKED_LANDMARK])
    cv2.circle(source, centre, MARK_RADIUS, MARK_COLOUR, -1)
    return source


def composite_target(angle: float = 12, scale: float = 0.8, size: tuple[int, int] = (560, 600)) -> np.ndarray:
    """The mirrored astronaut, scaled and rotated, hue- and colour-shifted, pasted on the coffee photo."""
    portrait = np.ascontiguousarray(data.astronaut()[:, ::-1])
    height, width = portrait.shape[:2]
    placement = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    placement[:, 2] += (40, 30)
    coverage = cv2.warpAffine(np.full((height, width), 255, np.uint8), placement, size)[..., None] / 255
    moved = cv2.warpAffine(portrait, placement, size)
    hsv = cv2.cvtColor(moved, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 8) % 180
    recoloured = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * np.array([0.9, 1.0, 1.15]), 0, 255)
    background = cv2.resize(data.coffee(), size)
    return np.round(recoloured * coverage + background * (1 - coverage)).astype(np.uint8)


def two_face_target() -> np.ndarray:
    """Two faces side by side: the astronaut on the left, a mirrored, turned, recoloured view on the right."""
    return np.ascontiguousarray(np.hstack([data.astronaut(), composite_target(angle=-8, scale=1, size=(512, 512))]))


def no_face() -> np.ndarray:
    return data.coffee()


def face_hull_mask(landmarks: np.ndarray, shape: tuple[int, ...], grow: int = 0) -> np.ndarray:
    """True inside the convex hull of a face's landmarks, grown by `grow` pixels."""
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(landmarks).astype(np.int32)), 1)
    if grow:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    return mask.astype(bool)


def luminance_at(rgb: np.ndarray, point: np.ndarray, radius: int = 3) -> float:
    x, y = (int(round(value)) for value in point)
    patch = rgb[y - radius:y + radius + 1, x - radius:x + radius + 1].astype(float)
    return float((patch @ (0.299, 0.587, 0.114)).mean())
