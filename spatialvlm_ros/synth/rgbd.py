"""
RGB-D backends: sensor depth instead of a depth model (the paper's robot data), and loaders.

Registered backends (``stages.build(stage, name, **config)``):

- depth ``'rgbd'``: the scene's own sensor depth (``SceneInput.depth``), ``uint16`` millimetres
  (0 = no reading) or ``float32`` metres, with the scene's intrinsics (required);
- surface ``'depth_normals'``: a model-free horizontal-surface mask from depth-derived surface
  normals (see ``horizontal_mask`` for its limits).

Loaders: ``nyu_scene`` (one NYU Depth v2 frame: RGB JPEG + uint16 PNG millimetres) and
``load_rgbd_folder`` (a folder with ``rgb/`` and ``depth/``, e.g. the shared ``nyu_rgbd``).

Formats follow ``synth.stages``: images RGB ``uint8`` ``(H, W, 3)``; depth ``float32`` metres
``(H, W)`` with ``nan`` = none; masks bool ``(H, W)``; points in the camera optical frame (x
right, y down, z forward). Only numpy at import; OpenCV is imported by the loaders.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
from pathlib import Path
import re
from typing import Any, Sequence

import numpy as np

from spatialvlm_ros.core.datatypes import CameraIntrinsics
from spatialvlm_ros.synth.stages import DepthResult, register, SceneInput

# NYU Depth v2 (Kinect v1) colour intrinsics at 640x480, as given with the shared frames.
NYU_INTRINSICS = CameraIntrinsics(518.8579, 519.46961, 325.58245, 253.73617, 640, 480)
NYU_DEPTH_SCALE = 0.001  # metres per uint16 unit (millimetres)
CAMERA_UP = (0.0, -1.0, 0.0)  # optical frame: y points down
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff')


def depth_to_metres(raw: np.ndarray, depth_scale: float | None = None, min_depth: float = 0.0,
                    max_depth: float | None = None) -> np.ndarray:
    """
    Convert a sensor depth image to float32 metres with ``nan`` where there is no reading.

    :param raw: ``(H, W)`` depth; integer images are sensor units (``uint16`` millimetres with
        0 = none for Kinect / RealSense / ROS ``16UC1``), float images are metres (``32FC1``).
    :param depth_scale: metres per unit; None = 0.001 for integer images, 1.0 for float ones.
    :param min_depth: readings at or below this (metres) become ``nan`` (0 = no reading).
    :param max_depth: readings above this (metres) become ``nan``; None keeps all.
    :return: float32 ``(H, W)`` metres.
    """
    raw = np.asarray(raw)
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[:, :, 0]
    if raw.ndim != 2:
        raise ValueError(f'depth must be (H, W), got shape {raw.shape}')
    if np.issubdtype(raw.dtype, np.integer) or raw.dtype == np.bool_:
        scale = NYU_DEPTH_SCALE if depth_scale is None else depth_scale
    elif np.issubdtype(raw.dtype, np.floating):
        scale = 1.0 if depth_scale is None else depth_scale
    else:
        raise ValueError(f'unsupported depth dtype {raw.dtype}')
    if not scale > 0:
        raise ValueError(f'depth_scale must be > 0, got {scale}')
    depth = raw.astype(np.float64) * scale
    invalid = ~np.isfinite(depth) | (depth <= min_depth)
    if max_depth is not None:
        invalid |= depth > max_depth
    depth[invalid] = np.nan
    return depth.astype(np.float32)


@dataclass
class RGBDDepthConfig:
    """
    Settings of the sensor-depth backend (depth ``'rgbd'``).

    :ivar depth_scale: metres per depth unit; None = 0.001 (millimetres) for integer depth
        images and 1.0 for float ones.
    :ivar min_depth: readings at or below this (metres) become ``nan``.
    :ivar max_depth: readings above this (metres) become ``nan`` (Kinect v1 is unreliable past
        about 8-10 m); None keeps all.
    """

    depth_scale: float | None = None
    min_depth: float = 0.0
    max_depth: float | None = None

    def __post_init__(self) -> None:
        if self.depth_scale is not None and not self.depth_scale > 0:
            raise ValueError(f'depth_scale must be > 0, got {self.depth_scale}')
        if self.min_depth < 0:
            raise ValueError(f'min_depth must be >= 0 m, got {self.min_depth}')
        if self.max_depth is not None and not self.max_depth > self.min_depth:
            raise ValueError(f'max_depth must exceed min_depth, got {self.max_depth}')


class RGBDDepth:
    """Sensor depth and intrinsics taken from the scene (no model)."""

    def __init__(self, config: RGBDDepthConfig | None = None) -> None:
        """Keep the configuration."""
        self.config = config or RGBDDepthConfig()

    def run(self, scene: SceneInput, rng: np.random.Generator) -> DepthResult:
        """Return the scene's depth in metres (``nan`` = none) and its intrinsics."""
        cfg = self.config
        if scene.depth is None:
            raise ValueError(f'scene {scene.image_id!r} has no depth image; the rgbd backend '
                             'needs sensor depth (use a depth model backend otherwise)')
        if scene.intrinsics is None:
            raise ValueError(f'scene {scene.image_id!r} has no intrinsics; the rgbd backend '
                             "needs the depth camera's intrinsics (e.g. from CameraInfo)")
        depth = depth_to_metres(scene.depth, cfg.depth_scale, cfg.min_depth, cfg.max_depth)
        k = scene.intrinsics
        if depth.shape != (k.height, k.width):
            raise ValueError(f'scene {scene.image_id!r}: depth is {depth.shape[1]}x'
                             f'{depth.shape[0]} but intrinsics are for {k.width}x{k.height}')
        return DepthResult(depth, k)


