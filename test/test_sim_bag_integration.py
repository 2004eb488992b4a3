"""A real simulated episode through a real bag: identical images and ground truth back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spatialvlm_ros.bags.reader import bag_info, read_episode
from spatialvlm_ros.bags.writer import write_episode
from spatialvlm_ros.core.datatypes import Episode
from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode


@pytest.fixture(scope='module')
def episode() -> Episode:
    config = EpisodeConfig(seed=11, scenario='approach_retreat', width=160, height=120,
                           num_frames=12, rate_hz=20.0)
    return generate_episode(config)


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_sim_episode_round_trips_through_a_bag(episode: Episode, storage: str,
                                               tmp_path: Path) -> None:
    path = write_episode(episode, tmp_path / 'bag', storage=storage)
    info = bag_info(path)
    assert info['storage'] == storage
    assert info['messages_read'] == info['messages_stored'] == 8 * len(episode.frames)

    bag = read_episode(path)
    assert bag.metadata['target_id'] == episode.target_id
    assert bag.metadata['scenario'] == 'approach_retreat'
    assert bag.intrinsics == episode.frames[0].intrinsics
    assert [f.stamp_ns for f in bag.frames] == [f.stamp_ns for f in episode.frames]
    for read, truth in zip(bag.frames, episode.frames, strict=True):
        np.testing.assert_array_equal(read.rgb, truth.rgb)
        np.testing.assert_array_equal(read.depth, truth.depth)  # nan where nan
        np.testing.assert_array_equal(read.segmentation, truth.segmentation)
        np.testing.assert_allclose(read.gripper_cam, truth.gripper_cam, atol=1e-12)
        assert read.distance_centre == truth.distance_centre
        assert read.distance_surface == truth.distance_surface
        for pose, obj in zip(read.object_poses, truth.objects, strict=True):
            np.testing.assert_allclose(pose[:3, 3], obj.obb_cam.center, atol=1e-12)
            np.testing.assert_allclose(pose[:3, :3], obj.obb_cam.rotation, atol=1e-9)

    # the reader's ground truth supports the episode's story: close to the target mid-way
    target = [f.distance_surface[episode.target_id] for f in bag.frames]
    assert min(target) < 0.05 < target[0]
