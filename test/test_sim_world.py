"""Tests of the simulated tabletop world: formats, determinism, camera geometry, distances."""

from __future__ import annotations

import os

import numpy as np
import pytest

from spatialvlm_ros.core.geometry import backproject, invert_transform, project, transform_points
from spatialvlm_ros.sim import catalog
from spatialvlm_ros.sim.scene import sample_scene, SceneConfig, World
from spatialvlm_ros.sim.truth import capture, grasp_point, point_mesh_distance

pytest.importorskip('pybullet')

CONFIG = SceneConfig(width=160, height=120)


def _frame(seed: int, config: SceneConfig = CONFIG):
    scene = sample_scene(config, np.random.default_rng(seed))
    world = World(scene)
    return world, capture(world, 0, 0)


@pytest.fixture(scope='module', params=[0, 1, 2])
def world_frame(request):
    """Build a world and its first frame for a few seeds."""
    world, frame = _frame(request.param)
    yield world, frame
    world.close()


def test_formats(world_frame):
    """Images, masks and truth follow the pinned core formats."""
    _, frame = world_frame
    assert frame.rgb.shape == (120, 160, 3) and frame.rgb.dtype == np.uint8
    assert frame.depth.shape == (120, 160) and frame.depth.dtype == np.float32
    assert frame.segmentation.shape == (120, 160) and frame.segmentation.dtype == np.int32
    assert np.nanmin(frame.depth) > 0
    assert set(np.unique(frame.segmentation)) <= set(range(-1, len(frame.objects)))
    assert 3 <= len(frame.objects) <= 8
    for i, obj in enumerate(frame.objects):
        assert obj.visible_pixels == int((frame.segmentation == i).sum())
        assert 1 <= min(len(c.split()) for c in obj.captions)
        assert max(len(c.split()) for c in obj.captions) <= 6
        assert obj.attributes['colour'] in catalog.PALETTE
        assert np.all(obj.aabb_world[0] <= obj.centroid_world + 1e-9)
        assert np.all(obj.aabb_world[1] >= obj.centroid_world - 1e-9)
        np.testing.assert_allclose(
            transform_points(invert_transform(frame.T_world_cam), obj.centroid_world[None])[0],
            obj.centroid_cam, atol=1e-9)
    R = frame.T_world_cam[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)


def test_objects_rest_on_table_without_overlap(world_frame):
    """Objects sit on the table top and their footprints do not intersect."""
    world, frame = world_frame
    for obj in frame.objects:
        assert obj.aabb_world[0, 2] == pytest.approx(world.scene.table_height, abs=1e-6)
    ids = [o.object_id for o in frame.objects]
    assert len(set(ids)) == len(ids)


def test_backprojection_recovers_true_surface(world_frame):
    """
    Back-projected masked depth lies on the true object surface (median over objects < 1 cm).

    The centroid is not observable from one view, so instead of comparing centroids each
    visible object's masked depth is lifted with ``K`` (core.geometry.backproject, pixel
    centres at +0.5), moved into the object's frame with the true poses, and its distance to
    the object's exact mesh surface (numpy point-to-triangle) is measured. This checks depth
    linearisation, ``K`` (principal point and focal length), the optical-frame pose and the
    segmentation all at once. Observed: well under 1 mm.
    """
    world, frame = world_frame
    T_cam_world = invert_transform(frame.T_world_cam)
    errors = []
    for i, obj in enumerate(frame.objects):
        mask = frame.segmentation == i
        if mask.sum() < 20:
            continue
        points = transform_points(frame.T_world_cam, backproject(frame.depth, frame.intrinsics,
                                                                 mask))
        local = transform_points(invert_transform(world.object_pose(i)), points)[::7]
        vertices, triangles = world.object_geometry[i]
        errors.append(np.median([point_mesh_distance(q, vertices, triangles) for q in local]))
        # the true centroid projects onto (or next to) the object's mask
        uv = project(transform_points(T_cam_world, obj.centroid_world[None]), frame.intrinsics)
        v, u = np.nonzero(mask)
        gap = np.min(np.hypot(u + 0.5 - uv[0, 0], v + 0.5 - uv[0, 1]))
        assert gap < 3.0, (obj.object_id, gap)
    assert errors
    assert np.median(errors) < 0.01
    assert np.median(errors) < 0.001  # in practice exact up to float32 depth


def test_distances_agree_with_exact_mesh_distance(world_frame):
    """distance_surface (pybullet probe) equals numpy point-to-mesh; centre distance is exact."""
    world, frame = world_frame
    grip = grasp_point(world)
    np.testing.assert_allclose(frame.gripper_world, grip)
    for i, obj in enumerate(frame.objects):
        local = transform_points(invert_transform(world.object_pose(i)), grip[None])[0]
        exact = point_mesh_distance(local, *world.object_geometry[i])
        assert frame.distance_surface[obj.object_id] == pytest.approx(exact, abs=2e-4)
        assert frame.distance_centre[obj.object_id] == pytest.approx(
            float(np.linalg.norm(grip - obj.centroid_world)), abs=1e-9)
        assert frame.distance_surface[obj.object_id] <= frame.distance_centre[obj.object_id]