@register('depth', 'rgbd')
def _build_rgbd_depth(**kwargs: Any) -> RGBDDepth:
    return RGBDDepth(RGBDDepthConfig(**kwargs))


# --------------------------------------------------------------------------- loaders


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as RGB ``uint8`` ``(H, W, 3)``."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f'cannot read image {str(path)!r}')
    return np.ascontiguousarray(bgr[:, :, ::-1])


def read_depth(path: str | Path, depth_scale: float | None = NYU_DEPTH_SCALE) -> np.ndarray:
    """Read a depth image file (16-bit PNG, float TIFF, ...) as float32 metres, ``nan`` = none."""
    import cv2

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise FileNotFoundError(f'cannot read depth image {str(path)!r}')
    return depth_to_metres(raw, depth_scale)


def nyu_scene(rgb_path: str | Path, depth_path: str | Path,
              intrinsics: CameraIntrinsics | Sequence[float] = NYU_INTRINSICS,
              depth_scale: float = NYU_DEPTH_SCALE, image_id: str | None = None) -> SceneInput:
    """
    Load one RGB-D frame (NYU Depth v2 style) as a ``SceneInput``.

    :param rgb_path: RGB image (JPEG / PNG).
    :param depth_path: depth PNG, ``uint16`` in units of ``depth_scale`` metres (0 = none).
    :param intrinsics: ``CameraIntrinsics`` or ``(fx, fy, cx, cy)`` for the image size; the
        default is NYU's Kinect colour camera at 640x480.
    :param depth_scale: metres per depth unit (NYU: 0.001).
    :param image_id: defaults to the RGB file's stem.
    :return: a scene with RGB ``uint8``, float32 metres depth (``nan`` = none) and intrinsics.
    """
    image = read_rgb(rgb_path)
    depth = read_depth(depth_path, depth_scale)
    height, width = image.shape[:2]
    if depth.shape != (height, width):
        raise ValueError(f'depth {str(depth_path)!r} is {depth.shape[1]}x{depth.shape[0]} but '
                         f'the image is {width}x{height}')
    if not isinstance(intrinsics, CameraIntrinsics):
        fx, fy, cx, cy = (float(v) for v in intrinsics)
        intrinsics = CameraIntrinsics(fx, fy, cx, cy, width, height)
    if (intrinsics.width, intrinsics.height) != (width, height):
        raise ValueError(f'intrinsics are for {intrinsics.width}x{intrinsics.height} but '
                         f'{str(rgb_path)!r} is {width}x{height}')
    return SceneInput(image_id=image_id or Path(rgb_path).stem, image=image, depth=depth,
                      intrinsics=intrinsics,
                      extras={'rgb_path': str(rgb_path), 'depth_path': str(depth_path)})


