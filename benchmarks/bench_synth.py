"""
Data engine throughput with the simulator backends: per-stage ms, scenes/s and QA/s.

Runs ``spatialvlm_ros.synth.dataset.run_dataset`` (rendering, engine, PNG encoding, Parquet
shards) into a temporary folder with 1 and 2 worker processes, and
``spatialvlm_ros.synth.ray_runner.run_dataset_ray`` on a local Ray instance with 1 and 2 CPUs
(``--ray-cpus``; Ray start-up and shutdown included in its wall time), and prints the mean
per-stage times per image, the throughput and the load average (``os.getloadavg``) before
each measurement. ``source`` is scene sampling plus rendering (one reused
PyBullet client per shard); ``encode`` is PNG encoding. Wall time includes worker start-up
(spawn, with imports) and writing: use ``--scenes`` large enough to amortise it.

Usage: ``python benchmarks/bench_synth.py [--scenes 200] [--shard-size 25] [--ray-cpus 1 2]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from spatialvlm_ros.synth.dataset import DatasetConfig, run_dataset
from spatialvlm_ros.synth.pipeline import EngineConfig, STAGES


def main() -> None:
    """Print a table of per-stage times and throughput for each worker count."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--scenes', type=int, default=200, help='scenes per measurement')
    parser.add_argument('--shard-size', type=int, default=25, help='scenes per shard')
    parser.add_argument('--width', type=int, default=320, help='image width')
    parser.add_argument('--height', type=int, default=240, help='image height')
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2], help='worker counts')
    parser.add_argument('--ray-cpus', type=int, nargs='*', default=[1, 2],
                        help='CPU counts of the Ray runner (none: skip Ray)')
    parser.add_argument('--noise', default='none', help='noise preset')
    args = parser.parse_args()
    stages = [*STAGES, 'source', 'encode']
    runs = [('local', n) for n in args.workers] + [('ray', n) for n in args.ray_cpus]
    rows = []
    for runner, n in runs:
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as out:
            config = DatasetConfig(out=out, num_scenes=args.scenes, shard_size=args.shard_size,
                                   source_kwargs={'width': args.width, 'height': args.height},
                                   engine=EngineConfig(seed=0, noise=args.noise))
            start = time.perf_counter()
            if runner == 'ray':
                from spatialvlm_ros.synth.ray_runner import run_dataset_ray

                summary = run_dataset_ray(config, num_cpus=n, progress=False)
            else:
                summary = run_dataset(config, workers=n, progress=False)
            elapsed = time.perf_counter() - start
        rows.append((runner, n, summary, elapsed, load))
    print(f'{args.width}x{args.height}, {args.scenes} scenes, shard size {args.shard_size}, '
          f'noise {args.noise}, {os.cpu_count()} CPUs')
    print('| runner | workers / CPUs | load before | ' + ' | '.join(f'{s} ms' for s in stages)
          + ' | total ms/image | seconds | scenes/s | QA/s |')
    print('|---' * (len(stages) + 7) + '|')
    for runner, n, summary, elapsed, load in rows:
        ms = summary['stage_mean_ms']
        total = sum(ms.get(s, 0.0) for s in stages)
        cells = ' | '.join(f'{ms.get(s, 0.0):.1f}' for s in stages)
        print(f'| {runner} | {n} | {load:.2f} | {cells}'
              + f' | {total:.1f} | {elapsed:.2f} | {args.scenes / elapsed:.2f} | '
              f'{summary["total_qa"] / elapsed:.1f} |', flush=True)


if __name__ == '__main__':
    main()
