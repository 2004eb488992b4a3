"""Tests of synth.rgbd: sensor depth conversion, RGB-D loaders, the depth-normals surfaces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spatialvlm_ros.core.datatypes import CameraIntrinsics
from spatialvlm_ros.synth import rgbd, stages
from spatialvlm_ros.synth.canonical import Canonicalizer
from spatialvlm_ros.synth.stages import DepthResult, SceneInput

NYU = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'nyu_rgbd'


def _scene(depth=None, intrinsics=None, **kwargs) -> SceneInput:
    height, width = (4, 5) if depth is None else np.asarray(depth).shape[:2]
    return SceneInput('s', np.zeros((height, width, 3), np.uint8), depth=depth,
                      intrinsics=intrinsics, **kwargs)


def _floor_depth(k: CameraIntrinsics, pitch_deg: float, height: float,
                 wall: float) -> np.ndarray:
    """Depth of a floor ``height`` below a camera pitched down by ``pitch_deg``, a wall ahead."""
    a = np.deg2rad(pitch_deg)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    v, u = np.mgrid[0:k.height, 0:k.width]
    rays = np.stack([(u + 0.5 - k.cx) / k.fx, (v + 0.5 - k.cy) / k.fy, np.ones(u.shape)], -1)
    depth = np.full(u.shape, np.inf)
    for normal, offset in ((rot @ [0.0, -1.0, 0.0], height), (rot @ [0.0, 0.0, -1.0], wall)):
        with np.errstate(divide='ignore'):
            z = -offset / (rays @ normal)
        depth = np.minimum(depth, np.where(z > 0.1, z, np.inf))
    return np.where(np.isfinite(depth), depth, np.nan).astype(np.float32)


# --------------------------------------------------------------------------- depth conversion


def test_uint16_millimetres_to_metres():
    raw = np.array([[0, 1000, 1500], [65535, 250, 0]], dtype=np.uint16)
    depth = rgbd.depth_to_metres(raw)
    assert depth.dtype == np.float32 and depth.shape == (2, 3)
    np.testing.assert_allclose(depth, [[np.nan, 1.0, 1.5], [65.535, 0.25, np.nan]], rtol=1e-6)
    np.testing.assert_allclose(rgbd.depth_to_metres(raw, depth_scale=1 / 256)[0, 1], 1000 / 256)
    assert np.isnan(rgbd.depth_to_metres(raw, max_depth=10.0)[1, 0])


def test_float_metres_invalid_readings_become_nan():
    raw = np.array([[1.25, np.nan, 0.0], [-1.0, np.inf, 3.0]], dtype=np.float32)
    depth = rgbd.depth_to_metres(raw)
    np.testing.assert_array_equal(np.isnan(depth), [[False, True, True], [True, True, False]])
    assert depth[0, 0] == pytest.approx(1.25) and depth[1, 2] == pytest.approx(3.0)
    with pytest.raises(ValueError, match='\\(H, W\\)'):
        rgbd.depth_to_metres(np.zeros((2, 2, 2), np.float32))


def test_rgbd_depth_backend():
    k = CameraIntrinsics(4.0, 4.0, 2.5, 2.0, 5, 4)
    raw = np.full((4, 5), 1200, dtype=np.uint16)
    raw[0, 0] = 0
    backend = stages.build('depth', 'rgbd')
    result = backend.run(_scene(raw, k), np.random.default_rng(0))
    assert isinstance(result, DepthResult) and result.intrinsics == k
    assert result.depth.dtype == np.float32 and np.isnan(result.depth[0, 0])
    assert np.nanmax(result.depth) == pytest.approx(1.2)
    scaled = stages.build('depth', 'rgbd', depth_scale=0.0001)
    scaled = scaled.run(_scene(raw, k), np.random.default_rng(0))
    assert np.nanmax(scaled.depth) == pytest.approx(0.12)


def test_rgbd_depth_errors_are_clear():
    k = CameraIntrinsics(4.0, 4.0, 2.5, 2.0, 5, 4)
    backend = rgbd.RGBDDepth()
    with pytest.raises(ValueError, match='no intrinsics'):
        backend.run(_scene(np.ones((4, 5), np.float32)), np.random.default_rng(0))
    with pytest.raises(ValueError, match='no depth image'):
        backend.run(_scene(None, k), np.random.default_rng(0))
    with pytest.raises(ValueError, match='6x4 but intrinsics are for 5x4'):
        backend.run(_scene(np.ones((4, 6), np.float32), k), np.random.default_rng(0))
    with pytest.raises(ValueError, match='depth_scale'):
        rgbd.RGBDDepthConfig(depth_scale=0.0)


# --------------------------------------------------------------------------- normals


def test_horizontal_mask_finds_the_floor_not_the_wall():
    k = CameraIntrinsics.from_fov(60.0, 160, 120)
    depth = _floor_depth(k, 15.0, 1.4, 3.0)
    normals = rgbd.surface_normals(depth, k, smooth=1)
    assert normals.shape == (120, 160, 3) and normals.dtype == np.float32
    mask = rgbd.horizontal_mask(depth, k, max_angle_deg=25.0)
    assert mask.shape == depth.shape and mask.dtype == bool
    a = np.deg2rad(15.0)
    floor_up = np.array([0.0, -np.cos(a), -np.sin(a)])  # the floor normal in the camera frame
    points_up = np.einsum('hwc,c->hw', np.nan_to_num(normals), floor_up)
    is_floor = points_up > np.cos(np.deg2rad(1.0))
    assert is_floor.mean() > 0.2
    assert mask[is_floor].mean() > 0.95  # the floor passes
    assert not mask[np.abs(points_up) < 0.1].any()  # the wall does not
    assert not rgbd.horizontal_mask(depth, k, max_angle_deg=10.0).any()  # pitch > threshold


def test_depth_normals_reads_a_depth_result_from_extras():
    k = CameraIntrinsics.from_fov(60.0, 160, 120)
    depth = _floor_depth(k, 10.0, 1.2, 4.0)
    surface = stages.build('surface', 'depth_normals')
    direct = surface.run(_scene(depth, k))
    estimated = surface.run(_scene(None, None, extras={'depth': DepthResult(depth, k)}))
    assert direct.shape == (120, 160) and direct.any()
    np.testing.assert_array_equal(direct, estimated)
    with pytest.raises(ValueError, match='needs depth and intrinsics'):
        surface.run(_scene(depth, None))
    with pytest.raises(ValueError, match='max_angle_deg'):
        rgbd.DepthNormalsConfig(max_angle_deg=90.0)


# --------------------------------------------------------------------------- loaders


def test_folder_without_annotations_pairs_frames(tmp_path):
    cv2 = pytest.importorskip('cv2')
    (tmp_path / 'rgb').mkdir()
    (tmp_path / 'depth').mkdir()
    rng = np.random.default_rng(0)
    for frame in ('0002', '0001'):
        cv2.imwrite(str(tmp_path / 'rgb' / f'rgb_{frame}.png'),
                    rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        cv2.imwrite(str(tmp_path / 'depth' / f'sync_depth_{frame}.png'),
                    np.full((6, 8), int(frame) * 1000, dtype=np.uint16))
    with pytest.raises(ValueError, match='pass intrinsics'):
        rgbd.load_rgbd_folder(tmp_path)
    k = CameraIntrinsics(8.0, 8.0, 4.0, 3.0, 8, 6)
    scenes = rgbd.load_rgbd_folder(tmp_path, intrinsics=k)
    assert [s.image_id for s in scenes] == ['rgb_0001', 'rgb_0002']
    assert [float(np.nanmean(s.depth)) for s in scenes] == [1.0, 2.0]
    assert scenes[0].image.shape == (6, 8, 3) and scenes[0].intrinsics == k
    with pytest.raises(FileNotFoundError, match='does not exist'):
        rgbd.load_rgbd_folder(tmp_path / 'missing')


def _nyu_or_skip() -> Path:
    pytest.importorskip('cv2', reason='opencv is needed to read the NYU images')
    if not (NYU / 'rgb').is_dir():
        pytest.skip(f'shared NYU RGB-D data not found at {NYU}')
    return NYU


def test_nyu_folder_loads_metres_with_nan_holes():
    import cv2

    folder = _nyu_or_skip()
    scenes = rgbd.load_rgbd_folder(folder)
    assert [s.image_id for s in scenes] == ['rgb_00000', 'rgb_00050', 'rgb_00100']
    for scene in scenes:
        assert scene.image.shape == (480, 640, 3) and scene.image.dtype == np.uint8
        assert scene.depth.shape == (480, 640) and scene.depth.dtype == np.float32
        assert scene.intrinsics == rgbd.NYU_INTRINSICS
        raw = cv2.imread(scene.extras['depth_path'], cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(np.isnan(scene.depth), raw == 0)
        assert 0.6 < np.nanmin(scene.depth) and np.nanmax(scene.depth) < 8.5
        assert 0.6 < np.isfinite(scene.depth).mean() < 0.8
    single = rgbd.nyu_scene(folder / 'rgb' / 'rgb_00050.jpg',
                            folder / 'depth' / 'sync_depth_00050.png')
    np.testing.assert_array_equal(single.depth, scenes[1].depth)
    np.testing.assert_array_equal(single.image, scenes[1].image)


@pytest.mark.parametrize('frame', ['rgb_00000', 'rgb_00050', 'rgb_00100'])
def test_nyu_rgbd_path_finds_the_floor(frame):
    scene = {s.image_id: s for s in rgbd.load_rgbd_folder(_nyu_or_skip())}[frame]
    depth = stages.build('depth', 'rgbd').run(scene, np.random.default_rng(0))
    mask = stages.build('surface', 'depth_normals').run(scene)
    assert mask.shape == (480, 640) and 0.05 < mask.mean() < 0.5
    result = Canonicalizer().run(depth.depth, depth.intrinsics, np.random.default_rng(0),
                                 mask=mask)
    assert result.ok, result.reason
    assert 13.0 <= result.angle_to_up_deg <= 16.0
    assert result.camera_height == pytest.approx(1.45, abs=0.05)
