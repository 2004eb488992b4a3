"""
Render many scenes or episodes with worker processes, one PyBullet client per worker.

Each task is independent and seeded, so the result does not depend on the number of workers.
"""

from __future__ import annotations

from dataclasses import replace
import multiprocessing
from typing import Iterable, Sequence

import numpy as np

from spatialvlm_ros.core.datatypes import Episode, Frame
from spatialvlm_ros.sim.episode import EpisodeConfig
from spatialvlm_ros.sim.scene import SceneConfig


def render_scene_frames(seed: int, config: SceneConfig, frames: int = 1) -> list[Frame]:
    """Sample the scene for ``seed`` and render ``frames`` frames with the arm at random poses."""
    from spatialvlm_ros.sim.scene import HOME_JOINTS, sample_scene, World
    from spatialvlm_ros.sim.truth import capture

    rng = np.random.default_rng(seed)
    scene = sample_scene(config, rng)
    out = []
    with World(scene) as world:
        for k in range(frames):
            world.set_arm(np.asarray(HOME_JOINTS) + rng.uniform(-0.3, 0.3, size=7))
            out.append(capture(world, k, k * 100_000_000))
    return out


def _scene_task(args: tuple[int, SceneConfig, int]) -> list[Frame]:
    return render_scene_frames(*args)


def _episode_task(config: EpisodeConfig) -> Episode:
    from spatialvlm_ros.sim.episode import generate_episode

    return generate_episode(config)


def _pool_map(func, tasks: Sequence, workers: int, start_method: str, progress: bool,
              desc: str) -> list:
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}')
    if workers == 1:
        return [func(t) for t in tqdm(tasks, desc=desc, disable=not progress)]
    ctx = multiprocessing.get_context(start_method)
    with ctx.Pool(workers) as pool:
        return list(tqdm(pool.imap(func, tasks), total=len(tasks), desc=desc,
                         disable=not progress))


def render_scenes(seeds: Iterable[int], config: SceneConfig | None = None,
                  frames_per_scene: int = 1, workers: int = 2, start_method: str = 'spawn',
                  progress: bool = False) -> list[list[Frame]]:
    """Frames of one scene per seed (in seed order), rendered by ``workers`` processes."""
    if frames_per_scene < 1:
        raise ValueError(f'frames_per_scene must be >= 1, got {frames_per_scene}')
    tasks = [(int(s), config or SceneConfig(), frames_per_scene) for s in seeds]
    return _pool_map(_scene_task, tasks, workers, start_method, progress, 'scenes')


def generate_episodes(configs: Iterable[EpisodeConfig] | None = None, seeds: Iterable[int] = (),
                      base: EpisodeConfig | None = None, workers: int = 2,
                      start_method: str = 'spawn', progress: bool = False) -> list[Episode]:
    """Episodes for ``configs`` (or ``base`` with each of ``seeds``), in order."""
    base = base or EpisodeConfig()
    tasks = list(configs) if configs is not None else [replace(base, seed=int(s))
                                                       for s in seeds]
    return _pool_map(_episode_task, tasks, workers, start_method, progress, 'episodes')
