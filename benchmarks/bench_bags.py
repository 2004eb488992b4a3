"""
Bag write and read throughput (frames/s, MB/s) for sqlite3 and mcap at two image sizes.

Run: ``PYTHONPATH=. python benchmarks/bench_bags.py [--frames N]``. MB/s is the bag's size on
disk (1 MB = 1e6 bytes) divided by the wall time; reading includes deserialisation and image
conversion into an :class:`~spatialvlm_ros.bags.reader.EpisodeBag`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import tempfile
import time

import numpy as np

from spatialvlm_ros.bags.reader import read_episode
from spatialvlm_ros.bags.writer import write_episode
from spatialvlm_ros.core.datatypes import (
    CameraIntrinsics,
    Episode,
    Frame,
    ObjectTruth,
    OrientedBox,
)


def synthetic_episode(width: int, height: int, frames: int, seed: int = 0) -> Episode:
    rng = np.random.default_rng(seed)
    intr = CameraIntrinsics.from_fov(60.0, width, height)
    box = OrientedBox(np.array([0.0, 0.0, 1.0]), np.eye(3), np.full(3, 0.05))
    obj = ObjectTruth('mug', 'mug', {}, ('a mug',), box.center, box.center,
                      np.zeros((2, 3)), np.zeros((2, 3)), box, box)
    episode = Episode(seed, 10.0, 'mug', 'bench')
    for i in range(frames):
        depth = rng.uniform(0.3, 3.0, (height, width)).astype(np.float32)
        episode.frames.append(Frame(
            i, i * 100_000_000, rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            depth, rng.integers(-1, 1, (height, width)).astype(np.int32), intr, np.eye(4),
            [obj], np.zeros(3), np.zeros(3), {'mug': 1.0}, {'mug': 0.9}))
    return episode


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob('*') if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--frames', type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: imports, typestore, caches
        for storage in ('sqlite3', 'mcap'):
            read_episode(write_episode(synthetic_episode(8, 6, 1), Path(tmp) / storage,
                                       storage=storage))
    print('| size | storage | frames | MB on disk | write frames/s | write MB/s | read frames/s '
          '| read MB/s |')
    print('|---|---|---|---|---|---|---|---|')
    for width, height in ((320, 240), (640, 480)):
        episode = synthetic_episode(width, height, args.frames)
        for storage in ('sqlite3', 'mcap'):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                path = write_episode(episode, Path(tmp) / 'bag', storage=storage)
                t_write = time.perf_counter() - t0
                t0 = time.perf_counter()
                bag = read_episode(path)
                t_read = time.perf_counter() - t0
                assert len(bag.frames) == args.frames
                mb = _size(path) / 1e6
                print(f'| {width}x{height} | {storage} | {args.frames} | {mb:.1f} '
                      f'| {args.frames / t_write:.1f} | {mb / t_write:.1f} '
                      f'| {args.frames / t_read:.1f} | {mb / t_read:.1f} |')


if __name__ == '__main__':
    main()