def _frame_key(path: Path) -> str:
    """Return the frame number in a file name ('rgb_00050' and 'sync_depth_00050' -> '00050')."""
    numbers = re.findall(r'\d+', path.stem)
    return numbers[-1] if numbers else path.stem


def _resolve(folder: Path, name: str) -> Path:
    """Find an annotation's file: as given, relative to the folder, or by its last two parts."""
    candidate = Path(name)
    for path in (candidate, folder / candidate, folder / Path(*candidate.parts[-2:])):
        if path.is_file():
            return path
    raise FileNotFoundError(f'{name!r} listed in {str(folder / "test_annotations.json")!r} '
                            f'not found under {str(folder)!r}')


def load_rgbd_folder(path: str | Path, intrinsics: CameraIntrinsics | None = None,
                     depth_scale: float | None = None) -> list[SceneInput]:
    """
    Load every RGB-D frame of a folder as ``SceneInput`` (sorted by file name).

    With a ``test_annotations.json`` (Metric3D style: ``files`` entries with ``rgb``, ``depth``,
    ``cam_in`` = fx, fy, cx, cy and ``depth_scale`` = units per metre) the frames and
    intrinsics come from it. Otherwise ``rgb/`` and ``depth/`` images are paired by the last
    number in their names and ``intrinsics`` is required.

    :param path: the folder (e.g. ``shared/data/nyu_rgbd``).
    :param intrinsics: overrides the annotation's intrinsics; required without annotations.
    :param depth_scale: metres per depth unit; overrides the annotation (default 0.001).
    :return: the scenes, float32 metres depth with ``nan`` where the sensor had no reading.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f'RGB-D folder {str(folder)!r} does not exist')
    annotations = folder / 'test_annotations.json'
    scenes = []
    if annotations.is_file():
        for entry in json.loads(annotations.read_text())['files']:
            rgb, depth = _resolve(folder, entry['rgb']), _resolve(folder, entry['depth'])
            scale = depth_scale
            if scale is None:  # Metric3D stores units per metre (1000 = millimetres)
                scale = 1.0 / float(entry['depth_scale']) if 'depth_scale' in entry \
                    else NYU_DEPTH_SCALE
            k = intrinsics if intrinsics is not None else entry.get('cam_in')
            if k is None:
                raise ValueError(f'{str(annotations)!r}: no cam_in for {entry["rgb"]!r}; '
                                 'pass intrinsics')
            scenes.append(nyu_scene(rgb, depth, k, scale))
        return sorted(scenes, key=lambda s: s.image_id)
    if intrinsics is None:
        raise ValueError(f'{str(folder)!r} has no test_annotations.json; pass intrinsics')
    rgbs = {_frame_key(p): p for p in sorted((folder / 'rgb').glob('*'))
            if p.suffix.lower() in IMAGE_SUFFIXES}
    depths = {_frame_key(p): p for p in sorted((folder / 'depth').glob('*'))
              if p.suffix.lower() in IMAGE_SUFFIXES}
    if not rgbs:
        raise FileNotFoundError(f'no images in {str(folder / "rgb")!r}')
    missing = sorted(set(rgbs) - set(depths))
    if missing:
        raise FileNotFoundError(f'no depth image for frames {missing} in '
                                f'{str(folder / "depth")!r}')
    scale = NYU_DEPTH_SCALE if depth_scale is None else depth_scale
    return [nyu_scene(rgbs[key], depths[key], intrinsics, scale) for key in sorted(rgbs)]


# --------------------------------------------------------------------------- normals surface


def _nan_box_filter(depth: np.ndarray, size: int) -> np.ndarray:
    """Return the mean of the valid depths in a ``size`` x ``size`` window (``nan`` if none)."""
    import cv2

    valid = np.isfinite(depth)
    values = np.where(valid, depth, 0.0).astype(np.float32)
    sums = cv2.boxFilter(values, -1, (size, size), normalize=False,
                         borderType=cv2.BORDER_CONSTANT)
    counts = cv2.boxFilter(valid.astype(np.float32), -1, (size, size), normalize=False,
                           borderType=cv2.BORDER_CONSTANT)
    out = np.full(depth.shape, np.nan, dtype=np.float32)
    np.divide(sums, counts, out=out, where=counts > 0.5 * size * size)
    out[~valid] = np.nan  # do not fill holes
    return out


def surface_normals(depth: np.ndarray, intrinsics: CameraIntrinsics, step: int = 3,
                    smooth: int = 5, max_relative_jump: float = 0.15) -> np.ndarray:
    """
    Estimate per-pixel unit surface normals from depth, turned toward the camera.

    Central differences of the back-projected points ``step`` pixels apart (after a
    ``smooth`` x ``smooth`` nan-aware box filter on depth); pixels whose depth changes by more
    than ``max_relative_jump`` of their depth across the stencil (occlusion edges) get ``nan``.

    :return: float32 ``(H, W, 3)`` normals in the optical frame, ``nan`` where unknown.
    """
    depth = np.asarray(depth, dtype=np.float32)
    if depth.shape != (intrinsics.height, intrinsics.width):
        raise ValueError(f'depth is {depth.shape[1]}x{depth.shape[0]} but intrinsics are for '
                         f'{intrinsics.width}x{intrinsics.height}')
    if step < 1 or smooth < 1:
        raise ValueError(f'step and smooth must be >= 1, got {step}, {smooth}')
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float32)
    if smooth > 1:
        depth = _nan_box_filter(depth, smooth)
    height, width = depth.shape
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    points = np.stack([(u + 0.5 - intrinsics.cx) * depth / intrinsics.fx,
                       (v + 0.5 - intrinsics.cy) * depth / intrinsics.fy, depth], axis=-1)
    du = np.full_like(points, np.nan)  # (H, W, 3) along +u (image right)
    dv = np.full_like(points, np.nan)  # (H, W, 3) along +v (image down)
    du[:, step:-step] = points[:, 2 * step:] - points[:, :-2 * step]
    dv[step:-step] = points[2 * step:] - points[:-2 * step]
    normals = np.cross(du, dv)
    norms = np.linalg.norm(normals, axis=-1, keepdims=True)
    with np.errstate(invalid='ignore', divide='ignore'):
        normals = normals / norms
        jump = np.maximum(np.abs(du[..., 2]), np.abs(dv[..., 2])) / depth
    flip = np.einsum('hwc,hwc->hw', normals, points) > 0  # face the camera
    normals[flip] *= -1
    normals[~(jump <= max_relative_jump) | ~(norms[..., 0] > 0)] = np.nan
    return normals.astype(np.float32)


def horizontal_mask(depth: np.ndarray, intrinsics: CameraIntrinsics, max_angle_deg: float = 30.0,
                    up: Sequence[float] = CAMERA_UP, step: int = 3, smooth: int = 5,
                    max_relative_jump: float = 0.15) -> np.ndarray:
    """
    Mark pixels whose depth-derived normal is within ``max_angle_deg`` of ``up``.

    Limits: ``up`` is the camera's up axis (image up, ``-y``) unless a gravity direction is
    passed, so the test is "horizontal" only for a roughly level camera: a camera pitched by
    more than ``max_angle_deg`` misses the floor and a rolled one accepts slanted surfaces;
    every near-level surface facing the camera from below counts (floor, tabletops, seats,
    shelves, box tops), not just the supporting plane; sensor noise on far or dark surfaces and
    the smoothing across occlusion edges give noisy normals there. Good enough as the candidate
    set for the canonicalizer's constrained RANSAC, not as a semantic segmentation.

    :return: bool ``(H, W)``.
    """
    if not 0.0 < max_angle_deg < 90.0:
        raise ValueError(f'max_angle_deg must be in (0, 90), got {max_angle_deg}')
    up_vec = np.asarray(up, dtype=np.float64)
    if up_vec.shape != (3,) or not np.linalg.norm(up_vec) > 0:
        raise ValueError(f'up must be a non-zero 3-vector, got {up}')
    up_vec = up_vec / np.linalg.norm(up_vec)
    normals = surface_normals(depth, intrinsics, step, smooth, max_relative_jump)
    with np.errstate(invalid='ignore'):
        cosine = normals @ up_vec.astype(np.float32)  # (H, W), nan where unknown
        return cosine >= np.cos(np.deg2rad(max_angle_deg))


@dataclass
class DepthNormalsConfig:
    """
    Settings of the model-free surface backend (surface ``'depth_normals'``).

    :ivar max_angle_deg: largest angle between a pixel's normal and ``up`` (must exceed the
        camera's pitch for the floor to pass).
    :ivar up: the up direction in the camera optical frame (default image up, ``-y``); pass
        gravity (e.g. from an IMU) when known.
    :ivar step: finite-difference half-width in pixels.
    :ivar smooth: box-filter size on depth before differencing (1 = none).
    :ivar max_relative_jump: depth change across the stencil, as a share of depth, above which
        a pixel is an occlusion edge and gets no normal.
    :ivar depth_scale: metres per unit for integer depth images (None: 0.001 for integers, 1.0
        for floats).
    """

    max_angle_deg: float = 30.0
    up: tuple[float, float, float] = CAMERA_UP
    step: int = 3
    smooth: int = 5
    max_relative_jump: float = 0.15
    depth_scale: float | None = None

    def __post_init__(self) -> None:
        self.up = tuple(float(v) for v in self.up)  # type: ignore[assignment]
        if not 0.0 < self.max_angle_deg < 90.0:
            raise ValueError(f'max_angle_deg must be in (0, 90), got {self.max_angle_deg}')
        if len(self.up) != 3 or not np.linalg.norm(self.up) > 0:
            raise ValueError(f'up must be a non-zero 3-vector, got {self.up}')
        if self.step < 1 or self.smooth < 1:
            raise ValueError(f'step and smooth must be >= 1, got {self.step}, {self.smooth}')
        if not self.max_relative_jump > 0:
            raise ValueError(f'max_relative_jump must be > 0, got {self.max_relative_jump}')
        if self.depth_scale is not None and not self.depth_scale > 0:
            raise ValueError(f'depth_scale must be > 0, got {self.depth_scale}')


class DepthNormalsSurface:
    """
    Horizontal-surface mask from depth normals; no model (see ``horizontal_mask`` for limits).

    Depth and intrinsics come from ``scene.depth`` / ``scene.intrinsics``; when the scene has
    no sensor depth, from ``scene.extras['depth']`` (a ``DepthResult`` from the depth stage, or
    an array used with ``scene.intrinsics``).
    """

    def __init__(self, config: DepthNormalsConfig | None = None) -> None:
        """Keep the configuration."""
        self.config = config or DepthNormalsConfig()

    def run(self, scene: SceneInput) -> np.ndarray:
        """Return a bool ``(H, W)`` mask of floor/table pixels."""
        cfg = self.config
        depth, intrinsics = scene.depth, scene.intrinsics
        if depth is None:
            estimate = scene.extras.get('depth')
            if isinstance(estimate, DepthResult):
                depth, intrinsics = estimate.depth, estimate.intrinsics
            else:
                depth = estimate
        if depth is None or intrinsics is None:
            raise ValueError(f'scene {scene.image_id!r}: depth_normals needs depth and '
                             'intrinsics (scene.depth + scene.intrinsics, or a DepthResult in '
                             "scene.extras['depth'])")
        metres = depth_to_metres(depth, cfg.depth_scale)
        return horizontal_mask(metres, intrinsics, cfg.max_angle_deg, cfg.up, cfg.step,
                               cfg.smooth, cfg.max_relative_jump)


@register('surface', 'depth_normals')
def _build_depth_normals(**kwargs: Any) -> DepthNormalsSurface:
    return DepthNormalsSurface(DepthNormalsConfig(**kwargs))
