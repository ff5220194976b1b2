"""Pose images (the head's 3-D axes drawn from yaw, pitch, roll) and image helpers.

The axes follow the convention of ``schemas.pose`` (Hopenet's): x (red) points to the image's
right, y (green) down and z (blue) out of the face towards the camera, all rotated by the head
pose and projected orthographically. A frontal face therefore shows a red line to the right, a
green line down and a blue dot; a face turned towards the image's left grows a blue line to the
left, a face looking up a blue line upwards.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def head_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3x3 rotation of the head in camera axes (x right, y up, z towards the camera), degrees in.

    Positive yaw turns the face towards the image's left, positive pitch tilts it up and positive
    roll turns it clockwise in the image. Roll is applied first, then yaw, then pitch.
    """
    a, b, c = (math.radians(v) for v in (yaw, pitch, roll))
    # Each angle is a negative turn about its camera axis: that gives the image-space meaning
    # above (a face turning left, looking up, or rolling clockwise, seen from the camera).
    ry = np.array([[math.cos(-a), 0, math.sin(-a)], [0, 1, 0], [-math.sin(-a), 0, math.cos(-a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(-b), -math.sin(-b)], [0, math.sin(-b), math.cos(-b)]])
    rz = np.array([[math.cos(-c), -math.sin(-c), 0], [math.sin(-c), math.cos(-c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def axis_tips(yaw: float, pitch: float, roll: float, origin: tuple[float, float],
              size: float) -> np.ndarray:
    """(3, 2) image points of the x, y and z axis tips (pixels, y down) for a given pose."""
    rot = head_rotation(yaw, pitch, roll)
    # head axes in camera coordinates: x right, y down (so -y up), z out of the face
    axes = rot @ np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]).T
    tips = np.stack([axes[0], -axes[1]], axis=1) * size  # camera y up -> image y down
    return tips + np.asarray(origin, np.float64)


def draw_pose_axes(height: int, width: int, yaw: float, pitch: float, roll: float,
                   origin: tuple[float, float] | None = None, scale: float = 0.3) -> np.ndarray:
    """HxWx3 uint8 RGB: black canvas with the pose axes from ``origin`` (default: the centre).

    Axis length is ``scale`` times the shorter image side; line width grows with image size.
    """
    canvas = np.zeros((height, width, 3), np.uint8)
    if origin is None:
        origin = (width / 2.0, height / 2.0)
    size = scale * min(height, width)
    thickness = max(2, round(min(height, width) / 128))
    tips = axis_tips(yaw, pitch, roll, origin, size)
    start = (int(round(origin[0])), int(round(origin[1])))
    # z last so that a face looking at the camera still shows its blue dot over the others
    for tip, colour in zip(tips, (RED, GREEN, BLUE)):
        end = (int(round(tip[0])), int(round(tip[1])))
        cv2.line(canvas, start, end, colour, thickness, cv2.LINE_AA)
    cv2.circle(canvas, start, thickness + 1, BLUE, -1, cv2.LINE_AA)
    return canvas


def centre_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    """The centred square whose side is ``fraction`` of the shorter image side (at least 2 px)."""
    h, w = image.shape[:2]
    side = max(2, int(round(min(h, w) * fraction)))
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


def resize_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with area averaging when shrinking (no aliasing) and bilinear when enlarging."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrink = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 label map (HxW) or RGB image (HxWx3)."""
    data = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", data)
    if not ok:
        raise ValueError("png encoding failed")
    return buf.tobytes()


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an RGB image."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("jpeg encoding failed")
    return buf.tobytes()
