"""Tests of synth.lifting: Listing 2 cleaning, boxes and failure results."""

from __future__ import annotations

import numpy as np
import pytest

from spatialvlm_ros.core.datatypes import CameraIntrinsics
from spatialvlm_ros.synth.canonical import frame_from_plane
from spatialvlm_ros.synth.lifting import (
    horizontal_box,
    LiftingConfig,
    ObjectLifter,
    pca_box,
    statistical_outlier_mask,
    voxel_downsample,
)

K = CameraIntrinsics.from_fov(60.0, 320, 240)


def _scene(rng: np.random.Generator, flying_share: float = 0.03):
    """Render a 0.58 m face at 1.5 m before a wall at 3 m; the mask bleeds 2 px onto the wall."""
    depth = np.full((240, 320), 3.0, dtype=np.float32)
    depth[80:160, 120:200] = 1.5
    mask = np.zeros(depth.shape, dtype=bool)
    mask[78:162, 118:202] = True
    flying = mask & (rng.random(depth.shape) < flying_share)  # mixed-depth edge pixels
    depth[flying] = rng.uniform(1.6, 2.9, flying.sum())
    depth += rng.normal(0.0, 0.002, depth.shape).astype(np.float32)
    return depth, mask


def test_cleaning_removes_bleed_and_flying_pixels():
    depth, mask = _scene(np.random.default_rng(0))
    lifted = ObjectLifter().run(depth, mask, K)
    assert lifted.ok, lifted.reason
    assert lifted.num_raw == mask.sum()
    assert np.all(np.abs(lifted.points[:, 2] - 1.5) < 0.05)  # only the object's face is left
    half = 40 * 1.5 / K.fx  # 40 px at 1.5 m
    np.testing.assert_allclose(lifted.centroid, [0.0, 0.0, 1.5], atol=0.02)
    np.testing.assert_allclose(lifted.aabb[1, :2], [half, half], atol=0.02)
    np.testing.assert_allclose(lifted.aabb[0, :2], [-half, -half], atol=0.02)
    assert lifted.points_canon is None and lifted.obb_canon is None


def test_too_few_points_is_a_failure_not_an_exception():
    depth, _ = _scene(np.random.default_rng(0))
    mask = np.zeros(depth.shape, dtype=bool)
    mask[100:103, 150:153] = True  # 9 pixels
    lifted = ObjectLifter().run(depth, mask, K)
    assert not lifted.ok and '9 valid depth points' in lifted.reason and lifted.points is None
    depth[:] = np.nan
    assert not ObjectLifter().run(depth, np.ones(depth.shape, dtype=bool), K).ok


def test_canonical_frame_gives_gravity_aligned_boxes():
    depth, mask = _scene(np.random.default_rng(1))
    t_canon_cam = frame_from_plane(np.array([0.0, -1.0, 0.0]), 1.0)  # level camera, 1 m up
    lifted = ObjectLifter().run(depth, mask, K, t_canon_cam)
    assert lifted.ok
    # canonical: x forward (camera z), y left (camera -x), z up (camera -y) + 1 m
    np.testing.assert_allclose(lifted.centroid_canon, [1.5, 0.0, 1.0], atol=0.02)
    assert lifted.aabb_canon[1, 2] - lifted.aabb_canon[0, 2] == pytest.approx(
        80 * 1.5 / K.fy, abs=0.03)
    np.testing.assert_allclose(lifted.obb_canon.rotation[:, 2], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(lifted.obb.center, lifted.aabb.mean(axis=0), atol=0.02)


def test_horizontal_box_finds_the_minimal_rectangle():
    rng = np.random.default_rng(2)
    local = rng.uniform([-0.5, -0.1, 0.0], [0.5, 0.1, 0.3], size=(2000, 3))
    yaw = np.deg2rad(35.0)
    rot = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    box = horizontal_box(local @ rot.T + [2.0, 1.0, 0.0])
    np.testing.assert_allclose(sorted(box.half_extents), [0.1, 0.15, 0.5], atol=0.01)
    np.testing.assert_allclose(box.center, [2.0, 1.0, 0.15], atol=0.01)
    long_axis = box.rotation[:, int(np.argmax(box.half_extents))]
    assert abs(long_axis @ rot[:, 0]) == pytest.approx(1.0, abs=1e-3)


def test_pca_box_is_right_handed_and_tight():
    rng = np.random.default_rng(3)
    points = rng.uniform([-1.0, -0.2, -0.05], [1.0, 0.2, 0.05], size=(3000, 3))
    box = pca_box(points)
    assert np.linalg.det(box.rotation) == pytest.approx(1.0)
    np.testing.assert_allclose(box.half_extents, [1.0, 0.2, 0.05], atol=0.01)


def test_helpers():
    points = np.vstack([np.random.default_rng(4).normal(0, 0.01, (500, 3)), [[5.0, 5.0, 5.0]]])
    keep = statistical_outlier_mask(points, 50, 1.2)
    assert not keep[-1] and keep.mean() > 0.8
    means, index = voxel_downsample(np.array([[0.001, 0, 0], [0.003, 0, 0], [0.5, 0, 0]]), 0.01)
    assert len(means) == 2 and index[0] == index[1] != index[2]


def test_config_validation():
    with pytest.raises(ValueError, match='clusterer'):
        LiftingConfig(clusterer='kmeans')
    with pytest.raises(ValueError, match='min_cluster_fraction'):
        LiftingConfig(min_cluster_fraction=0.0)


def test_a_small_object_keeps_its_size():
    """A 2 cm patch is not shrunk to one 1 cm voxel by the clustering."""
    intrinsics = CameraIntrinsics(500.0, 500.0, 320.0, 240.0, 640, 480)
    depth = np.full((480, 640), 0.6, np.float32)
    mask = np.zeros((480, 640), bool)
    mask[232:248, 312:328] = True  # 16 px at 0.6 m with fx 500: 1.9 cm
    lifted = ObjectLifter().run(depth, mask, intrinsics)
    assert lifted.ok
    width = lifted.aabb[1] - lifted.aabb[0]
    assert width[0] > 0.015 and width[1] > 0.015  # it measured 8 mm before
