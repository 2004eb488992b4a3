"""
Render throughput of the simulated world: frames/s by resolution and worker processes.

Each task samples and builds one scene, then renders ``--frames-per-scene`` frames with the
arm at random poses, with full ground truth (boxes, grasp point, distances), as
``spatialvlm_ros.sim.parallel.render_scenes`` does. The time includes scene building and
worker start-up (spawn).

Usage: ``python benchmarks/bench_render.py [--scenes 8] [--frames-per-scene 10]``
"""

from __future__ import annotations

import argparse
import time

from spatialvlm_ros.sim.parallel import render_scenes
from spatialvlm_ros.sim.scene import SceneConfig


def main() -> None:
    """Print a table of frames/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--scenes', type=int, default=8, help='scenes per measurement')
    parser.add_argument('--frames-per-scene', type=int, default=10, help='frames per scene')
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2], help='worker counts')
    args = parser.parse_args()
    print('| resolution | workers | frames | seconds | frames/s |')
    print('|---|---|---|---|---|')
    for width, height in ((320, 240), (640, 480)):
        config = SceneConfig(width=width, height=height)
        for workers in args.workers:
            start = time.perf_counter()
            frames = render_scenes(range(args.scenes), config, args.frames_per_scene,
                                   workers=workers)
            elapsed = time.perf_counter() - start
            n = sum(len(f) for f in frames)
            print(f'| {width}x{height} | {workers} | {n} | {elapsed:.2f} | {n / elapsed:.1f} |',
                  flush=True)


if __name__ == '__main__':
    main()
