"""Tests of synth.canonical: synthetic planes and the shared NYU RGB-D frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spatialvlm_ros.core.datatypes import CameraIntrinsics
from spatialvlm_ros.core.geometry import transform_points
from spatialvlm_ros.synth.canonical import (
    CanonicalizationConfig,
    Canonicalizer,
    frame_from_plane,
    ransac_plane,
)

NYU = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'nyu_rgbd'
NYU_K = CameraIntrinsics(518.8579, 519.46961, 325.58245, 253.73617, 640, 480)


def _rotation_x(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _render_planes(intrinsics: CameraIntrinsics, planes: list[tuple[np.ndarray, float]],
                   rng: np.random.Generator, noise: float = 0.005) -> np.ndarray:
    """Depth of the nearest plane ``n . p + d = 0`` along each pixel ray (nan if none)."""
    v, u = np.mgrid[0:intrinsics.height, 0:intrinsics.width]
    rays = np.stack([(u + 0.5 - intrinsics.cx) / intrinsics.fx,
                     (v + 0.5 - intrinsics.cy) / intrinsics.fy, np.ones(u.shape)], axis=-1)
    depth = np.full(u.shape, np.inf)
    for normal, offset in planes:
        denom = rays @ normal
        with np.errstate(divide='ignore', invalid='ignore'):
            z = -offset / denom
        z[~np.isfinite(z) | (z <= 0.1)] = np.inf
        depth = np.minimum(depth, z)
    depth[~np.isfinite(depth) | (depth > 10.0)] = np.nan
    depth += rng.normal(0.0, noise, depth.shape)
    return depth.astype(np.float32)


def _floor_and_wall(tilt_deg: float, height: float, wall_distance: float):
    """Build a floor ``height`` below a camera pitched down by ``tilt_deg``, and a wall ahead."""
    rot = _rotation_x(tilt_deg)  # camera frame <- level frame (camera pitched down)
    floor_n = rot @ np.array([0.0, -1.0, 0.0])  # up, in camera frame
    wall_n = rot @ np.array([0.0, 0.0, -1.0])  # facing the camera
    return [(floor_n, height), (wall_n, wall_distance)], floor_n


@pytest.mark.parametrize('tilt_deg, height', [(15.0, 1.4), (25.0, 0.8), (5.0, 1.0)])
def test_synthetic_floor_recovered(tilt_deg, height):
    k = CameraIntrinsics.from_fov(60.0, 160, 120)
    planes, floor_n = _floor_and_wall(tilt_deg, height, 2.5)
    depth = _render_planes(k, planes, np.random.default_rng(0))
    frame = Canonicalizer().run(depth, k, np.random.default_rng(1))
    assert frame.ok, frame.reason
    assert frame.angle_to_up_deg == pytest.approx(tilt_deg, abs=1.0)
    assert frame.camera_height == pytest.approx(height, abs=0.02)
    assert float(frame.plane_normal @ floor_n) > np.cos(np.deg2rad(1.0))
    # the camera sits at (0, 0, height) in the canonical frame; its optical axis points along +x
    cam_in_canon = transform_points(frame.T_canon_cam, np.zeros((1, 3)))[0]
    np.testing.assert_allclose(cam_in_canon, [0.0, 0.0, frame.camera_height], atol=1e-9)
    forward = frame.T_canon_cam[:3, :3] @ np.array([0.0, 0.0, 1.0])
    assert forward[1] == pytest.approx(0.0, abs=1e-9) and forward[0] > 0


def test_wall_dominated_scene_is_not_picked():
    k = CameraIntrinsics.from_fov(60.0, 160, 120)
    planes, _ = _floor_and_wall(20.0, 1.5, 1.8)  # a close wall fills most of the image
    depth = _render_planes(k, planes, np.random.default_rng(0))
    naive = Canonicalizer(CanonicalizationConfig(plane_search='largest')).run(
        depth, k, np.random.default_rng(1))
    assert naive.angle_to_up_deg > 60.0  # the trap: the largest plane is the wall
    ours = Canonicalizer().run(depth, k, np.random.default_rng(1))
    assert ours.ok and ours.angle_to_up_deg == pytest.approx(20.0, abs=1.0)


def test_only_a_wall_fails_with_reason():
    k = CameraIntrinsics.from_fov(60.0, 160, 120)
    depth = _render_planes(k, [(np.array([0.0, 0.0, -1.0]), 2.0)], np.random.default_rng(0))
    frame = Canonicalizer().run(depth, k, np.random.default_rng(1))
    assert not frame.ok and 'deg' in frame.reason and frame.T_canon_cam is None


def test_ceiling_is_not_a_floor():
    k = CameraIntrinsics.from_fov(60.0, 160, 120)
    depth = _render_planes(k, [(np.array([0.0, 1.0, 0.0]), 1.0)], np.random.default_rng(0))
    assert not Canonicalizer().run(depth, k, np.random.default_rng(1)).ok


def test_small_mask_fails_with_reason():
    k = CameraIntrinsics.from_fov(60.0, 160, 120)
    planes, _ = _floor_and_wall(15.0, 1.4, 2.5)
    depth = _render_planes(k, planes, np.random.default_rng(0))
    mask = np.zeros(depth.shape, dtype=bool)
    mask[-5:, :20] = True  # 100 of 19200 pixels
    frame = Canonicalizer().run(depth, k, np.random.default_rng(1), mask=mask)
    assert not frame.ok and 'cover' in frame.reason
    assert frame.mask_fraction == pytest.approx(100 / 19200)


def test_gravity_hint_changes_what_counts_as_horizontal():
    k = CameraIntrinsics.from_fov(60.0, 160, 120)
    depth = _render_planes(k, [(np.array([0.0, 0.0, -1.0]), 2.0)], np.random.default_rng(0))
    frame = Canonicalizer().run(depth, k, np.random.default_rng(1), up_hint=[0.0, 0.0, -1.0])
    assert frame.ok and frame.angle_to_up_deg < 1.0  # camera looking straight down at a floor
    assert frame.camera_height == pytest.approx(2.0, abs=0.01)


def test_frame_from_plane_is_rigid_and_deterministic():
    t = frame_from_plane(np.array([0.1, -0.9, -0.2]), 1.3)
    np.testing.assert_allclose(t[:3, :3] @ t[:3, :3].T, np.eye(3), atol=1e-12)
    assert np.linalg.det(t[:3, :3]) == pytest.approx(1.0)
    points = np.random.default_rng(0).normal(size=(500, 3))
    a = ransac_plane(points, np.random.default_rng(3), iterations=50)
    b = ransac_plane(points, np.random.default_rng(3), iterations=50)
    np.testing.assert_array_equal(a[0], b[0])


def test_config_validation():
    with pytest.raises(ValueError, match='max_tilt_deg'):
        CanonicalizationConfig(max_tilt_deg=95.0)
    with pytest.raises(ValueError, match='plane_search'):
        CanonicalizationConfig(plane_search='biggest')


def _nyu_depth(frame: str) -> np.ndarray:
    cv2 = pytest.importorskip('cv2', reason='opencv is needed to read the NYU depth PNGs')
    path = NYU / 'depth' / f'sync_depth_{frame}.png'
    if not path.is_file():
        pytest.skip(f'shared NYU RGB-D data not found at {NYU}')
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    depth = raw.astype(np.float32) / 1000.0
    depth[raw == 0] = np.nan
    return depth


@pytest.mark.parametrize('frame', ['00000', '00050'])
def test_nyu_floor(frame):
    result = Canonicalizer().run(_nyu_depth(frame), NYU_K, np.random.default_rng(0))
    assert result.ok, result.reason
    assert 11.0 <= result.angle_to_up_deg <= 18.0
    assert result.camera_height == pytest.approx(1.43, abs=0.1)


def test_nyu_wall_trap():
    depth = _nyu_depth('00100')
    naive = Canonicalizer(CanonicalizationConfig(plane_search='largest')).run(
        depth, NYU_K, np.random.default_rng(0))
    assert naive.angle_to_up_deg > 60.0  # the trap is real: largest plane = the vertical wall
    ours = Canonicalizer().run(depth, NYU_K, np.random.default_rng(0))
    if ours.ok:  # a near-horizontal plane (the floor here) or a clear failure, never the wall
        assert ours.angle_to_up_deg <= 30.0
        assert ours.camera_height == pytest.approx(1.43, abs=0.1)
    else:
        assert ours.reason