def test_grasp_point_between_finger_links(world_frame):
    """The grasp point lies between the fingers, below the hand."""
    import pybullet as p

    world, _ = world_frame
    grip = grasp_point(world)
    fingers = [np.asarray(p.getLinkState(world.robot, link, physicsClientId=world.client)[4])
               for link in (9, 10)]
    mid = (fingers[0] + fingers[1]) / 2
    assert 0.05 < np.linalg.norm(grip - mid) < 0.06


def test_same_seed_is_bit_identical_and_seeds_differ():
    """The same seed renders identical frames; another seed gives another scene."""
    w1, f1 = _frame(5)
    w2, f2 = _frame(5)
    w3, f3 = _frame(6)
    for w in (w1, w2, w3):
        w.close()
    assert np.array_equal(f1.rgb, f2.rgb)
    assert np.array_equal(f1.depth, f2.depth, equal_nan=True)
    assert np.array_equal(f1.segmentation, f2.segmentation)
    assert f1.distance_surface == f2.distance_surface
    assert not np.array_equal(f1.rgb, f3.rgb)


def test_captions_are_true():
    """Captions use the sampled attributes and span one to six words."""
    spec = catalog.CATALOG['mug']
    caps = catalog.captions(spec, {'colour': 'red', 'size': 'small', 'material': 'ceramic'})
    assert {'mug', 'red mug', 'small red ceramic mug', 'the small red ceramic coffee mug'} <= set(
        caps)
    assert all(1 <= len(c.split()) <= 6 for c in caps)
    medium = catalog.captions(spec, {'colour': 'red', 'size': 'medium', 'material': 'metal'})
    assert not any('medium' in c for c in medium)
    rng = np.random.default_rng(0)
    assert catalog.sample_caption(caps, rng) in caps


@pytest.mark.parametrize('kwargs, message', [
    ({'width': 8}, 'image size'),
    ({'n_objects': (5, 3)}, 'n_objects'),
    ({'n_objects': (3, 9)}, 'n_objects'),
    ({'fov_deg': (50.0, 40.0)}, 'fov_deg'),
    ({'cam_distance': (0.0, 0.5)}, 'cam_distance must be positive'),
    ({'near': 0.0}, 'near'),
    ({'categories': ('mug', 'spaceship')}, 'unknown categories'),
    ({'robot_visual': 'fancy'}, 'robot_visual'),
])
def test_bad_scene_config(kwargs, message):
    """Invalid scene ranges raise ValueError naming the problem."""
    with pytest.raises(ValueError, match=message):
        SceneConfig(**kwargs)


def test_parallel_matches_serial():
    """Rendering with two worker processes gives the frames a single process gives."""
    from spatialvlm_ros.sim.parallel import render_scenes

    serial = render_scenes([11, 12], CONFIG, workers=1)
    parallel = render_scenes([11, 12], CONFIG, workers=2)
    for a, b in zip(serial, parallel, strict=True):
        assert np.array_equal(a[0].rgb, b[0].rgb)
        assert np.array_equal(a[0].depth, b[0].depth, equal_nan=True)


def test_cli_scene(tmp_path, capsys):
    """``spatialvlm sim scene`` prints objects and writes images."""
    import json

    from spatialvlm_ros.cli import main

    assert main(['sim', 'scene', '--seed', '2', '--width', '160', '--height', '120', '--out',
                 str(tmp_path), '--json']) == 0
    result = json.loads(capsys.readouterr().out)
    assert result['objects'] and 'distance_surface' in result['objects'][0]
    assert (tmp_path / 'rgb.png').exists() and (tmp_path / 'seg.png').exists()
    assert np.load(tmp_path / 'depth.npy').dtype == np.float32


def test_the_low_poly_panda_follows_the_mesh_folder_in_use(tmp_path, monkeypatch):
    """A URDF written for another install's meshes is never reused for this one."""
    import shutil

    from spatialvlm_ros.sim import catalog, scene

    first = scene._lowpoly_panda_urdf()
    other = tmp_path / 'data' / 'franka_panda'
    other.mkdir(parents=True)
    shutil.copy(os.path.join(catalog.data_path(), 'franka_panda', 'panda.urdf'), other)
    monkeypatch.setattr(catalog, 'data_path', lambda: str(tmp_path / 'data'))
    second = scene._lowpoly_panda_urdf()
    assert second != first
    text = open(second, encoding='utf-8').read()
    assert str(other / 'meshes') in text and 'package://' not in text
